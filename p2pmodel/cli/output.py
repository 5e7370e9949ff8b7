"""Printing data: one JSON object per line with --json, a rich table otherwise."""

import json
import sys

from rich.console import Console
from rich.table import Table


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=True) + "\n")
    sys.stdout.flush()


def print_kv(title: str, data: dict) -> None:
    table = Table(title=title, show_header=False)
    for k, v in data.items():
        table.add_row(str(k), f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)
