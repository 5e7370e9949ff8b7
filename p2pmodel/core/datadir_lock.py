"""One peer per --data-dir: two peers writing the same checkpoints and identity would corrupt each other's rounds.

An exclusive ``flock`` on ``<data-dir>/peer.lock`` is held for the life of the process (the kernel releases it when
the process ends, however it ends); the file holds the owner's pid so the second peer can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from p2pmodel.core.errors import UsageError

LOCK_NAME = "peer.lock"
_held: dict[Path, int] = {}  # path → fd, open until the process ends
_forked_hook = False


def lock_data_dir(data_dir: Path, what: str = "--data-dir") -> Path:
    """Take the data dir's lock or raise UsageError naming the pid that holds it; idempotent in one process."""
    path = Path(data_dir).resolve() / LOCK_NAME
    if path in _held:
        return path
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise UsageError(f"cannot use {what} {data_dir}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(f"{what} {data_dir} is in use by another peer (pid {owner})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[path] = fd
    _close_in_forked_children()
    return path


def _close_in_forked_children() -> None:
    """A forked child (hivemind's DHT, averager) must not keep the lock alive after this process ended."""
    global _forked_hook
    if not _forked_hook:
        os.register_at_fork(after_in_child=_drop_all)
        _forked_hook = True


def _drop_all() -> None:
    for fd in _held.values():
        try:
            os.close(fd)  # closes the child's copy only: the lock stays with the parent's descriptor
        except OSError:
            pass
    _held.clear()
