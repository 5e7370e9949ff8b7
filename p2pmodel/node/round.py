"""One outer round, in the order of DESIGN.md: inner phase → delta → exchange → outer step → commit."""

from collections.abc import Callable
from dataclasses import dataclass

from p2pmodel.eval import EvalReport
from p2pmodel.node.exchange import ExchangeOutcome
from p2pmodel.train import InnerStats


@dataclass
class RoundResult:
    round: int
    stats: InnerStats
    outcome: ExchangeOutcome
    report: EvalReport


def run_round(
    peer, exchange, round_: int, interrupted: Callable[[], bool], on_step: Callable[[int, float], None] | None = None
) -> RoundResult | None:
    """Run round ``round_`` to its commit, or return None (nothing committed) if interrupted before."""
    stats = peer.trainer.run(peer.stream, peer.cfg.train.inner_steps, interrupted, on_step)  # inner phase
    if interrupted():
        return None
    delta = peer.pseudo_gradient()  # Δ = θ_global − θ_local
    outcome = exchange.average(round_, delta, weight=float(stats.samples))  # mean Δ of the round's group
    peer.outer.step(outcome.mean_delta)  # θ_global ← OuterOpt(θ_global, mean Δ)
    peer.load_global_into_local()
    peer.samples_total += stats.samples
    peer.counters["bytes_sent"] += outcome.bytes_sent
    peer.counters["bytes_received"] += outcome.bytes_received
    report = peer.evaluate()
    peer.commit(round_)  # digest + atomic checkpoint; a restart resumes here
    return RoundResult(round=round_, stats=stats, outcome=outcome, report=report)
