"""Merging model states, as mergekit defines its methods (docs/merge_methods.md of arcee-ai/mergekit).

A fork folded back in, or two forks combined, is a new state that a swarm can review like any candidate
(``versions propose``). mergekit runs these methods over Hugging Face checkpoints through its YAML graph
executor; over one state dict of float32 tensors each is a few lines of torch, written here from its definitions:

- ``linear``: Σ wᵢ θᵢ / Σ wᵢ (weights normalized, mergekit's default);
- ``task-arithmetic``: θ_base + Σ wᵢ (θᵢ − θ_base) (task vectors added, not normalized, mergekit's default);
- ``ties``: per tensor, each task vector τᵢ = θᵢ − θ_base keeps its ``density`` fraction of largest magnitudes
  (TIES's "trim"); per coordinate the sign of Σ wᵢ τᵢ is elected; θ_base + Σ wᵢ τᵢ over the agreeing τᵢ, divided
  by the Σ wᵢ of those (mergekit's default normalization; a coordinate nobody agrees on keeps θ_base).

All arithmetic is float32 on CPU, in the order the models are given; the result's digest is what a proposal names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

METHODS = ("linear", "task-arithmetic", "ties")
State = Mapping[str, torch.Tensor]


def check_compatible(states: Sequence[State]) -> None:
    """ValueError unless every state has the same tensor names, shapes and dtype float32."""
    first = states[0]
    for i, s in enumerate(states[1:], start=1):
        if set(s) != set(first):
            missing = sorted(set(first) ^ set(s))[:3]
            raise ValueError(f"model {i + 1} has other tensors than model 1 (e.g. {', '.join(missing)})")
        for name, t in s.items():
            if t.shape != first[name].shape:
                shapes = f"{tuple(t.shape)} in model {i + 1}, {tuple(first[name].shape)} in model 1"
                raise ValueError(f"{name}: shape {shapes}")
    bad = [n for s in states for n, t in s.items() if t.dtype != torch.float32]
    if bad:
        raise ValueError(f"{bad[0]} is not float32")


def merge(
    models: Sequence[State],
    method: str,
    weights: Sequence[float] | None = None,
    base: State | None = None,
    density: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The merged state of ``models`` (``base`` for the task-vector methods); ValueError on bad arguments."""
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r} (one of {', '.join(METHODS)})")
    if not models:
        raise ValueError("nothing to merge")
    weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
    if len(weights) != len(models) or not all(math.isfinite(w) for w in weights):
        raise ValueError(f"{len(weights)} weights for {len(models)} models (finite numbers, one per model)")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if method == "linear":
        if base is not None:
            raise ValueError("linear takes no base model")
        if sum(weights) == 0:
            raise ValueError("linear: the weights sum to 0")
        check_compatible(models)
        return {n: _weighted(models, n, weights) / sum(weights) for n in sorted(models[0])}
    if base is None:
        raise ValueError(f"{method} needs a base model (--base)")
    check_compatible([base, *models])
    out = {}
    for name in sorted(base):
        tvs = torch.stack([m[name] - base[name] for m in models])
        w = torch.tensor(weights, dtype=torch.float32).reshape(-1, *([1] * base[name].dim()))
        if method == "task-arithmetic":
            out[name] = base[name] + (tvs * w).sum(0)
            continue
        if density < 1:
            tvs = torch.stack([_keep_largest(t, density) for t in tvs])
        weighted = tvs * w
        elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
        agree = (torch.sign(weighted) == elected).to(torch.float32)
        divisor = (w * agree).sum(0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
        out[name] = base[name] + (weighted * agree).sum(0) / divisor
    return out


def _weighted(models: Sequence[State], name: str, weights: Sequence[float]) -> torch.Tensor:
    total = torch.zeros_like(models[0][name])
    for m, w in zip(models, weights, strict=True):
        total += w * m[name]
    return total


def _keep_largest(t: torch.Tensor, density: float) -> torch.Tensor:
    """``t`` with all but its ⌊density·n⌋ largest magnitudes set to zero (TIES's trim; mergekit's "magnitude")."""
    k = int(density * t.numel())
    if k >= t.numel():
        return t
    out = torch.zeros_like(t).reshape(-1)
    if k > 0:
        idx = torch.topk(t.reshape(-1).abs(), k, sorted=False).indices
        out[idx] = t.reshape(-1)[idx]
    return out.reshape(t.shape)
