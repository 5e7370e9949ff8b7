"""Printing data: one JSON object per line with --json, a rich table otherwise."""

import json
import math
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def emit_json(obj) -> None:
    """One line of strict JSON: NaN and infinities (not JSON) are written as null."""
    sys.stdout.write(json.dumps(_finite(obj), default=str, sort_keys=True, allow_nan=False) + "\n")
    sys.stdout.flush()


def default_is(text: str) -> str:
    """``[default: TEXT]`` for an option's help; escaped, or rich reads the brackets as markup and drops them."""
    return escape(f"[default: {text}]")


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def console(stderr: bool = False) -> Console:
    """A rich console that, when its stream is not a terminal (piped, redirected), never wraps or cuts a line:
    ids and multiaddrs stay whole on one line for copying and grepping. On a terminal, the terminal's width."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=1 << 14, soft_wrap=True)


def print_table(table: Table) -> None:
    """Print a table on stdout (see console(): piped, rows are never wrapped or cut)."""
    console().print(table)


def print_kv(title: str, data: dict) -> None:
    table = Table(title=title, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for k, v in data.items():
        table.add_row(str(k), f"{v:.4f}" if isinstance(v, float) else str(v))
    print_table(table)
