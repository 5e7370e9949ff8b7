"""TOML → Config with dotted overrides; every failure becomes one ConfigError line naming the field."""

import json
import tomllib
from pathlib import Path

from pydantic import ValidationError

from p2pmodel.config.schema import Config
from p2pmodel.core.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], object]:
    """``train.lr=3e-4`` → (["train", "lr"], 0.0003). Values parse as JSON when they can, else as strings."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form section.field=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    except RecursionError:
        raise ConfigError(f"override {key.strip()!r}: value nested too deeply") from None
    return key.strip().split("."), value


def _apply(tree: dict, path: list[str], value: object) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "config"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{where}: {msg}"


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a TOML file (or the defaults when path is None) and apply ``section.field=value`` overrides."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        try:
            tree = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config {p}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: invalid TOML: {e}") from None
        except RecursionError:
            raise ConfigError(f"{p}: invalid TOML: nested too deeply") from None
    for item in overrides:
        _apply(tree, *parse_override(item))
    try:
        return Config.model_validate(tree)
    except RecursionError:
        raise ConfigError(f"{path or 'config'}: nested too deeply") from None
    except ValidationError as e:
        prefix = f"{path}: " if path is not None else ""
        raise ConfigError(prefix + _first_error(e)) from None
