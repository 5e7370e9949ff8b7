"""The PeerID computed from an identity file equals the one the real p2pd daemon reports for it."""

import pytest

from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.node import peer_id_of, start_dht, visible_maddrs


@pytest.mark.timeout(60)
def test_peer_id_matches_daemon_and_persists(tmp_path):
    path = tmp_path / "peer" / "identity.key"
    dht = start_dht(path, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    try:
        expected = Identity.load(path).peer_id
        assert peer_id_of(dht) == expected
        assert all(m.endswith(f"/p2p/{expected}") for m in visible_maddrs(dht))
    finally:
        dht.shutdown()
    dht = start_dht(path, host_maddrs=["/ip4/127.0.0.1/tcp/0"])  # restart: same identity, same PeerID
    try:
        assert peer_id_of(dht) == expected
    finally:
        dht.shutdown()
