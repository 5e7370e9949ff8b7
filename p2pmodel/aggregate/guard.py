"""The all-reduce safety net: a round whose averaged delta is non-finite, or whose norm is far beyond the recent
rounds', is not applied. In all-reduce mode one member writes the values of the slice it reduces for everyone
(docs/security.md); the robust aggregators of broadcast mode do not apply there, but this check does, and since
every member receives the same bytes every member with the same recent history decides the same. A peer with
another history (it joined or re-synced lately) may decide otherwise; the commit step's majority then wins and it
re-syncs, as for any other disagreement.

The rule is a protocol constant, not a setting, so every peer of a run applies the same one: refuse a non-finite
delta; with at least ``MIN_HISTORY`` applied rounds behind, refuse a norm above ``RATIO`` × their median (over the
last ``WINDOW``). Norms are computed with ``robust.norm``: the same bits on any CPU."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence

import torch

from p2pmodel.aggregate.robust import norm

RATIO = 10.0  # x100 scaling is refused, the slow drift of a training run is not (warmup grows norms ~2-3x)
WINDOW = 8
MIN_HISTORY = 3


class NormGuard:
    def __init__(self, ratio: float = RATIO, window: int = WINDOW, min_history: int = MIN_HISTORY):
        self.ratio, self.min_history = ratio, min_history
        self.recent: deque[float] = deque(maxlen=window)

    def check(self, delta: Sequence[torch.Tensor]) -> str:
        """ "" if the averaged ``delta`` may be applied (its norm is then remembered), else why not."""
        if not all(bool(torch.isfinite(t).all()) for t in delta):
            return "the averaged delta is not finite"
        n = norm(delta)
        if len(self.recent) >= self.min_history:
            bound = self.ratio * statistics.median(self.recent)
            if n > bound:
                return f"the averaged delta's norm {n:.4g} is above {self.ratio:g} x the recent median ({bound:.4g})"
        self.recent.append(n)
        return ""
