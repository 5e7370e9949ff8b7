"""Model builders. gpt.py: a small GPT in plain torch (the tiny default and the GPT-2-small recipe);
build.py: Config → nn.Module (built-in GPT, or a transformers causal LM from a local config file)."""

from p2pmodel.models.build import build_model
from p2pmodel.models.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig", "build_model"]
