"""Gossip building blocks without a network: frames, bounded state, message verification, config."""

import time

import pytest

from p2pmodel import PROTOCOL_VERSION
from p2pmodel.core import wire
from p2pmodel.core.errors import ConfigError, WireError
from p2pmodel.gossip import frames
from p2pmodel.gossip.config import GossipConfig
from p2pmodel.gossip.limits import PeerRateLimiter, RecentStore, SeenCache, TokenBucket
from p2pmodel.gossip.message import Refused, make_message, message_id, open_message, peek_kind
from p2pmodel.swarm.identity import Identity

MAX = 64 << 10


@pytest.fixture(scope="module")
def alice():
    return Identity.generate()


@pytest.mark.timeout(10)
def test_frames_round_trip_and_refusals():
    ids = [bytes([i]) * 32 for i in range(3)]
    cases = [
        ("push", {"msgs": [b"a", b"bc"]}),
        ("ihave", {"ids": ids}),
        ("iwant", {"ids": ids[:1]}),
        ("sync", {"kind": None, "limit": 10}),
        ("sync", {"kind": "vote", "limit": 1}),
    ]
    for t, body in cases:
        assert frames.decode(frames.encode(t, body), MAX, frames.REQUESTS) == frames.Frame(t, body)
    bad = [
        b"",
        b"\xc1",
        wire.pack([1, 2]),
        wire.pack({"v": PROTOCOL_VERSION + 1, "t": "push", "b": {"msgs": []}}),
        frames.encode("ack", {}),  # an answer is not a request
        frames.encode("push", {"msgs": [b""]}),
        frames.encode("push", {"msgs": "x"}),
        frames.encode("ihave", {"ids": []}),
        frames.encode("ihave", {"ids": [b"short"]}),
        frames.encode("ihave", {"ids": ids * 400}),  # over MAX_IDS
        frames.encode("sync", {"kind": None, "limit": 0}),
        frames.encode("sync", {"kind": None, "limit": True}),
        frames.encode("sync", {"kind": 3, "limit": 1}),
        frames.encode("sync", {"kind": None, "limit": 1, "extra": 1}),
        b"\xd4\x01\x00",  # a msgpack extension type
        frames.encode("push", {"msgs": [b"x" * (MAX + 1)]}),  # frame over the limit
    ]
    for data in bad:
        with pytest.raises(WireError):
            frames.decode(data, MAX, frames.REQUESTS)


@pytest.mark.timeout(10)
def test_pack_msgs_respects_the_frame_bound():
    msgs = [b"x" * 1000] * 50
    frame, n = frames.pack_msgs("push", msgs, 10_000)
    assert 0 < n < 10 and len(frame) <= 10_000
    assert frames.decode(frame, 10_000, frames.REQUESTS).body["msgs"] == msgs[:n]
    frame, n = frames.pack_msgs("push", [b"y" * 20_000], 10_000)  # one always goes (caller bounds its size)
    assert n == 1


@pytest.mark.timeout(10)
def test_token_buckets_and_per_peer_limits():
    bucket = TokenBucket(rate=10, burst=5)
    now = time.monotonic()
    assert all(bucket.take(1, now) for _ in range(5)) and not bucket.take(1, now)
    assert bucket.take(1, now + 0.11)
    limiter = PeerRateLimiter(1, 3, 1000, 1500)
    assert all(limiter.allow("a", 1, 10) for _ in range(3))
    assert not limiter.allow("a", 1, 10)
    assert limiter.allow("b", 1, 10)  # another peer has its own buckets
    assert not limiter.allow("b", 1, 2000)  # byte bucket short: message tokens refunded
    assert limiter.allow("b", 2, 10)


@pytest.mark.timeout(10)
def test_seen_cache_is_bounded_and_expires():
    seen = SeenCache(max_entries=3, ttl_s=60)
    for i in range(5):
        seen.add(bytes([i]))
    assert len(seen) == 3 and bytes([0]) not in seen and bytes([4]) in seen
    short = SeenCache(10, ttl_s=0.01)
    short.add(b"x")
    time.sleep(0.02)
    assert b"x" not in short


class _M:
    def __init__(self, kind, size, t):
        self.kind, self.data, self.signed_time = kind, b"x" * size, t


@pytest.mark.timeout(10)
def test_recent_store_bounds():
    now = time.time()
    store = RecentStore(max_messages=3, max_bytes=1000, max_age_s=100)
    for i in range(4):
        store.add(bytes([i]), _M("vote" if i % 2 else "tag", 10, now))
    assert len(store) == 3 and store.get(bytes([0])) is None
    assert store.recent_ids(None, 10) == [bytes([3]), bytes([2]), bytes([1])]
    assert store.recent_ids("vote", 10) == [bytes([3]), bytes([1])]
    assert store.recent_ids(None, 1) == [bytes([3])]
    store.add(b"big", _M("tag", 990, now))  # the byte bound evicts the oldest
    assert sum(len(m.data) for _, m in store.items()) <= 1000
    store.add(b"old", _M("tag", 1, now - 200))
    assert store.get(b"old") is None or b"old" not in store.recent_ids(None, 10)


@pytest.mark.timeout(10)
def test_message_verification_order(alice):
    data = make_message(alice, "vote", {"run": "r1"})
    msg = open_message(data, "vote", MAX, 600, 60, None)
    assert msg.signer == alice.peer_id and msg.body["run"] == "r1" and msg.msg_id == message_id(data).hex()
    assert peek_kind(data, MAX) == "vote"

    outer = wire.open_envelope(data, "vote")
    mallory = Identity.generate()

    def reseal(**changes):
        return wire.envelope("vote", {**outer, **changes})

    body = wire.unpack(outer["body"])
    tampered = reseal(body=wire.pack({**body, "run": "r2"}))
    forged = reseal(sig=bytes(len(outer["sig"])))
    wrong_key = reseal(pubkey=mallory.public_key_bytes)  # claims alice, carries mallory's key
    for bad in (tampered, forged, wrong_key):
        with pytest.raises(Refused) as info:
            open_message(bad, "vote", MAX, 600, 60, None)
        assert info.value.reason == "bad_signature"
    with pytest.raises(Refused, match="expired"):
        open_message(make_message(alice, "vote", {"time": time.time() - 1000}), "vote", MAX, 600, 60, None)
    with pytest.raises(Refused, match="future"):
        open_message(make_message(alice, "vote", {"time": time.time() + 1000}), "vote", MAX, 600, 60, None)
    with pytest.raises(Refused, match="malformed"):
        open_message(make_message(alice, "vote", {"time": "noon"}), "vote", MAX, 600, 60, None)
    with pytest.raises(Refused, match="oversized"):
        peek_kind(b"x" * (MAX + 1), MAX)
    with pytest.raises(Refused, match="malformed"):
        peek_kind(data[:-5], MAX)


@pytest.mark.timeout(10)
def test_config_bounds():
    assert GossipConfig().max_frame_bytes > GossipConfig().max_message_bytes
    for bad in ({"max_message_bytes": 10}, {"max_message_bytes": 64 << 20}, {"fanout": 0}, {"rpc_timeout_s": 0}):
        with pytest.raises(ConfigError):
            GossipConfig(**bad)
    assert GossipConfig(anti_entropy_interval_s=0, lazy_fanout=0).lazy_fanout == 0


@pytest.mark.timeout(10)
def test_direct_kinds_go_once_to_every_peer_and_are_not_forwarded():
    from types import SimpleNamespace

    from p2pmodel.gossip.gossip import spread_targets

    cfg = GossipConfig(fanout=2, lazy_fanout=1, eager_push_max_bytes=100)
    peers = ["a", "b", "c", "d"]
    small, big = SimpleNamespace(data=b"x" * 50), SimpleNamespace(data=b"x" * 500)
    assert spread_targets(peers, small, True, True, cfg) == (peers, [])  # the publisher: one push to each
    assert spread_targets(peers, small, False, False, cfg) == ([], [])  # a receiver of a "direct" frame: nobody
    assert spread_targets(peers, small, False, True, cfg) == (["a", "b"], ["c"])  # otherwise the flood
    assert spread_targets(peers, big, True, True, cfg) == ([], ["a", "b"])  # large messages are announced
    assert frames.decode(frames.encode("direct", {"msgs": [b"m"]}), MAX, frames.REQUESTS).type == "direct"
    with pytest.raises(ConfigError):
        GossipConfig(direct_max_peers=-1)
    with pytest.raises(ConfigError):
        GossipConfig(anti_entropy_max_ids=0)
