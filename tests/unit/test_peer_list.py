"""SwarmLink.peer_ids: the DHT's peer list is read every 30 s after a change (or the start) and every 5 minutes
once it held for 2 (each read ~22 KB on the wire at 4 peers), and the peers heard from by gossip ("ready", "join")
are added without a read: "ready" and "digest" are pushed to the listed peers only."""

from types import SimpleNamespace

import pytest

from p2pmodel.node import swarm_link
from p2pmodel.node.swarm_link import SwarmLink


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def link(monkeypatch):
    clock, listed, reads = Clock(), [["a"]], []
    monkeypatch.setattr(swarm_link.time, "monotonic", clock)

    def records(dht, run_id, max_age_s=None):
        reads.append(clock.t)
        return [{"peer_id": p} for p in ["me", *listed[0]]]

    monkeypatch.setattr(swarm_link, "list_peer_records", records)
    sl = SwarmLink.__new__(SwarmLink)
    sl.cfg = SimpleNamespace(swarm=SimpleNamespace(record_ttl_s=60.0))
    sl.dht, sl.run_id, sl.identity = None, "r", SimpleNamespace(peer_id="me")
    sl._peer_cache, sl._peers_changed_at = (0.0, []), clock.t
    return sl, clock, listed, reads


def _tick(sl, clock, until, step=1.0):
    while clock.t < until:
        clock.t += step
        sl.peer_ids()


@pytest.mark.timeout(10)
def test_the_list_is_read_often_while_it_changes_and_rarely_once_it_holds(link):
    sl, clock, listed, reads = link
    assert sl.peer_ids() == ["a"]
    _tick(sl, clock, 1050)
    listed[0] = ["a", "b"]  # a peer joins
    _tick(sl, clock, 2000)
    assert sl.peer_ids() == ["a", "b"]
    # every 30 s from the start, then from the change at 1060 until it held for 2 minutes, then every 5 minutes
    assert [t - 1000 for t in reads] == [0, 30, 60, 90, 120, 150, 450, 750]


@pytest.mark.timeout(10)
def test_peers_heard_from_by_gossip_are_listed_and_those_that_left_are_not(link):
    sl, *_ = link
    sl.pace = SimpleNamespace(left=lambda: frozenset({"a"}), heard_from=lambda: frozenset({"c", "a"}))
    assert sl.peer_ids() == ["c"]


@pytest.mark.timeout(10)
def test_alone_it_looks_again_every_5_s(link):
    sl, clock, listed, reads = link
    listed[0] = []
    _tick(sl, clock, 1000 + 20)
    assert len(reads) == 4
