"""Config → model. The genesis seed fixes the initial weights, so every peer of a run starts identical."""

import torch

from p2pmodel.core.errors import ConfigError
from p2pmodel.models.gpt import GPT, GPTConfig


def build_model(model_cfg, seed: int) -> torch.nn.Module:
    """Build the configured model on the CPU with weights that depend only on (config, seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model_cfg.kind == "gpt":
            return GPT(
                GPTConfig(
                    vocab_size=model_cfg.vocab_size,
                    seq_len=model_cfg.seq_len,
                    n_layer=model_cfg.n_layer,
                    n_head=model_cfg.n_head,
                    n_embd=model_cfg.n_embd,
                    dropout=model_cfg.dropout,
                )
            )
        if model_cfg.kind == "hf":
            from p2pmodel.models.hf import build_hf_model

            return build_hf_model(model_cfg)
    raise ConfigError(f"model.kind: unknown kind {model_cfg.kind!r}")
