"""What one averaging step tells the node: plain data, so a failed round is a value, not an exception."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RoundReport:
    """Built inside the averager process after a successful all-reduce, sent back to the host process."""

    group_id: bytes
    peer_ids: tuple[str, ...]  # members in reducer order (the leader's order, the same on every member)
    gathered: dict[str, Any]  # each member's `gather=` payload, by peer id string
    failed_reducers: tuple[str, ...]  # reducers whose whole span this peer zeroed
    banned_senders: tuple[str, ...]  # senders our own reducer stopped waiting for
    zeroed_fraction: float  # fraction of all values set to zero because their reducer failed


@dataclass(frozen=True)
class AveragingResult:
    """Outcome of ``DeterministicAverager.step``.

    ``succeeded``: the averaged tensors were REPLACED by the round's result (possibly with zeroed spans,
    see ``complete``). On failure the tensors are untouched and ``reason`` says why; the node then applies
    its own delta. ``complete``: succeeded and no reducer failed, i.e. every value is the group's average.
    """

    succeeded: bool
    reason: str = ""
    group_id: str = ""  # hex; the same on every member of the round
    peer_ids: tuple[str, ...] = ()
    gathered: dict[str, Any] = field(default_factory=dict)
    failed_reducers: tuple[str, ...] = ()
    banned_senders: tuple[str, ...] = ()
    zeroed_fraction: float = 0.0
    weight: float = 0.0
    elapsed_s: float = 0.0

    @property
    def group_size(self) -> int:
        return len(self.peer_ids)

    @property
    def complete(self) -> bool:
        return self.succeeded and not self.failed_reducers

    @classmethod
    def failure(cls, reason: str, *, weight: float, elapsed_s: float) -> AveragingResult:
        return cls(succeeded=False, reason=reason, weight=weight, elapsed_s=elapsed_s)

    @classmethod
    def from_report(cls, report: RoundReport, *, weight: float, elapsed_s: float) -> AveragingResult:
        return cls(
            succeeded=True,
            group_id=report.group_id.hex(),
            peer_ids=report.peer_ids,
            gathered=report.gathered,
            failed_reducers=report.failed_reducers,
            banned_senders=report.banned_senders,
            zeroed_fraction=report.zeroed_fraction,
            weight=weight,
            elapsed_s=elapsed_s,
        )
