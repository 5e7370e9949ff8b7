"""One outer round, in the order of DESIGN.md: inner phase → delta → exchange → outer step → commit."""

import time
from collections.abc import Callable
from dataclasses import dataclass

from p2pmodel.eval import EvalReport
from p2pmodel.node.commit import Agreement
from p2pmodel.node.exchange import Exchange, ExchangeOutcome
from p2pmodel.train import InnerStats


@dataclass
class RoundResult:
    round: int
    stats: InnerStats
    outcome: ExchangeOutcome
    report: EvalReport
    agreement: Agreement  # how the commit step ended: who decided it, who was waited for in vain
    seconds: float  # wall time from the first inner step to the commit


def run_round(
    peer,
    exchange: Exchange,
    round_: int,
    interrupted: Callable[[], bool],
    on_step: Callable[[int, float], None] | None = None,
) -> RoundResult | None:
    """Run round ``round_`` to its commit, or return None (nothing committed) if interrupted before."""
    first, started = peer.trainer.step, time.perf_counter()

    def stop_inner() -> bool:  # a peer finished its H steps (+ a short grace): the round closes, nobody idles
        return interrupted() or (peer.trainer.step > first and exchange.round_closed(round_))

    stats = peer.trainer.run(peer.stream, peer.cfg.train.inner_steps, stop_inner, on_step, round_=round_)  # inner phase
    if interrupted():
        return None
    delta = peer.pseudo_gradient()  # Δ = θ_global − θ_local
    outcome = exchange.average(round_, delta, weight=float(stats.samples))  # weighted mean Δ of the group
    peer.outer.step(outcome.mean_delta)  # θ_global ← OuterOpt(θ_global, mean Δ)
    peer.load_global_into_local()
    peer.digest = peer.global_digest()
    agreement = exchange.agree(round_, outcome)  # commit step: the digest most peers hold wins; else re-sync
    peer.samples_total += stats.samples
    peer.counters["bytes_sent"] += outcome.bytes_sent
    peer.counters["bytes_received"] += outcome.bytes_received
    report = peer.evaluate()
    peer.commit(round_, members=outcome.members)  # digest + atomic checkpoint; a restart resumes here
    exchange.after_commit(
        round_, stats.samples / max(stats.seconds, 1e-9), outcome.members
    )  # offer the state to others
    seconds = time.perf_counter() - started
    return RoundResult(round_, stats, outcome, report, agreement, seconds)
