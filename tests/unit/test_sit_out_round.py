"""A round this peer sits out (node/sit_out.py, node/round.py ``_inner_phase``): the others' state replaces its
work at the commit step, so it trains no inner step for it; it waits until the others close the round. Before,
it trained the whole phase and dropped it (a 0.04-core peer spent minutes on such phases)."""

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
    "train.inner_steps=3",
    "train.batch_size=2",
    "train.warmup_steps=1",
    "eval.batches=1",
    "eval.batch_size=2",
    "eval.every_rounds=100",
    "data.max_corpus_bytes=300000",
]


class SittingOut:
    """Alone, sitting out ``rounds``; the others close a round the ``close_after``-th time it is asked (sooner
    only for a round this peer trains: its first step is always taken)."""

    def __init__(self, peer: Peer, rounds: set[int], close_after: int = 5):
        self.peer, self.rounds, self.close_after = peer, rounds, close_after
        self.asked: dict[int, int] = {}

    def round_closed(self, round_: int) -> bool:
        self.asked[round_] = self.asked.get(round_, 0) + 1
        return round_ in self.rounds and self.asked[round_] >= self.close_after

    def sits_out(self, round_: int) -> bool:
        return round_ in self.rounds

    def vote(self, round_: int, patch: bytes | None) -> None:
        pass

    def phase_done(self, round_: int) -> None:
        pass

    def average(self, round_: int, delta, weight: float) -> ExchangeOutcome:
        return ExchangeOutcome(mean_delta=[d.clone() for d in delta], group_size=1, sat_out=round_ in self.rounds)

    def agree(self, round_: int, outcome, patch: bytes | None = None, then=None) -> Agreement:
        return Agreement(winner=self.peer.digest)

    def after_commit(self, round_: int, samples_per_s: float, outcome) -> None:
        pass


@pytest.mark.parametrize("overlap", [False, True])
def test_a_round_sat_out_trains_no_step_and_waits_for_the_others_to_close_it(tmp_path, overlap):
    torch.set_num_threads(1)
    peer = Peer(load_config(TINY, [*SMALL, f"sync.overlap={overlap}"]), tmp_path, "a")
    link = SittingOut(peer, rounds={3})
    steps = {}
    for r in (1, 2, 3, 4):
        before = peer.trainer.step
        result = run_round(peer, link, r, lambda: False)
        assert result is not None and result.round == r
        steps[r] = peer.trainer.step - before
    # blocking: round r's call trains round r; overlapped: round 1's call trains 1 and 2, round r's trains r + 1
    assert steps == ({1: 3, 2: 3, 3: 0, 4: 3} if not overlap else {1: 6, 2: 0, 3: 3, 4: 3})
    assert link.asked[3] == link.close_after  # it waited for the close, and no longer


def test_a_peer_sitting_out_stops_waiting_when_it_is_stopped(tmp_path):
    torch.set_num_threads(1)
    peer = Peer(load_config(TINY, SMALL), tmp_path, "a")
    link = SittingOut(peer, rounds={1}, close_after=10**9)
    asked = []
    assert run_round(peer, link, 1, lambda: asked.append(1) or len(asked) > 3) is None  # nothing committed
    assert peer.trainer.step == 0
