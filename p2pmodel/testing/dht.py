"""Real hivemind DHT peers on 127.0.0.1 whose libp2p keys are also their signing identities (tests only)."""

from contextlib import contextmanager
from pathlib import Path

from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.node import peer_id_of, start_dht, stop_dht, visible_maddrs

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


@contextmanager
def identity_dhts(n: int, folder: Path):
    """Yield ``(dhts, identities)``: n DHTs joined through the first, each with its own persistent key."""
    dhts, idents = [], []
    try:
        for i in range(n):
            path = Path(folder) / f"peer{i}.key"
            idents.append(Identity.load_or_create(path))
            dhts.append(start_dht(path, visible_maddrs(dhts[0]) if dhts else [], LOCAL, wait_timeout_s=3))
        assert [peer_id_of(d) for d in dhts] == [i.peer_id for i in idents]
        yield dhts, idents
    finally:
        for dht in dhts:
            stop_dht(dht)
