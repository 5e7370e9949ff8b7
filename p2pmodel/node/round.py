"""One outer round, in the order of DESIGN.md: inner phase → delta → exchange → outer step → commit.

With ``sync.overlap`` the exchange of round r runs in the background while the inner phase of round r + 1 runs
(``run_overlapped_round``), and round r's mean is applied one inner phase late: the eager / one-step-delayed
outer update of "Eager Updates For Overlapped Communication and Computation in DiLoCo" (Kale, Douillard,
Donchev, 2025), arranged so that every peer still commits the same bits:

- θ_global follows exactly the blocking recurrence, θ_r = OuterOpt(θ_{r-1}, mean Δ_r): the same mean, the same
  outer step, the same commit step, state offers and versions; only *when* it is computed moves.
- The inner phase of round r + 1 cannot start from θ_r (its mean is in flight). It starts from the outer step
  peeked with this peer's own Δ_r as a stand-in for the mean, and as soon as the exchange is back (between two
  inner steps) the local weights are shifted by θ_r − start: the rest of the phase trains on from the real
  θ_r, as if it had started there, and Δ_{r+1} = θ_r − θ_local. This is the correction term: a stand-in's
  error lives only for the steps trained before the mean landed, and never reaches θ_global.
  Measured without a network (benchmarks/diloco_sim.py, 4 peers × 300 steps of configs/tiny.toml, H = 50, int4,
  seed 0; val loss after the same 6 commits): blocking 2.152; mean landing mid-phase (25 steps) and shifted:
  own Δ as stand-in 2.216, the paper's mixture (own Δ / M + the last mean for the others) 2.272; never
  shifted (the stand-in kept for the whole phase): own Δ 2.254, mixture 2.620; own Δ × 0.5 2.231, × 1.5 2.344,
  no stand-in (start from θ_{r-1}) 2.338. So the stand-in is own Δ.
  What the delay costs, at equal steps: +3.0 % val loss after 6 rounds (2.216 vs 2.152) and +8.1 % after 20
  (1000 steps: 1.626 vs 1.504; the overlapped run's loss after 20 rounds is where blocking was after ~17), with
  the mean landing half-way (land-after 25); landing after 5 steps, +0.7 % after 6 rounds. At equal wall time
  it wins where the link is slow: when a blocking exchange costs half the inner phase, 20 overlapped rounds take
  the time of ~13 blocking ones (blocking after 13: 1.746). The paper reports +0.4-0.75 % at 1B parameters.
  So overlap is a setting for slow links, off by default.
- The outer step of round r is taken as soon as its mean lands (between two inner steps), and the vote for θ_r
  goes out then (``Exchange.vote``), not after the phase: the others' commit steps find it when their phase ends.
  Measured before (benchmarks/links.py, 4 peers at 0.4 core and 1 Mbit/s): the peer that finished its phase
  first waited out the round's close grace for the others' votes, ~0.8 s of a 14 s round.

A peer that has no delta in flight for the round it commits (it just started, caught up or re-synced) trains
that round's inner phase first, without overlap; a delta in flight when the peer stops is dropped (one inner
phase of this peer's work, as a blocking peer loses the phase it is in).

What a slower peer needs to stay in the groups (benchmarks/links.py --slow 3=2: one peer at half CPU, 1 Mbit/s):
- "ready" for round r + 1 is said when the phase ends (``Exchange.phase_done``), before round r's commit step:
  the others' commit step waits for the slow peer's digest, and the slow peer's phase closes on a "ready";
  said after the commit step, a fast peer waited out its whole commit deadline (17 s) for the slow one.
- Round r + 1's exchange starts as soon as round r's commit step knows its winner: before a re-sync to it (a
  round object's replay takes ~6 s at 1 Mbit/s) and before r's evaluation and checkpoint (~2.5 s at 0.2 core);
  its group's "base" is the winner's digest. Started after them, the slow peer came seconds after the 3 s
  matchmaking window every round, averaged alone, and re-synced every round (a chase)."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from p2pmodel.eval import EvalReport
from p2pmodel.node.commit import Agreement
from p2pmodel.node.exchange import Exchange, ExchangeOutcome
from p2pmodel.train import InnerStats

SIT_OUT_POLL_S = 0.2  # a peer sitting a round out looks this often whether the others closed it


@dataclass
class RoundResult:
    round: int
    stats: InnerStats
    outcome: ExchangeOutcome
    report: EvalReport | None  # None: a round between two evaluations (eval.every_rounds)
    agreement: Agreement  # how the commit step ended: who decided it, who was waited for in vain
    seconds: float  # wall time from the first inner step to the commit
    wait_s: float = 0.0  # how long the round waited for its exchange (blocking: all of it; overlap: what was left)
    eval_s: float = 0.0  # its evaluation (0 between two: eval.every_rounds)


@dataclass
class InFlight:
    """A trained delta not yet averaged (overlap): the round it belongs to, Δ, the samples behind it and its
    exchange once started."""

    round: int
    delta: list[torch.Tensor]
    samples: int
    job: "_Background | None" = None

    def start(self, exchange: Exchange) -> "_Background":
        if self.job is None:
            self.job = _Background(lambda: exchange.average(self.round, self.delta, weight=float(self.samples)))
        return self.job


def _inner_phase(peer, exchange: Exchange, round_: int, interrupted, on_step, between=None) -> InnerStats:
    """H inner steps (fewer once another peer finished the round); ``between()`` runs between steps. A peer
    sitting the round out (node/sit_out.py) trains none: the others' state replaces its work at the commit step,
    so it waits for them to close the round (and trains after all if they are gone)."""
    while exchange.sits_out(round_) and not interrupted():
        if between is not None:
            between()
        if exchange.round_closed(round_):
            return InnerStats(steps=0, samples=0, tokens=0, loss=float("nan"), seconds=0.0)
        time.sleep(SIT_OUT_POLL_S)
    first = peer.trainer.step
    aside = [0.0]  # seconds spent in ``between``: not inner compute

    def stop_inner() -> bool:  # a peer finished its H steps (+ a short grace): the round closes, nobody idles
        if between is not None:
            t0 = time.perf_counter()
            between()
            aside[0] += time.perf_counter() - t0
        return interrupted() or (peer.trainer.step > first and exchange.round_closed(round_))

    stats = peer.trainer.run(peer.stream, peer.cfg.train.inner_steps, stop_inner, on_step, round_=round_)
    return replace(stats, seconds=max(stats.seconds - aside[0], 0.0))


@dataclass
class Stepped:
    """Round r's outer step, taken: the state this peer votes for."""

    parent: str  # θ_{r-1}'s digest
    ours: str  # θ_r's digest
    patch: bytes | None  # the round's object, served with our vote


def _outer_step(peer, round_: int, outcome: ExchangeOutcome) -> Stepped:
    """θ_global ← OuterOpt(θ_global, mean Δ), or the state a quorum adopted, or nothing when the safety net refused
    the mean (aggregate/guard.py); the local weights are left alone (an overlapped phase may be training on them)."""
    parent = peer.digest
    adopted = peer.take_adoption(round_)  # a proposed state the quorum accepted (node/proposals.py)
    if adopted is not None:  # every peer, this round: the round's mean is dropped, the momentum starts afresh
        peer.adopt(adopted, [None] * len(peer.names), local=False)
    elif outcome.applied:
        peer.outer.step(outcome.mean_delta)  # θ_global ← OuterOpt(θ_global, mean Δ)
    peer.digest = ours = peer.global_digest()
    # the round as an object (versioning/round_object.py), served with our vote: a peer of the round whose
    # all-reduce was partial replays it (~0.14 of the state at int4) instead of downloading the state
    patch = None
    if (
        (outcome.averaged or outcome.replayable)
        and outcome.applied
        and adopted is None
        and peer.cfg.versioning.keep_rounds
    ):
        patch = peer.round_object(round_, parent, outcome.mean_delta, outcome.contributions)
    return Stepped(parent, ours, patch)


def _agree(peer, exchange: Exchange, round_: int, outcome: ExchangeOutcome, stepped: Stepped, samples: int, then=None):
    """The commit step on the stepped state (``then``: see Exchange.agree). Returns the round committed
    (``round_``, or the swarm's later round when the commit step had to catch up to it), the agreement and what
    to keep for patches once checkpointed (``keep_round``'s arguments, or None)."""
    peer.load_global_into_local()
    agreement = exchange.agree(round_, outcome, stepped.patch, then)  # the digest most peers hold wins; else re-sync
    ours, patch = stepped.ours, stepped.patch
    if peer.digest != ours:  # adopted another state: which updates it used is the others' record, not ours
        outcome.contributions = {}
    peer.samples_total += samples
    peer.counters["bytes_sent"] += outcome.bytes_sent
    peer.counters["bytes_received"] += outcome.bytes_received
    committed = max(round_, peer.round)  # peer.round moves only on a catch-up
    # our object is kept for patches unless the commit step replaced our state (a re-sync keeps the winner's)
    kept = None
    if patch is not None and peer.digest == ours and committed == round_:
        kept = (round_, patch, stepped.parent, ours)
    return committed, agreement, kept


def _evaluate_and_checkpoint(peer, committed: int, outcome: ExchangeOutcome, kept):
    """Evaluation (every eval.every_rounds and every release candidate) and the atomic checkpoint. Returns the
    report (None between evaluations) and the evaluation's seconds."""
    candidate = peer.is_release_round(committed)  # evaluated always, and on the named sets too
    report, started = None, time.perf_counter()
    if candidate or committed % peer.cfg.eval.every_rounds == 0:
        report = peer.evaluate(with_sets=candidate)
    eval_s = time.perf_counter() - started
    peer.commit(committed, members=outcome.members, evaluated=report is not None)  # a restart resumes here
    if kept is not None:
        peer.keep_round(*kept)
    return report, eval_s


def run_round(
    peer,
    exchange: Exchange,
    round_: int,
    interrupted: Callable[[], bool],
    on_step: Callable[[int, float], None] | None = None,
) -> RoundResult | None:
    """Run round ``round_`` to its commit, or return None (nothing committed) if interrupted before."""
    if peer.cfg.sync.overlap:
        return run_overlapped_round(peer, exchange, round_, interrupted, on_step)
    started = time.perf_counter()
    stats = _inner_phase(peer, exchange, round_, interrupted, on_step)
    if interrupted():
        return None
    delta = peer.pseudo_gradient()  # Δ = θ_global − θ_local
    waited = time.perf_counter()
    outcome = exchange.average(round_, delta, weight=float(stats.samples))  # weighted mean Δ of the group
    wait_s = time.perf_counter() - waited
    committed, agreement, kept = _agree(
        peer, exchange, round_, outcome, _outer_step(peer, round_, outcome), stats.samples
    )
    report, eval_s = _evaluate_and_checkpoint(peer, committed, outcome, kept)
    round_ = committed
    exchange.after_commit(round_, stats.samples / max(stats.seconds, 1e-9), outcome)  # serve it
    return RoundResult(round_, stats, outcome, report, agreement, time.perf_counter() - started, wait_s, eval_s)


class _Background:
    """The exchange of one round on a daemon thread (a stop never waits for it: the averager has its deadlines,
    and its process ends with the peer)."""

    def __init__(self, job: Callable[[], ExchangeOutcome]):
        self._result: ExchangeOutcome | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(job,), name="p2pmodel-exchange", daemon=True)
        self._thread.start()

    def _run(self, job) -> None:
        try:
            self._result = job()
        except BaseException as e:  # re-raised in the round thread
            self._error = e
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, interrupted: Callable[[], bool]) -> ExchangeOutcome | None:
        while not self._done.wait(0.2):
            if interrupted():
                return None
        if self._error is not None:
            raise self._error
        return self._result


def run_overlapped_round(
    peer,
    exchange: Exchange,
    round_: int,
    interrupted: Callable[[], bool],
    on_step: Callable[[int, float], None] | None = None,
) -> RoundResult | None:
    """Commit round ``round_`` with its exchange hidden behind round ``round_ + 1``'s inner phase (module doc)."""
    started = time.perf_counter()
    flight = peer.in_flight if peer.in_flight is not None and peer.in_flight.round == round_ else None
    phases: list[InnerStats] = []  # the inner phases run in this call
    if flight is None:  # nothing trained for this round yet: its inner phase first, from θ_global
        peer.load_global_into_local()
        phases.append(_inner_phase(peer, exchange, round_, interrupted, on_step))
        if interrupted():
            return None
        flight = InFlight(round_, peer.pseudo_gradient(), phases[0].samples)
    peer.in_flight = None
    exchange_job = flight.start(exchange)  # started already at the end of the call before, unless just trained
    start = peer.outer.peek(flight.delta)  # the stand-in for the mean in flight: this peer's own Δ
    peer.set_local(start)
    landed: list[list[torch.Tensor]] = []  # θ_round_ (the real one), once the exchange is back
    stepped: list[Stepped] = []

    def land(outcome: ExchangeOutcome) -> None:
        # θ_round_ is known: take the outer step and vote for it now, mid-phase (the others' commit steps find our
        # vote there when their phase ends, instead of waiting out the round's close grace for it), then move the
        # local trajectory from the stand-in onto it
        stepped.append(_outer_step(peer, round_, outcome))
        exchange.vote(round_, stepped[0].patch)
        real = [g.clone() for g in peer.global_params]
        peer.shift_local([r - s for r, s in zip(real, start, strict=True)])
        landed.append(real)

    def between_steps() -> None:
        if not landed and exchange_job.done():
            land(exchange_job.result(interrupted))

    def stopped() -> None:  # before the commit: what this peer holds (and reports) is its last committed state
        if stepped:  # the stepped state goes with the process; a restart resumes from the checkpoint
            peer.digest = stepped[0].parent

    ahead = _inner_phase(peer, exchange, round_ + 1, interrupted, on_step, between_steps)
    if interrupted():
        return stopped()
    # say so now, not once the commit step below is over: the others' commit step waits for our digest, and a
    # slower peer's phase of round_ + 1 closes on our "ready" (else a fast peer waits out its whole commit
    # deadline for a slow one's digest, while the slow one trains on for lack of a "ready")
    exchange.phase_done(round_ + 1)
    waited = time.perf_counter()
    outcome = exchange_job.result(interrupted)
    if outcome is None:
        return stopped()
    wait_s = time.perf_counter() - waited
    if not landed:  # it came back after the phase: the same shift, at the end
        land(outcome)
    next_delta = peer.pseudo_gradient(base=landed[0])  # Δ_{r+1}: from θ_r, where the trajectory now starts
    # round_ + 1's exchange starts as soon as the commit step knows its winner (before a re-sync to it, if ours
    # lost) and before this round's evaluation and checkpoint: a peer that re-syncs or evaluates slowly still
    # reaches the next matchmaking window (its group's "base" is the state the commit step settled on)
    following = InFlight(round_ + 1, next_delta, ahead.samples)
    committed, agreement, kept = _agree(
        peer, exchange, round_, outcome, stepped[0], flight.samples, then=lambda: following.start(exchange)
    )
    if committed == round_:
        peer.in_flight = following
        following.start(exchange)  # if the commit step did not already
    elif following.job is not None:  # caught up to a later round: that exchange belongs to no round we train, and
        following.job.result(interrupted)  # the averager runs one at a time (its own deadlines bound this)
    report, eval_s = _evaluate_and_checkpoint(peer, committed, outcome, kept)
    round_ = committed
    stats = _merged([*phases, ahead])
    exchange.after_commit(round_, stats.samples / max(stats.seconds, 1e-9), outcome)
    return RoundResult(round_, stats, outcome, report, agreement, time.perf_counter() - started, wait_s, eval_s)


def _merged(parts: list[InnerStats]) -> InnerStats:
    """The inner phases run during one call, as one (steps, samples and time add up; loss weighted by steps)."""
    steps = sum(p.steps for p in parts)
    loss = sum(p.loss * p.steps for p in parts) / steps if steps else parts[-1].loss
    return InnerStats(
        steps=steps,
        samples=sum(p.samples for p in parts),
        tokens=sum(p.tokens for p in parts),
        loss=loss,
        seconds=sum(p.seconds for p in parts),
    )
