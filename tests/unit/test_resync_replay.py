"""A peer that lost a round's majority (its all-reduce missed parts) re-syncs by replaying the round's object on its
own state of the round before (node/state_offers.py), not by downloading the whole state: checked against the
outer step the winners ran, with a forged object refused and the whole download as the fallback."""

from types import SimpleNamespace

import pytest
import torch

from p2pmodel.core.errors import IntegrityError
from p2pmodel.core.ids import sha256_hex
from p2pmodel.eval.digest import state_digest
from p2pmodel.node import state_offers
from p2pmodel.node.commit import DigestBox, valid_digest_message
from p2pmodel.sync.outer import OuterOptimizer
from p2pmodel.versioning.round_object import encode_round

RUN = "run-0123456789abcdef"
OUTER = {"lr": 0.7, "momentum": 0.9, "nesterov": True}
NAMES = ["tok.weight", "blocks.0.w", "ln.bias"]  # not sorted: the peer's order, as a model lists them
SHAPES = {"tok.weight": (64, 16), "blocks.0.w": (16, 16), "ln.bias": (16,)}


class FakePeer:
    """What StateOffers reads of a peer: θ_global, the outer optimizer, the run, and what it adopts and keeps."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.names, self.run_id = NAMES, RUN
        self.global_params = [torch.randn(SHAPES[n], generator=g) for n in NAMES]
        self.outer = OuterOptimizer(self.global_params, **OUTER)
        self.adopted, self.kept = [], []

    @property
    def digest(self) -> str:
        return state_digest(self.global_state())

    def global_state(self) -> dict:
        return dict(zip(self.names, self.global_params, strict=True))

    def step(self, aggregate: list[torch.Tensor]) -> None:
        self.outer.step(aggregate)

    def adopt(self, params: dict, momentum: list) -> None:
        self.adopted.append((params, momentum))

    def keep_round(self, round_: int, blob: bytes, parent: str, child: str) -> None:
        self.kept.append((round_, sha256_hex(blob), parent, child))


def _aggregate(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPES[n], generator=g) * 1e-2 for n in NAMES]


def _swarm_round(monkeypatch):
    """Rounds 1-2 of a winner and of a peer that missed round 2's full mean; → (the lagging peer's StateOffers, that
    peer, the winner, the winner's offer, the round objects by id, the whole-state downloads tried)."""
    winner, behind = FakePeer(0), FakePeer(0)
    for p in (winner, behind):  # round 1: the same mean, the same state; each packs it
        p.step(_aggregate(1))
    lagging = state_offers.StateOffers(None, SimpleNamespace(peer_id="me"), behind, 600, 3600)
    lagging.prepare(1)
    parent = winner.digest
    mean = _aggregate(2)
    winner.step(mean)
    behind.step([m * 0.5 for m in mean])  # a partial all-reduce: another state
    lagging.prepare(2)
    blob = encode_round(
        run_id=RUN, round_=2, parent=parent, child=winner.digest, outer=OUTER, codec_name="int4", block_size=64,
        contributors={"w": 10, "me": 10}, aggregate=dict(zip(NAMES, mean, strict=True)),
    )  # fmt: skip
    objects = {sha256_hex(blob): blob}
    downloads = []
    monkeypatch.setattr(
        state_offers, "fetch_blob", lambda dht, pid, blob_id, limit, timeout_s, stall_s: objects[blob_id]
    )
    monkeypatch.setattr(state_offers, "download_state", lambda *a, **k: downloads.append(a[1]) or None)
    monkeypatch.setattr(state_offers, "NONE_OFFERED_S", 0.0)
    monkeypatch.setattr(lagging, "offers", dict)
    offer = {"round": 2, "digest": winner.digest, "blob": "b" * 64, "size": 1, "patch": sha256_hex(blob)}
    return lagging, behind, winner, {"w": {"peer_id": "w", **offer}}, objects, downloads


@pytest.mark.timeout(30)
def test_a_peer_behind_by_a_partial_round_replays_the_winners_object_to_their_exact_state(monkeypatch):
    lagging, behind, winner, offers, objects, downloads = _swarm_round(monkeypatch)
    assert lagging.resync(2, winner.digest, offers) == "replay"
    (params, momentum), = behind.adopted  # fmt: skip
    assert state_digest(params) == winner.digest and downloads == []  # no whole state fetched
    for n, got, want in zip(NAMES, momentum, winner.outer.momentum_buffers, strict=True):
        assert torch.equal(got, want), n  # the momentum the winner holds, in the peer's parameter order
    round_one = next(d for r, d in lagging._packed if r == 1)
    assert behind.kept == [(2, next(iter(objects)), round_one, winner.digest)]  # it can serve the round on


@pytest.mark.timeout(30)
def test_a_forged_object_is_refused_and_the_whole_state_is_the_fallback(monkeypatch):
    lagging, behind, winner, offers, objects, downloads = _swarm_round(monkeypatch)
    (good_id, good), = objects.items()  # fmt: skip
    forged = good[:-8] + b"\x00" * 8  # damaged tail: a valid id for damaged bytes
    objects[sha256_hex(forged)] = forged
    offers = {"x": {**offers["w"], "peer_id": "x", "patch": sha256_hex(forged)}}
    assert not lagging.resync(2, winner.digest, offers)  # the fake download finds nothing either
    assert behind.adopted == [] and behind.kept == [] and downloads and "x" in downloads[0]


@pytest.mark.timeout(30)
def test_an_object_that_does_not_start_from_our_state_falls_back(monkeypatch):
    lagging, behind, winner, offers, objects, downloads = _swarm_round(monkeypatch)
    lagging._packed = {k: v for k, v in lagging._packed.items() if k[0] != 1}  # no package of round 1 any more
    assert not lagging.resync(2, winner.digest, offers) and behind.adopted == [] and downloads
    with pytest.raises(IntegrityError):  # and one that names another parent is refused by replay itself
        from p2pmodel.versioning.round_object import decode_round, replay

        obj = decode_round(next(iter(objects.values())), SHAPES, 1 << 20)
        replay(FakePeer(5).global_state(), {}, obj)


@pytest.mark.timeout(10)
def test_digest_messages_carry_the_round_object_and_older_ones_without_it_still_count():
    base = {"run_id": RUN, "round": 3, "digest": "a" * 64, "blob": "b" * 64, "size": 9, "time": 1.0}
    assert valid_digest_message(base, RUN)  # a peer of an earlier release
    assert valid_digest_message({**base, "patch": "c" * 64, "patch_size": 5}, RUN)
    assert valid_digest_message({**base, "patch": "", "patch_size": 0}, RUN)
    for bad in ({"patch": "x" * 64, "patch_size": 5}, {"patch": "c" * 64, "patch_size": -1}, {"patch": "c" * 64}):
        assert not valid_digest_message({**base, **bad}, RUN), bad
    box = DigestBox()
    box.add("p1", {**base, "patch": "c" * 64, "patch_size": 5}, committed=3)
    box.add("p2", base, committed=3)
    got = box.offers(3, "a" * 64)
    assert got["p1"]["patch"] == "c" * 64 and got["p2"]["patch"] == ""
