"""DiLoCo outer optimizer: SGD with (Nesterov) momentum on the averaged delta, bit-reproducible across peers.

θ_global ← θ_global − lr · nesterov(mean Δ), Δ = θ_global − θ_local, with PyTorch's SGD convention
(dampening 0, first buffer = Δ):  buf ← m·buf + Δ;  update = Δ + m·buf (Nesterov) or buf;  θ ← θ − lr·update.

Why not ``torch.optim.SGD``: it uses ``add_(x, alpha=a)``, which ATen's vectorized CPU kernels compute with a
fused multiply-add while the scalar tail does not (measured: 28 % of elements of ``a.add(b, alpha=0.9)``
differ from ``a + b * 0.9`` on an AVX512 CPU), so bits can depend on the CPU's vector width and tensor length.
Here every step is a plain multiply or add of float32 CPU tensors, each correctly rounded by IEEE 754, applied
to the parameters in list order: every peer that starts from the same bits gets the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class OuterOptimizer:
    """Nesterov-momentum SGD over fp32 CPU tensors, deterministic op by op (see module docstring)."""

    def __init__(
        self,
        params_global: Sequence[torch.Tensor],
        lr: float = 0.7,
        momentum: float = 0.9,
        nesterov: bool = True,
    ):
        if not lr > 0 or not 0 <= momentum < 1:
            raise ValueError(f"need lr > 0 and 0 <= momentum < 1, got lr={lr}, momentum={momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        self.params = list(params_global)
        for p in self.params:
            if p.dtype != torch.float32 or p.device.type != "cpu":
                raise ValueError(f"outer parameters must be float32 on CPU, got {p.dtype} on {p.device}")
        self.lr, self.momentum, self.nesterov = float(lr), float(momentum), bool(nesterov)
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)
        self.steps = 0

    @torch.no_grad()
    def step(self, mean_delta: Sequence[torch.Tensor]) -> None:
        """Apply one outer step in place, given the averaged Δ (same shapes as the parameters)."""
        if len(mean_delta) != len(self.params):
            raise ValueError(f"expected {len(self.params)} deltas, got {len(mean_delta)}")
        for i, (p, delta) in enumerate(zip(self.params, mean_delta, strict=True)):
            if delta.shape != p.shape:
                raise ValueError(f"delta {i} has shape {tuple(delta.shape)}, parameter {tuple(p.shape)}")
            grad = delta.detach().to(device="cpu", dtype=torch.float32)
            update = grad
            if self.momentum:
                buf = self.momentum_buffers[i]
                if buf is None:
                    buf = self.momentum_buffers[i] = grad.clone()
                else:
                    buf.mul_(self.momentum).add_(grad)
                update = torch.mul(buf, self.momentum).add_(grad) if self.nesterov else buf
            p.sub_(torch.mul(update, self.lr))
        self.steps += 1

    @torch.no_grad()
    def peek(self, mean_delta: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The parameters one ``step(mean_delta)`` would give, as new tensors; parameters and momentum untouched
        (the overlapped round starts its inner phase there while the real mean is still in flight)."""
        if len(mean_delta) != len(self.params):
            raise ValueError(f"expected {len(self.params)} deltas, got {len(mean_delta)}")
        out = []
        for p, delta, buf in zip(self.params, mean_delta, self.momentum_buffers, strict=True):
            grad = delta.detach().to(device="cpu", dtype=torch.float32)
            update = grad
            if self.momentum:
                ahead = grad.clone() if buf is None else torch.mul(buf, self.momentum).add_(grad)
                update = torch.mul(ahead, self.momentum).add_(grad) if self.nesterov else ahead
            out.append(p - torch.mul(update, self.lr))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "steps": self.steps,
            "momentum_buffers": [None if b is None else b.clone() for b in self.momentum_buffers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        buffers = state["momentum_buffers"]
        if len(buffers) != len(self.params):
            raise ValueError(f"state has {len(buffers)} momentum buffers for {len(self.params)} parameters")
        for p, b in zip(self.params, buffers, strict=True):
            if b is not None and (b.shape != p.shape or b.dtype != torch.float32):
                raise ValueError("momentum buffer does not match its parameter (shape or dtype)")
        self.lr, self.momentum = float(state["lr"]), float(state["momentum"])
        self.nesterov, self.steps = bool(state["nesterov"]), int(state["steps"])
        self.momentum_buffers = [None if b is None else b.detach().to("cpu").clone() for b in buffers]
