"""A SwarmLink part that fails to start must not leave the parts started before it running: the DHT (a child
process with its p2pd), the averager (another child process), the blob server and gossip handlers."""

import pytest

import p2pmodel.node.swarm_link as swarm_link
from p2pmodel.config import load_config
from p2pmodel.node.peer import Peer
from p2pmodel.swarm.identity import Identity
from p2pmodel.testing.swarm import FAST, TINY


class Boom(RuntimeError):
    pass


@pytest.mark.timeout(90)
def test_a_failed_start_stops_the_dht_and_averager(tmp_path, monkeypatch):
    cfg = load_config(TINY, [*FAST, 'swarm.host_maddrs=["/ip4/127.0.0.1/tcp/0"]'])
    identity = Identity.load_or_create(tmp_path / "id.key")
    peer = Peer(cfg, tmp_path / "data", identity.peer_id)
    started = {}

    def spy(name, real):
        def make(*args, **kwargs):
            started[name] = real(*args, **kwargs)
            return started[name]

        monkeypatch.setattr(swarm_link, name, make)

    spy("start_dht", swarm_link.start_dht)
    spy("DeterministicAverager", swarm_link.DeterministicAverager)
    spy("Gossip", swarm_link.Gossip)

    def refuse(*args, **kwargs):  # the last part to start
        raise Boom("record refresher cannot start")

    monkeypatch.setattr(swarm_link, "RecordRefresher", refuse)
    with pytest.raises(Boom):
        swarm_link.SwarmLink(cfg, peer, identity)
    assert set(started) == {"start_dht", "DeterministicAverager", "Gossip"}
    dht, averager = started["start_dht"], started["DeterministicAverager"]
    averager.join(timeout=20)
    dht.join(timeout=20)
    assert not averager.is_alive(), "the averager process outlived a failed start"
    assert not dht.is_alive(), "the DHT process outlived a failed start"
