"""Device choice: CUDA when present (a home GPU), else the CPU; ``device = "cuda"`` without one is an error."""

import torch

from p2pmodel.core.errors import ConfigError


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
