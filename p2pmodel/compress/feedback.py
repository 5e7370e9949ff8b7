"""Error feedback: keep what quantization dropped locally and add it back next round, so the bias vanishes."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch


class ErrorFeedback:
    """Per-tensor fp32 residuals keyed by name or index (EF-SGD style).

    Use: `c = ef.compensate(key, delta)`; send `t = codec.extract(codec.compress(c))`'s bytes;
    `ef.update(key, c, t)`. The residual of a key is `compensated - transmitted` of its last round.
    """

    def __init__(self) -> None:
        self._residuals: dict[Hashable, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._residuals)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._residuals

    def residual(self, key: Hashable) -> torch.Tensor | None:
        """The stored residual of `key` (None before its first update)."""
        return self._residuals.get(key)

    def compensate(self, key: Hashable, tensor: torch.Tensor) -> torch.Tensor:
        """Return `tensor + residual[key]` as a new fp32 CPU tensor (a plain fp32 copy before any update)."""
        out = tensor.detach().to(device="cpu", dtype=torch.float32, copy=True)
        residual = self._residuals.get(key)
        if residual is not None:
            if residual.shape != out.shape:
                raise ValueError(
                    f"error feedback {key!r}: shape {tuple(out.shape)} != residual {tuple(residual.shape)}"
                )
            out.add_(residual)
        return out

    def update(self, key: Hashable, compensated: torch.Tensor, transmitted: torch.Tensor) -> None:
        """Store `compensated - transmitted` (what this round failed to send) as the residual of `key`."""
        if compensated.shape != transmitted.shape:
            raise ValueError(
                f"error feedback {key!r}: compensated {tuple(compensated.shape)} != "
                f"transmitted {tuple(transmitted.shape)}"
            )
        c = compensated.detach().to(device="cpu", dtype=torch.float32)
        self._residuals[key] = c - transmitted.detach().to(device="cpu", dtype=torch.float32)

    def reset(self, key: Hashable | None = None) -> None:
        """Drop the residual of `key`, or all of them (e.g. after a rollback or a re-sync)."""
        if key is None:
            self._residuals.clear()
        else:
            self._residuals.pop(key, None)

    def state_dict(self) -> dict[str, dict[Hashable, torch.Tensor]]:
        return {"residuals": {k: v.clone() for k, v in self._residuals.items()}}

    def load_state_dict(self, state: Mapping[str, Mapping[Hashable, torch.Tensor]]) -> None:
        residuals = state.get("residuals") if isinstance(state, Mapping) else None
        if not isinstance(residuals, Mapping):
            raise ValueError("error feedback state must be a mapping with a 'residuals' mapping")
        loaded = {}
        for k, v in residuals.items():
            if not isinstance(v, torch.Tensor) or not v.is_floating_point():
                raise ValueError(f"error feedback residual {k!r} must be a float tensor")
            loaded[k] = v.detach().to(device="cpu", dtype=torch.float32, copy=True)
        self._residuals = loaded
