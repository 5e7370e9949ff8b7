"""start_dht turns hivemind's failure modes into one-line UsageError / SwarmError."""

import socket
import time

import pytest

from p2pmodel.core.errors import SwarmError, UsageError
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.node import peer_id_of, run_bootstrap, start_dht, visible_maddrs

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_peers": ["garbage"]},
        {"initial_peers": ["/ip4/127.0.0.1/tcp/1"]},  # no /p2p/ peer id
        {"initial_peers": "/ip4/127.0.0.1/tcp/1"},  # a string, not a list
        {"host_maddrs": ["/ip4/999.0.0.1/tcp/0"]},
        {"announce_maddrs": ["/ip4/1.2.3.4/tcp/0"]},  # port 0 cannot be announced
    ],
)
def test_bad_multiaddr_is_usage_error(kwargs):
    with pytest.raises(UsageError) as info:
        dht = start_dht(**kwargs)
        dht.shutdown()
    assert "\n" not in str(info.value)


@pytest.mark.timeout(30)
def test_unreachable_bootstrap_is_swarm_error_fast(tmp_path):
    nobody = Identity.generate().peer_id
    start = time.monotonic()
    with pytest.raises(SwarmError, match="cannot reach any initial peer") as info:
        dht = start_dht(tmp_path / "id.key", [f"/ip4/127.0.0.1/tcp/{_closed_port()}/p2p/{nobody}"], LOCAL)
        dht.shutdown()
    assert time.monotonic() - start < 10
    assert "\n" not in str(info.value)


@pytest.mark.timeout(60)
def test_join_through_bootstrap():
    boot = run_bootstrap(host_maddrs=LOCAL)
    try:
        peer = start_dht(None, visible_maddrs(boot), LOCAL, client_mode=True, wait_timeout_s=3)
        try:
            assert peer_id_of(peer) != peer_id_of(boot)
            assert boot.store("k", b"v", time.time() + 30)
            assert peer.get("k", latest=True).value == b"v"
        finally:
            peer.shutdown()
    finally:
        boot.shutdown()
