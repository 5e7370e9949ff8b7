"""State download on real peers (127.0.0.1): a late joiner adopts the swarm's state and keeps its digest, and the
node's download path (``download_state``, used by ``StateOffers.resync``) rejects corrupted or lying packages."""

import logging

import pytest
import torch

from p2pmodel.core.ids import sha256_hex
from p2pmodel.eval import state_digest
from p2pmodel.node.launch import LocalSwarm
from p2pmodel.node.state_offers import download_state
from p2pmodel.node.state_package import pack_state
from p2pmodel.swarm.blobs import BlobServer
from p2pmodel.swarm.node import peer_id_of, start_dht, stop_dht, visible_maddrs
from p2pmodel.testing.swarm import FAST, TINY, digests_by_round, stop_all, wait_round

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


@pytest.mark.timeout(300)
def test_late_joiner_downloads_state_and_holds_the_swarm_digest(tmp_path):
    with LocalSwarm(tmp_path, TINY, FAST) as swarm:
        swarm.start_bootstrap()
        first = [swarm.start_peer(f"peer{i}") for i in range(1, 4)]  # run until stopped
        wait_round(first, 2, timeout_s=180)
        late = swarm.start_peer("late")
        # its first committed round, then one more averaged with the others
        ev = late.wait_for(lambda e: e.get("event") == "round", timeout_s=180)
        assert ev is not None, f"late peer committed nothing:\n{late.stderr_tail()}"
        joined_at = ev["round"]
        assert joined_at >= 3, f"the late peer should start after round 2, not at {joined_at}"
        assert late.wait_for(lambda e: e.get("event") == "round" and e["round"] >= joined_at + 1, 120), (
            late.stderr_tail()
        )
        wait_round(first, joined_at + 1, timeout_s=120)
        stop_all([late, *first])  # SIGTERM: each finishes its step and keeps its last committed round

        log_text = late.log_path.read_text(errors="replace")
        assert "downloading state" in log_text and "re-synced round" in log_text, log_text[-2000:]
        table = digests_by_round([late, *first])
        late_rounds = [e["round"] for e in late.rounds()]
        assert late_rounds and late_rounds[0] == joined_at
        for r in late_rounds:
            others = {n: d for n, d in table[r].items() if n != "late"}
            assert others, f"no other peer committed round {r}"
            assert set(others.values()) == {table[r]["late"]}, f"round {r}: {table[r]}"


@pytest.mark.scenario  # half a minute of 4 processes: make test-scenarios (CI runs it too)
@pytest.mark.timeout(300)
def test_a_peer_whose_mean_lost_a_part_replays_the_round_object_instead_of_downloading_the_state(tmp_path):
    """peer3's means of rounds 1 and 3 lose their first tensor (the test-only fault of node/swarm_link.py: what a
    part whose reply never came does), so it holds another digest than the two others; it reaches theirs by
    replaying the round's object they offered with their votes (~0.14 of the state) on its own state of the round
    before (round 1: the starting state it packed), and every round agrees."""
    from p2pmodel.node.swarm_link import LOSE_PART_ENV

    with LocalSwarm(tmp_path, TINY, FAST) as swarm:
        swarm.start_bootstrap()
        peers = [swarm.start_peer(f"peer{i}") for i in (1, 2)]
        peers.append(swarm.start_peer("peer3", env={LOSE_PART_ENV: "1,3"}))
        wait_round(peers, 5, timeout_s=240)
        stop_all(peers)
        table = digests_by_round(peers)
        third = {e["round"]: e for e in peers[2].rounds()}
        for r in (1, 3):
            assert third[r]["resync"] == "replay" and third[r]["group_size"] == 3, third[r]
        assert all(third[r]["resync"] == "" for r in (2, 4, 5)), third  # the fault touched rounds 1 and 3 only
        for r in range(1, 6):
            assert len(set(table[r].values())) == 1 and len(table[r]) == 3, f"round {r}: {table[r]}"


@pytest.fixture(scope="module")
def three_dhts():
    dhts = [start_dht(None, [], LOCAL, wait_timeout_s=3)]
    try:
        for _ in range(2):
            dhts.append(start_dht(None, visible_maddrs(dhts[0]), LOCAL, wait_timeout_s=3))
        yield dhts
    finally:
        for dht in dhts:
            stop_dht(dht)


def _state(seed: int, round_: int):
    g = torch.Generator().manual_seed(seed)
    names = ["emb.weight", "head.bias"]
    params = [torch.randn(64, 16, generator=g), torch.randn(16, generator=g)]
    momentum = [torch.randn(64, 16, generator=g), None]
    return names, params, momentum, pack_state(names, params, momentum, round_)


@pytest.mark.timeout(120)
def test_corrupted_and_lying_packages_are_rejected_and_the_good_one_adopted(three_dhts, caplog):
    client, bad_dht, good_dht = three_dhts
    bad, good = peer_id_of(bad_dht), peer_id_of(good_dht)
    names, params, momentum, package = _state(0, round_=5)
    digest = state_digest(dict(zip(names, params, strict=True)))
    shapes = {n: tuple(p.shape) for n, p in zip(names, params, strict=True)}
    blob_id = sha256_hex(package)
    corrupted = bytearray(package)
    corrupted[-3] ^= 0xFF  # a flipped byte inside the tensor data
    other = _state(1, round_=5)[3]  # a well-formed package of another state
    wrong_round = pack_state(names, params, momentum, 4)  # the right state, but not of the advertised round
    offer = {"round": 5, "digest": digest, "blob": blob_id}
    bad_blobs = {blob_id: bytes(corrupted), sha256_hex(other): other, sha256_hex(wrong_round): wrong_round}
    caplog.set_level(logging.WARNING, logger="p2pmodel.swarm")
    with BlobServer(bad_dht, bad_blobs.get), BlobServer(good_dht, {blob_id: package}.get):
        # bytes that do not hash to the advertised blob id: IntegrityError, skipped, the honest peer's copy adopted
        tried: set[str] = set()
        got = download_state(client, {bad: offer, good: offer}, shapes, digest, 5, 20.0, tried)
        assert got is not None and got[0] == good
        _, got_params, got_momentum = got
        assert state_digest(got_params) == digest
        assert torch.equal(got_momentum[0], momentum[0]) and got_momentum[1] is None
        assert tried == {bad, good}
        assert any(bad in r.getMessage() and "does not match its digest" in r.getMessage() for r in caplog.records)

        # a self-consistent package (bytes match its blob id) whose params are not the advertised digest
        caplog.clear()
        lying = {bad: {**offer, "blob": sha256_hex(other)}}
        assert download_state(client, lying, shapes, digest, 5, 20.0, set()) is None
        assert any("not the advertised" in r.getMessage() for r in caplog.records), caplog.text

        # the right params, but a package of another round than the offer says
        caplog.clear()
        stale = {bad: {**offer, "blob": sha256_hex(wrong_round)}}
        assert download_state(client, stale, shapes, digest, 5, 20.0, set()) is None
        assert any("of round 4" in r.getMessage() for r in caplog.records), caplog.text

        # a package true to its own digest whose tensors have other shapes than this model's (copy_ would broadcast)
        caplog.clear()
        reshaped = [params[0].reshape(16, 64), params[1]]
        odd = pack_state(names, reshaped, [None, None], 5)
        odd_digest = state_digest(dict(zip(names, reshaped, strict=True)))
        odd_offer = {bad: {**offer, "digest": odd_digest, "blob": sha256_hex(odd)}}
        bad_blobs[sha256_hex(odd)] = odd  # served by the bad peer's BlobServer above
        assert download_state(client, odd_offer, shapes, odd_digest, 5, 20.0, set()) is None
        assert any("wrong shape for emb.weight" in r.getMessage() for r in caplog.records), caplog.text

        # offers already tried are skipped (StateOffers.resync puts its own peer id there)
        assert download_state(client, {good: offer}, shapes, digest, 5, 20.0, {good}) is None
