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
    """Print the effective configuration as TOML (defaults filled in, overrides applied); --json for JSON."""
    cfg = load_config(file, set_)
    if as_json:
        emit_json(cfg.model_dump())
    else:
        typer.echo(to_toml(cfg.model_dump()), nl=False)


def to_toml(tree: dict) -> str:
    """The effective config as TOML, so ``config show FILE --set ... > new.toml`` is a config file; unset
    (None) fields become comments, TOML having no null."""
    top = [_line(k, v) for k, v in tree.items() if not isinstance(v, dict)]
    sections = [
        "\n".join([f"[{name}]", *(_line(k, v) for k, v in body.items())])
        for name, body in tree.items()
        if isinstance(body, dict)
    ]
    return "\n\n".join(["\n".join(top), *sections]) + "\n"


def _line(key: str, value) -> str:
    return f"# {key} = (unset)" if value is None else f"{key} = {_value(value)}"


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(f"no TOML form for {type(v).__name__}")


@app.command()
def validate(
    file: Path = typer.Argument(..., help="TOML config file."),
    set_: list[str] = typer.Option([], "--set", help="Override, e.g. train.lr=3e-4 (repeatable)."),
):
    """Exit 0 when FILE is a valid config, else 2 with one line naming the field."""
    load_config(file, set_)
    typer.echo(f"{file}: ok")
