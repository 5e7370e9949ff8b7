"""TOML → Config with dotted overrides; every failure becomes one ConfigError line naming the field."""

import difflib
import json
import tomllib
from pathlib import Path

from pydantic import BaseModel, ValidationError

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


def _first_error(err: ValidationError, path, overrides: list[tuple[list[str], str]]) -> str:
    """``SOURCE: section.field: message``, SOURCE being the --set that touched that field (else the file), and
    for an unknown field the closest known name."""
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"]]
    where = ".".join(loc) or "config"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown field" + _did_you_mean(loc)
    source = next((item for keys, item in reversed(overrides) if _related(keys, loc)), None)
    if source is not None:
        return f"--set {source}: {where}: {msg}"
    return f"{path}: {where}: {msg}" if path is not None else f"{where}: {msg}"


def _related(keys: list[str], loc: list[str]) -> bool:
    """True when an override of ``keys`` set the field at ``loc``, a section holding it, or a field in it."""
    n = min(len(keys), len(loc))
    return n > 0 and keys[:n] == loc[:n]


def _did_you_mean(loc: list[str]) -> str:
    """`` (did you mean train.lr?)`` for an unknown ``train.lrr``; empty when nothing is close."""
    model = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        model = getattr(field, "annotation", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {'.'.join([*loc[:-1], close[0]])}?)" if close else ""


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
    applied = []
    for item in overrides:
        keys, value = parse_override(item)
        _apply(tree, keys, value)
        applied.append((keys, item.strip()))
    try:
        return Config.model_validate(tree)
    except RecursionError:
        raise ConfigError(f"{path or 'config'}: nested too deeply") from None
    except ValidationError as e:
        raise ConfigError(_first_error(e, path, applied)) from None
