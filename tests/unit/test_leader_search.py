"""Matchmaking without the DHT (p2pmodel/sync/matchmaking.py): declarations go straight to the expected peers,
received ones are checked and kept, and hivemind's leader search reads them without a tight loop. The calls are
fakes here; tests/integration/test_sync_averager.py runs the real ones between averagers."""

import asyncio
import json
from types import SimpleNamespace

import pytest
from hivemind.averaging.key_manager import GroupKeyManager
from hivemind.averaging.matchmaking import PotentialLeaders
from hivemind.p2p import PeerID
from hivemind.utils.timed_storage import get_dht_time

from p2pmodel.sync.matchmaking import MAX_KEYS, MAX_MESSAGE_BYTES, Declaration, DirectDeclarations, install

ME, A, B, C = (PeerID(bytes([0x12, 0x20]) + bytes([i]) * 32) for i in range(4))  # sha256 multihashes
KEY = "p2pmodel_t.0b0101"


class Calls:
    """The two calls, recorded; ``failing`` peers raise, ``held`` is what ``ask`` answers."""

    def __init__(self, failing=(), held=()):
        self.declared: list[tuple[PeerID, str, float]] = []
        self.asked: list[PeerID] = []
        self.failing, self.held = set(failing), list(held)

    async def declare(self, peer, message, timeout):
        self.declared.append((peer, message.key, message.expiration))
        if peer in self.failing:
            raise ConnectionError("gone")
        return Declaration()

    async def ask(self, peer, message, timeout):
        self.asked.append(peer)
        if peer in self.failing:
            raise ConnectionError("gone")
        return Declaration(message.key, 0.0, self.held)


def make(calls: Calls, client_mode=False, poll_s=0.1) -> DirectDeclarations:
    base = GroupKeyManager(SimpleNamespace(peer_id=ME), "p2pmodel_t", "0101", 4)
    return DirectDeclarations(base, calls.declare, calls.ask, client_mode, request_timeout=1.0, poll_s=poll_s)


@pytest.mark.timeout(10)
def test_a_declaration_goes_to_the_expected_peers_and_a_withdrawal_sends_nothing():
    async def main():
        calls = Calls(failing={B})
        keys = make(calls)
        keys.set_members([A.to_base58(), B.to_base58(), ME.to_base58(), "not a peer id", A.to_base58()])
        assert keys.members == (A, B)
        expires = get_dht_time() + 5
        assert await keys.declare_averager(KEY, ME, expires) is True  # a peer that is gone does not fail it
        assert sorted(calls.declared) == sorted([(A, KEY, expires), (B, KEY, expires)])
        assert await keys.declare_averager(KEY, ME, expires, looking_for_group=False) is True
        assert len(calls.declared) == 2
        assert keys.held(KEY) == []  # withdrawn here: no longer offered to peers that ask

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_only_live_declarations_of_this_swarm_are_kept_and_bounded():
    async def main():
        keys = make(Calls())
        now = get_dht_time()
        assert keys.receive(A, Declaration(KEY, now + 3))
        refused = [
            (B, Declaration("other_run.0b0101", now + 3)),  # another run's prefix
            (B, Declaration("p2pmodel_t.0bxyz", now + 3)),  # not a group key
            (B, Declaration(KEY, now - 1)),  # expired
            (B, Declaration(KEY, now + 3600)),  # far beyond any matchmaking window
            (B, Declaration(KEY, float("nan"))),
            (ME, Declaration(KEY, now + 3)),  # ourselves
        ]
        assert [keys.receive(peer, message) for peer, message in refused] == [False] * len(refused)
        assert keys.held(KEY) == [(A, now + 3)]

    asyncio.run(main())


def _peer(i: int) -> PeerID:
    return PeerID(bytes([0x12, 0x20]) + i.to_bytes(4, "big") * 8)


@pytest.mark.timeout(10)
def test_made_up_rounds_cannot_crowd_a_real_round_out_of_the_table():
    """One member declaring under many made-up round keys keeps only its latest few; many members doing so evict
    each other's keys, not a round the swarm declares under (more declarations), nor the key we look under."""

    async def main():
        keys = make(Calls())
        now = get_dht_time()
        for i in range(10):  # one member, ten made-up rounds
            assert keys.receive(B, Declaration(f"p2pmodel_t.0b1{i:08b}", now + 3 + i))
        assert sorted(t for held in keys._held.values() for t in held.values()) == [now + 10, now + 11, now + 12]
        real = "p2pmodel_t.0b0111"
        for peer in (A, C, _peer(1)):
            keys.receive(peer, Declaration(real, now + 4))
        keys.receive(_peer(2), Declaration(KEY, now + 4))  # the key we look under: one declaration so far
        for i in range(3, 3 + 3 * MAX_KEYS):  # many members, one made-up round each
            keys.receive(_peer(i), Declaration(f"p2pmodel_t.0b11{i:08b}", now + 5))
        assert len(keys._held) <= MAX_KEYS
        assert len(keys.held(real)) == 3 and keys.held(KEY) == [(_peer(2), now + 4)]

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_a_peer_that_declares_to_us_unasked_gets_our_declaration_back():
    async def main():
        calls = Calls()
        keys = make(calls)
        keys.set_members([A.to_base58()])
        expires = get_dht_time() + 5
        await keys.declare_averager(KEY, ME, expires)
        keys.receive(C, Declaration(KEY, get_dht_time() + 4))  # C knew us; we did not expect C
        keys.receive(A, Declaration(KEY, get_dht_time() + 4))  # A has ours already
        await asyncio.sleep(0.05)
        assert calls.declared == [(A, KEY, expires), (C, KEY, expires)]

    asyncio.run(main())


def test_messages_are_schema_checked_and_bounded():
    message = Declaration(KEY, 12.5, [(A.to_base58(), 13.0)])
    back = Declaration.FromString(message.SerializeToString())
    assert (back.key, back.expiration, back.declared) == (KEY, 12.5, [(A.to_base58(), 13.0)])
    bad = [
        b"[]",
        json.dumps({"k": KEY, "e": 1.0}).encode(),  # a field missing
        json.dumps({"k": 5, "e": 1.0, "d": []}).encode(),
        json.dumps({"k": KEY, "e": "soon", "d": []}).encode(),
        json.dumps({"k": KEY, "e": 1.0, "d": [["x", "y"]]}).encode(),
        json.dumps({"k": KEY, "e": 1.0, "d": [], "x": 1}).encode(),
        b" " * (MAX_MESSAGE_BYTES + 1),
    ]
    for data in bad:
        with pytest.raises(ValueError):
            Declaration.FromString(data)


async def _search(keys: DirectDeclarations, window_s: float, declare_at_s: float | None = None) -> tuple[int, float]:
    """hivemind's leader search over ``keys`` with the queue kept empty, as ``pop_next_leader`` does while it waits:
    (get_averagers calls, seconds until a declaration made at ``declare_at_s`` reached the queue)."""
    leaders = PotentialLeaders(ME, min_matchmaking_time=window_s, target_group_size=4)
    calls = 0
    get = keys.get_averagers

    async def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await get(*args, **kwargs)

    keys.get_averagers = counted
    leaders.running.set()
    started = get_dht_time()
    leaders.search_end_time = started + window_s
    task = asyncio.create_task(leaders._update_queue_periodically(keys))
    seen_after = float("inf")
    while not task.done():
        if declare_at_s is not None and get_dht_time() - started >= declare_at_s:
            keys.receive(A, Declaration(keys.current_key, started + window_s + 5))
            declare_at_s, declared = None, get_dht_time()
        if seen_after == float("inf") and len(leaders.leader_queue) and declare_at_s is None:
            seen_after = get_dht_time() - declared
        leaders.update_triggered.set()
        await asyncio.sleep(0)
    await task
    return calls, seen_after


@pytest.mark.timeout(30)
def test_the_leader_search_waits_for_a_declaration_instead_of_looping():
    async def main():
        calls, seen_after = await _search(make(Calls(), poll_s=0.2), window_s=1.0, declare_at_s=0.3)
        assert 2 <= calls <= 1.0 / 0.2 + 3  # hivemind re-reads at once while its queue is empty (thousands)
        assert seen_after < 0.1  # a new declaration wakes it: it does not wait out the poll interval

    asyncio.run(main())


@pytest.mark.timeout(10)
def test_in_client_mode_the_search_asks_the_expected_peers_in_turn():
    async def main():
        now = get_dht_time()
        calls = Calls(failing={A}, held=[(B.to_base58(), now + 3), (ME.to_base58(), now + 3), ("bad", now + 3)])
        keys = make(calls, client_mode=True, poll_s=0.01)
        keys.set_members([A.to_base58(), B.to_base58()])
        assert await keys.get_averagers(KEY, only_active=True) == [(B, now + 3)]
        assert calls.asked == [A, B]  # A failed: B answered
        await keys.get_averagers(KEY, only_active=True)
        assert calls.asked == [A, B, A, B]

    asyncio.run(main())


def test_install_replaces_the_key_manager_once_and_keeps_its_bits():
    base = GroupKeyManager(SimpleNamespace(peer_id=ME), "p2pmodel_t", "0110", 4)
    matchmaking = SimpleNamespace(group_key_manager=base, client_mode=False)
    keys = install(matchmaking, Calls().declare, Calls().ask, 1.0)
    assert matchmaking.group_key_manager is keys and keys.current_key == "p2pmodel_t.0b0110"
    assert install(matchmaking, Calls().declare, Calls().ask, 1.0) is keys
