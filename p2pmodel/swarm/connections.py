"""Which peers this node's p2p daemon is connected to right now: the quickest sign that a peer is gone.

A peer that crashes (SIGKILL, OOM) takes its p2pd with it, and the kernel closes its TCP connections at once,
while its signed DHT records stay readable until they expire (a minute). Peers of a run talk to each other
directly (gossip pushes, averaging), so "was in my last round and is no longer connected" means "gone"."""

from __future__ import annotations

import hivemind

from p2pmodel.swarm.aio import get_p2p, run_sync


async def _alist(dht: hivemind.DHT) -> set[str]:
    p2p = await get_p2p(dht)
    return {info.peer_id.to_base58() for info in await p2p.list_peers()}


def connected_peers(dht: hivemind.DHT, timeout_s: float = 2.0) -> set[str] | None:
    """PeerIDs (base58) of the open connections, or None when the daemon did not answer in time (unknown)."""
    try:
        return run_sync(_alist(dht), timeout_s, "listing connections")
    except Exception:
        return None
