"""Printing data: one JSON object per line with --json, a rich table otherwise."""

import json
import math
import sys

from rich.console import Console
from rich.table import Table


def emit_json(obj) -> None:
    """One line of strict JSON: NaN and infinities (not JSON) are written as null."""
    sys.stdout.write(json.dumps(_finite(obj), default=str, sort_keys=True, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def print_kv(title: str, data: dict) -> None:
    table = Table(title=title, show_header=False)
    for k, v in data.items():
        table.add_row(str(k), f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)
