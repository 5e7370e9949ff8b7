"""Rate-limit hivemind's leader search, which otherwise floods the DHT while a peer waits for its group.

hivemind 1.1.12 ``PotentialLeaders.pop_next_leader`` sets ``update_triggered`` whenever its leader queue is
empty, and ``_update_queue_periodically`` answers with an immediate ``get_averagers`` DHT query, so a peer
waiting in matchmaking re-queries the group key in a tight loop for the whole matchmaking window. Measured
on 4 daemon peers (tiny config, int4, per-socket counters in a network namespace): ~1.4 MB/s to the DHT node
holding the group key during the 3 s window, ~0.75 MB per peer per round, more than the all-reduce itself
(0.71 MB). Spacing the queries ``interval_s`` apart keeps the search and bounds the traffic.

``keep_declarations``: once its search ends, hivemind stores a second record that withdraws the averager's
declaration ("no longer looking for a group") before it expires by itself. p2pmodel keys each round's group by
its round number (sync/averager.py), and a declaration lives one matchmaking window: nobody looks under a round's
key once its group formed except a straggler, whose join request the leader refuses at once (another group
key, or not looking). The withdrawal is a DHT store, ~10 KB on the wire at 4 peers (benchmarks/control_ops.py),
one per peer and round: it is skipped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

LEADER_POLL_S = 0.5  # a follower learns of a new leader this much later at worst; matchmaking takes seconds


class _SpacedKeyManager:
    """A ``GroupKeyManager`` whose ``get_averagers`` calls are at least ``interval_s`` apart."""

    def __init__(self, keys: Any, interval_s: float):
        self._keys, self._interval_s, self._last = keys, interval_s, float("-inf")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._keys, name)

    async def get_averagers(self, *args, **kwargs):
        wait = self._last + self._interval_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last = time.monotonic()
        return await self._keys.get_averagers(*args, **kwargs)


class _KeptDeclarations:
    """A ``GroupKeyManager`` whose withdrawals (``declare_averager(..., looking_for_group=False)``) store nothing."""

    def __init__(self, keys: Any):
        self._keys = keys

    def __getattr__(self, name: str) -> Any:
        return getattr(self._keys, name)

    async def declare_averager(self, group_key, peer_id, expiration_time, looking_for_group: bool = True) -> bool:
        if not looking_for_group:
            return True
        return await self._keys.declare_averager(group_key, peer_id, expiration_time, looking_for_group)


def keep_declarations(potential_leaders: Any) -> None:
    """Make ``potential_leaders`` (a hivemind ``PotentialLeaders``) leave its declaration to expire (module doc)."""
    if getattr(potential_leaders, "_p2pmodel_kept", False):
        return
    declare = potential_leaders._declare_averager_periodically
    potential_leaders._declare_averager_periodically = lambda step, keys: declare(step, _KeptDeclarations(keys))
    potential_leaders._p2pmodel_kept = True


def space_leader_search(potential_leaders: Any, interval_s: float = LEADER_POLL_S) -> None:
    """Make ``potential_leaders`` (a hivemind ``PotentialLeaders``) query the DHT at most every ``interval_s``."""
    if getattr(potential_leaders, "_p2pmodel_spaced", False):
        return
    update = potential_leaders._update_queue_periodically
    potential_leaders._update_queue_periodically = lambda keys: update(_SpacedKeyManager(keys, interval_s))
    potential_leaders._p2pmodel_spaced = True
