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


class RecordingKeys:
    current_key = "p2pmodel_test.0b01"

    def __init__(self):
        self.stored = []

    async def declare_averager(self, group_key, peer_id, expiration_time, looking_for_group=True):
        self.stored.append(looking_for_group)
        return True

    async def update_key_on_not_enough_peers(self):
        pass


async def _declare_then_stop(kept: bool) -> list[bool]:
    from types import SimpleNamespace

    from p2pmodel.sync.matchmaking import keep_declarations

    leaders = PotentialLeaders(PeerID(b"x" * 34), min_matchmaking_time=5.0, target_group_size=4)
    if kept:
        keep_declarations(leaders)
        keep_declarations(leaders)  # idempotent
    keys = RecordingKeys()
    leaders.running.set()
    leaders.search_end_time = get_dht_time() + 5.0
    task = asyncio.create_task(leaders._declare_averager_periodically(SimpleNamespace(scheduled_time=0.0), keys))
    while not keys.stored:
        await asyncio.sleep(0.01)
    task.cancel()  # the search ended: a group formed
    await asyncio.gather(task, return_exceptions=True)
    return keys.stored


@pytest.mark.timeout(30)
def test_a_declaration_is_left_to_expire_not_withdrawn():
    assert asyncio.run(_declare_then_stop(kept=False)) == [True, False]  # hivemind: a second store withdraws it
    assert asyncio.run(_declare_then_stop(kept=True)) == [True]
