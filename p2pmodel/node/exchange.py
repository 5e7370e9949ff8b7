"""How the deltas of a round are combined: the ``Exchange`` protocol ``run_round`` takes. SoloExchange: a peer
alone applies its own delta; the swarm's exchange is SwarmLink (swarm_link.py). Both return an ExchangeOutcome
the round can apply without caring."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from p2pmodel.node.commit import Agreement


@dataclass
class ExchangeOutcome:
    mean_delta: list[torch.Tensor]
    group_size: int = 1
    members: list[str] = field(default_factory=list)
    averaged: bool = False  # True when the delta is the group's weighted mean
    applied: bool = True  # False: the safety net refused the mean (aggregate/guard.py); the state stays as it was
    reason: str = ""  # why the peer ended alone, when it did
    sat_out: bool = False  # it did not try: its link could not keep up lately (node/sit_out.py)
    failed_reducers: int = 0  # the group's reducers whose parts never reached this peer (zeroed)
    replayable: bool = False  # alone in a swarm: the round still gets an object a peer that lost to it replays
    bytes_sent: int = 0
    bytes_received: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # broadcast: peers whose update was not used, and why
    # whose updates the committed state used, with the samples each claimed; {} when not known (the commit step
    # adopted another peer's state, or there is no swarm)
    contributions: dict[str, int] = field(default_factory=dict)


class Exchange(Protocol):
    def round_closed(self, round_: int) -> bool:
        """Stop the inner phase of ``round_`` now (another peer finished it)?"""

    def sits_out(self, round_: int) -> bool:
        """This peer leaves ``round_`` to the others (node/sit_out.py): it trains no inner phase for it."""

    def phase_done(self, round_: int) -> None:
        """This peer's inner phase of ``round_`` is over (the round closes for the others). ``average`` says it too;
        the overlapped schedule says it first, before the commit step of the round before, which the others
        wait for: so a slower peer's phase closes without waiting for that commit step."""

    def vote(self, round_: int, patch: bytes | None) -> None:
        """Announce the state this peer stepped to for ``round_`` now, before ``agree`` (which then only waits): the
        overlapped schedule knows it mid-phase, and the others' commit steps need not wait for our phase to end."""

    def average(self, round_: int, delta: list[torch.Tensor], weight: float) -> ExchangeOutcome:
        """Combine this peer's ``delta`` (weighted by its samples) with the round's other peers'."""

    def agree(
        self, round_: int, outcome: ExchangeOutcome, patch: bytes | None = None, then: Callable[[], None] | None = None
    ) -> Agreement:
        """Commit step: make this peer hold the state most of the round's participants hold. ``patch``: the
        round's object (versioning/round_object.py), offered with our vote for the peers that must re-sync;
        ``then``: called once the winner is known, before a re-sync (an implementation may skip it: the caller
        does what it asked after the step)."""

    def after_commit(self, round_: int, samples_per_s: float, outcome: ExchangeOutcome) -> None:
        """The round is durable here: serve it, announce it, record who contributed."""


class SoloExchange:
    """No swarm: the outer step uses this peer's own pseudo-gradient; nothing to agree on or to offer."""

    def round_closed(self, round_: int) -> bool:
        return False

    def sits_out(self, round_: int) -> bool:
        return False

    def vote(self, round_: int, patch: bytes | None) -> None:
        pass

    def phase_done(self, round_: int) -> None:
        pass

    def agree(self, round_: int, outcome: ExchangeOutcome, patch: bytes | None = None, then=None) -> Agreement:
        return Agreement(winner="")

    def after_commit(self, round_: int, samples_per_s: float, outcome: ExchangeOutcome) -> None:
        pass

    def average(self, round_: int, delta: list[torch.Tensor], weight: float) -> ExchangeOutcome:
        return ExchangeOutcome(mean_delta=delta, reason="solo")

    def close(self) -> None:
        pass
