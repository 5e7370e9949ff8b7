"""eval.every_rounds (node/round.py): a peer evaluates every N-th committed round and every release candidate,
the rounds between carry no report and join no history, and the setting is local (the run id ignores it)."""

from pathlib import Path

import pytest
import torch

from p2pmodel.config import load_config
from p2pmodel.node.commit import Agreement
from p2pmodel.node.exchange import ExchangeOutcome
from p2pmodel.node.peer import Peer
from p2pmodel.node.round import run_round

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
pytestmark = pytest.mark.timeout(120)
SMALL = [
    "model.seq_len=32",
    "model.n_layer=1",
    "train.inner_steps=2",
    "train.batch_size=2",
    "train.warmup_steps=1",
    "eval.batches=1",
    "eval.batch_size=2",
    "data.max_corpus_bytes=300000",
]


class Alone:
    """A swarm of one: its mean is its own delta, and the commit step agrees with itself."""

    def __init__(self, peer: Peer):
        self.peer = peer

    def round_closed(self, round_: int) -> bool:
        return False

    def sits_out(self, round_: int) -> bool:
        return False

    def vote(self, round_: int, patch: bytes | None) -> None:
        pass

    def phase_done(self, round_: int) -> None:
        pass

    def average(self, round_: int, delta, weight: float) -> ExchangeOutcome:
        return ExchangeOutcome(mean_delta=[d.clone() for d in delta], group_size=1, members=["a"], averaged=True)

    def agree(self, round_: int, outcome, patch: bytes | None = None, then=None) -> Agreement:
        return Agreement(winner=self.peer.digest)

    def after_commit(self, round_: int, samples_per_s: float, outcome) -> None:
        pass


@pytest.mark.parametrize("overlap", [False, True])
def test_rounds_between_evaluations_carry_no_report_and_candidates_are_always_evaluated(tmp_path, overlap):
    torch.set_num_threads(1)
    cfg = load_config(TINY, [*SMALL, "eval.every_rounds=3", "versioning.release_every=4", f"sync.overlap={overlap}"])
    peer = Peer(cfg, tmp_path, "a")
    evaluated = []
    for r in range(1, 7):
        result = run_round(peer, Alone(peer), r, lambda: False)
        assert result is not None and result.round == r
        if result.report is not None:
            evaluated.append(r)
            assert peer.last_report is result.report and result.eval_s > 0
        else:
            assert result.eval_s < 0.01  # nothing evaluated: the round event's eval_s says so
    assert evaluated == [3, 4, 6]  # every 3rd round, and round 4: a release candidate
    assert [h[0] for h in peer.history] == [3, 4, 6]  # no round is recorded with another round's loss


def test_the_eval_cadence_is_local_and_leaves_the_run_id_alone():
    base = load_config(TINY).lineage_spec()
    assert load_config(TINY, ["eval.every_rounds=5"]).lineage_spec() == base
    assert load_config(TINY, ["eval.batches=5"]).lineage_spec() != base  # what every peer judges alike stays in
