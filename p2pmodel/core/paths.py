"""Directories the user names on the command line, checked before any real work starts."""

import os
from pathlib import Path

from p2pmodel.core.errors import UsageError


def writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and check it can be written; UsageError naming ``what`` (e.g. "--data-dir")."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot use {what} {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"cannot use {what} {path}: not writable")
    return path
