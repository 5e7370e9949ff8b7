"""``p2pmodel config show|validate FILE``: the effective config after overrides, or just a verdict."""

import json
from pathlib import Path

import typer

from p2pmodel.cli.output import emit_json
from p2pmodel.config import load_config

app = typer.Typer(help="Inspect and validate config files.", no_args_is_help=True)


@app.command()
def show(
    file: Path = typer.Argument(..., help="TOML config file."),
    set_: list[str] = typer.Option([], "--set", help="Override, e.g. train.lr=3e-4 (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Print the effective configuration (defaults filled in, overrides applied)."""
    cfg = load_config(file, set_)
    if as_json:
        emit_json(cfg.model_dump())
    else:
        typer.echo(json.dumps(cfg.model_dump(), indent=2))


@app.command()
def validate(
    file: Path = typer.Argument(..., help="TOML config file."),
    set_: list[str] = typer.Option([], "--set", help="Override, e.g. train.lr=3e-4 (repeatable)."),
):
    """Exit 0 when FILE is a valid config, else 2 with one line naming the field."""
    load_config(file, set_)
    typer.echo(f"{file}: ok")
