"""The local inner loop only (no network). inner.py: AdamW with warmup + cosine, clipping, gradient
accumulation and bf16 autocast on CUDA; returns InnerStats; device.py: pick the device."""

from p2pmodel.train.device import pick_device
from p2pmodel.train.inner import InnerStats, InnerTrainer

__all__ = ["InnerStats", "InnerTrainer", "pick_device"]
