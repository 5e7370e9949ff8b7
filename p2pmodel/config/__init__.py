"""The one typed config tree. schema.py: pydantic models (every field typed, bounded, documented);
load.py: TOML files + dotted CLI overrides (``--set train.lr=3e-4``) → Config, or a one-line ConfigError.
Imports no runtime code."""

from p2pmodel.config.load import load_config, parse_override
from p2pmodel.config.schema import Config

__all__ = ["Config", "load_config", "parse_override"]
