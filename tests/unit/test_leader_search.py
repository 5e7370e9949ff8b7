"""The leader search of hivemind's matchmaking, spaced: a peer waiting for its group queries the DHT every
``interval_s`` at most, where stock hivemind 1.1.12 re-queries in a tight loop (p2pmodel/sync/matchmaking.py)."""

import asyncio

import pytest
from hivemind.averaging.matchmaking import PotentialLeaders
from hivemind.p2p import PeerID
from hivemind.utils.timed_storage import get_dht_time

from p2pmodel.sync.matchmaking import space_leader_search


class CountingKeys:
    """A group key manager that finds nobody (the waiting case) and counts the DHT queries."""

    current_key = "p2pmodel_test.0b"

    def __init__(self):
        self.calls = 0

    async def get_averagers(self, group_key, only_active):
        self.calls += 1
        await asyncio.sleep(0)  # a DHT answer arrives on a later loop turn
        return []


async def _search(spaced: bool, window_s: float) -> int:
    leaders = PotentialLeaders(PeerID(b"x" * 34), min_matchmaking_time=window_s, target_group_size=4)
    if spaced:
        space_leader_search(leaders, interval_s=0.1)
        space_leader_search(leaders, interval_s=0.1)  # idempotent
    keys = CountingKeys()
    leaders.running.set()
    leaders.search_end_time = get_dht_time() + window_s
    task = asyncio.create_task(leaders._update_queue_periodically(keys))
    while not task.done():  # what pop_next_leader does while its queue stays empty
        leaders.update_triggered.set()
        await asyncio.sleep(0)
    await task
    return keys.calls


@pytest.mark.timeout(30)
def test_leader_search_is_spaced():
    window = 1.0
    stock = asyncio.run(_search(spaced=False, window_s=window))
    spaced = asyncio.run(_search(spaced=True, window_s=window))
    assert 2 <= spaced <= window / 0.1 + 2  # still searching, never more than once per interval
    assert stock > 5 * spaced  # the tight loop this guards against
