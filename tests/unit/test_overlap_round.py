"""The overlapped round (sync.overlap, node/round.py): two real Peers in one process, averaging through an
in-memory exchange. Every commit is bit-identical on both, θ_global follows the blocking recurrence exactly
(θ_r = OuterOpt(θ_{r-1}, mean of the deltas averaged for round r)), each exchange really runs while the next
inner phase trains, and the delta of a phase is measured from the eager start point it trained from."""

import threading
from pathlib import Path

import pytest
import torch

from p2pmodel.config import load_config
from p2pmodel.node.commit import Agreement
from p2pmodel.node.exchange import ExchangeOutcome
from p2pmodel.node.peer import Peer
from p2pmodel.node.round import run_round
from p2pmodel.sync.outer import OuterOptimizer

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
pytestmark = pytest.mark.timeout(120)
SETTINGS = [
    "model.seq_len=32",
    "model.n_layer=1",
    "train.inner_steps=3",
    "train.batch_size=2",
    "train.warmup_steps=2",
    "eval.batches=1",
    "eval.batch_size=2",
    "data.max_corpus_bytes=300000",
    "sync.overlap=true",
]


class PairExchange:
    """Two peers' exchange in memory: ``average`` waits for both deltas of a round and returns the weighted mean
    (the same bytes for both); it records when each exchange ran and every mean it returned."""

    def __init__(self, trainers: dict[str, Peer]):
        self.peers = trainers
        self.deltas: dict[int, dict[str, tuple[list[torch.Tensor], float]]] = {}
        self.means: dict[int, list[torch.Tensor]] = {}
        self.cond = threading.Condition()
        self.steps_during_exchange: dict[tuple[str, int], int] = {}
        self.checkpointed_at_start: dict[tuple[str, int], int] = {}  # the peer's last checkpointed round then

    def for_peer(self, name: str) -> "PeerView":
        return PeerView(self, name)


class PeerView:
    def __init__(self, pair: PairExchange, name: str):
        self.pair, self.name = pair, name

    def round_closed(self, round_: int) -> bool:
        return False

    def sits_out(self, round_: int) -> bool:
        return False

    def vote(self, round_: int, patch: bytes | None) -> None:
        pass

    def phase_done(self, round_: int) -> None:
        pass

    def average(self, round_: int, delta, weight: float) -> ExchangeOutcome:
        pair, peer = self.pair, self.pair.peers[self.name]
        first = peer.trainer.step
        pair.checkpointed_at_start[(self.name, round_)] = peer.round
        with pair.cond:
            pair.deltas.setdefault(round_, {})[self.name] = ([d.clone() for d in delta], weight)
            pair.cond.notify_all()
            pair.cond.wait_for(lambda: len(pair.deltas[round_]) == 2, timeout=60)
            if round_ not in pair.means:
                entries = [pair.deltas[round_][n] for n in sorted(pair.deltas[round_])]
                total = sum(w for _, w in entries)
                pair.means[round_] = [
                    sum((d[i] * (w / total) for d, w in entries), torch.zeros_like(entries[0][0][i]))
                    for i in range(len(entries[0][0]))
                ]
            mean = [t.clone() for t in pair.means[round_]]
        # hold the exchange until this peer's next inner phase has trained (proves the overlap)
        deadline = 600
        while peer.trainer.step - first < 1 and deadline:
            threading.Event().wait(0.01)
            deadline -= 1
        pair.steps_during_exchange[(self.name, round_)] = peer.trainer.step - first
        return ExchangeOutcome(mean_delta=mean, group_size=2, members=sorted(pair.peers), averaged=True)

    def agree(self, round_: int, outcome, patch: bytes | None = None, then=None) -> Agreement:
        return Agreement(winner=self.pair.peers[self.name].digest)

    def after_commit(self, round_: int, samples_per_s: float, outcome) -> None:
        pass


def test_overlapped_rounds_commit_the_same_bits_and_follow_the_blocking_recurrence(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(TINY, SETTINGS)
    peers = {n: Peer(cfg, tmp_path / n, n) for n in ("a", "b")}
    genesis = [p.clone() for p in peers["a"].global_params]
    pair = PairExchange(peers)
    commits: dict[str, list[str]] = {"a": [], "b": []}
    starts: dict[str, list] = {"a": [], "b": []}

    def run(name: str) -> None:
        peer, view = peers[name], pair.for_peer(name)
        for r in (1, 2, 3):
            result = run_round(peer, view, r, lambda: False)
            assert result is not None and result.round == r
            commits[name].append(peer.digest)
            starts[name].append(peer.in_flight)

    threads = [threading.Thread(target=run, args=(n,)) for n in peers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert commits["a"] == commits["b"] and len(set(commits["a"])) == 3
    assert all(n >= 1 for n in pair.steps_during_exchange.values())  # each exchange ran during an inner phase
    # round r's exchange started before round r-1 was evaluated and checkpointed (right after its commit step)
    assert pair.checkpointed_at_start == {(n, r): max(r - 2, 0) for n in peers for r in (1, 2, 3, 4)}
    # θ_global = the blocking recurrence over the means that were averaged, replayed from genesis
    replay = [p.clone() for p in genesis]
    outer = OuterOptimizer(replay, cfg.sync.outer_lr, cfg.sync.outer_momentum, cfg.sync.nesterov)
    for r in (1, 2, 3):
        outer.step(pair.means[r])
    assert all(torch.equal(x, y) for x, y in zip(replay, peers["a"].global_params, strict=True))
    # the delta in flight (round 4): measured from θ_3, where the trajectory was moved once round 3's mean landed
    for name in peers:
        flight = peers[name].in_flight
        assert flight.round == 4 and flight.samples > 0
        assert all(torch.isfinite(d).all() for d in flight.delta)


class LosingAlone:
    """One peer whose commit step always ends off the majority: ``agree`` calls ``then`` (the winner is known) and
    only after it "re-syncs" (here: a pause); it records which exchanges had started by then."""

    def __init__(self, peer: Peer):
        self.peer, self.started, self.started_during_resync = peer, [], {}

    def round_closed(self, round_: int) -> bool:
        return False

    def sits_out(self, round_: int) -> bool:
        return False

    def vote(self, round_: int, patch: bytes | None) -> None:
        pass

    def phase_done(self, round_: int) -> None:
        pass

    def average(self, round_: int, delta, weight: float) -> ExchangeOutcome:
        self.started.append(round_)
        return ExchangeOutcome(mean_delta=[d.clone() for d in delta], group_size=1, members=["a"], averaged=True)

    def agree(self, round_: int, outcome, patch: bytes | None = None, then=None) -> Agreement:
        assert then is not None
        then()
        deadline = 500
        while round_ + 1 not in self.started and deadline:  # the re-sync: the next exchange runs meanwhile
            threading.Event().wait(0.01)
            deadline -= 1
        self.started_during_resync[round_] = round_ + 1 in self.started
        return Agreement(winner=self.peer.digest)

    def after_commit(self, round_: int, samples_per_s: float, outcome) -> None:
        pass


def test_a_peer_that_must_re_sync_starts_the_next_exchange_before_its_re_sync(tmp_path):
    """Overlapped, a re-sync (~6 s for a round object at 1 Mbit/s) must not make the peer late for the next group:
    the next exchange starts once the commit step knows the winner."""
    torch.set_num_threads(1)
    peer = Peer(load_config(TINY, SETTINGS), tmp_path, "a")
    link = LosingAlone(peer)
    for r in (1, 2, 3):
        assert run_round(peer, link, r, lambda: False).round == r
    assert link.started_during_resync == {1: True, 2: True, 3: True}
    assert link.started == [1, 2, 3, 4]  # each exchange once: the round loop does not start it again


class VotingAlone:
    """A swarm of one whose exchange is back at once; it records the inner step count when this peer voted for a
    round and when each phase ended, and the state it voted for and the one it committed."""

    def __init__(self, peer: Peer):
        self.peer, self.votes, self.phase_end, self.agreed = peer, {}, {}, {}

    def round_closed(self, round_: int) -> bool:
        return False

    def sits_out(self, round_: int) -> bool:
        return False

    def vote(self, round_: int, patch: bytes | None) -> None:
        self.votes[round_] = (self.peer.trainer.step, self.peer.digest)

    def phase_done(self, round_: int) -> None:
        self.phase_end[round_] = self.peer.trainer.step

    def average(self, round_: int, delta, weight: float) -> ExchangeOutcome:
        return ExchangeOutcome(mean_delta=[d.clone() for d in delta], group_size=1, members=["a"], averaged=True)

    def agree(self, round_: int, outcome, patch: bytes | None = None, then=None) -> Agreement:
        self.agreed[round_] = self.peer.digest
        return Agreement(winner=self.peer.digest)

    def after_commit(self, round_: int, samples_per_s: float, outcome) -> None:
        pass


def test_an_overlapped_peer_votes_for_a_round_while_it_trains_the_next(tmp_path):
    """Its state for round r is known once r's mean lands, mid-phase r + 1: the vote goes out then, so the others'
    commit steps find it when their phase ends. Before, it went out after the phase, and the peer that finished
    first waited out the round's close grace for the others' votes (~0.8 s of a 14 s round, benchmarks/links.py)."""
    torch.set_num_threads(1)
    peer = Peer(load_config(TINY, [*SETTINGS, "train.inner_steps=6"]), tmp_path, "a")
    link = VotingAlone(peer)
    for r in (1, 2, 3):
        assert run_round(peer, link, r, lambda: False).round == r
    link.phase_end[1] = 6  # round 1's phase ran before any exchange (nothing in flight yet)
    for r in (1, 2, 3):
        step, digest = link.votes[r]
        assert link.phase_end[r] <= step < link.phase_end[r + 1], (r, step, link.phase_end)
        assert digest == link.agreed[r]  # the state it voted for is the one its commit step put up


def test_a_peer_stopped_after_its_mid_phase_vote_reports_its_last_committed_state(tmp_path):
    """Its outer step of round r is taken mid-phase; stopped before r's commit, the digest it reports (the "stopped"
    line, the summary) is round r - 1's, the one its checkpoint holds."""
    torch.set_num_threads(1)
    peer = Peer(load_config(TINY, [*SETTINGS, "train.inner_steps=6"]), tmp_path, "a")
    link = VotingAlone(peer)
    for r in (1, 2):
        assert run_round(peer, link, r, lambda: False).round == r
    assert run_round(peer, link, 3, lambda: 3 in link.votes) is None  # stopped right after the vote for round 3
    assert link.votes[3][1] != link.agreed[2]  # it had stepped to round 3's state
    assert peer.digest == link.agreed[2] == peer.store.head()["digest"] and peer.round == 2
