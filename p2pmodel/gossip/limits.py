"""Bounded in-memory state of a gossip peer: token buckets, the seen-cache, the recent-message store.

All of it is used from one event loop thread only, so none of it takes locks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol


class TokenBucket:
    """Classic token bucket: ``rate`` tokens/s refill up to ``burst``; ``take`` fails when too few remain."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def take(self, amount: float, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True


class PeerRateLimiter:
    """Per-peer message and byte buckets; at most ``max_peers`` tracked (least recently seen evicted)."""

    def __init__(self, msgs_per_s: float, burst_msgs: float, bytes_per_s: float, burst_bytes: float, max_peers=4096):
        self._params = (msgs_per_s, burst_msgs, bytes_per_s, burst_bytes)
        self._peers: OrderedDict[str, tuple[TokenBucket, TokenBucket]] = OrderedDict()
        self._max_peers = max_peers

    def allow(self, peer: str, n_msgs: int, n_bytes: int) -> bool:
        """Charge ``peer``; False (and nothing charged) if either bucket is short."""
        buckets = self._peers.pop(peer, None)
        if buckets is None:
            m_rate, m_burst, b_rate, b_burst = self._params
            buckets = (TokenBucket(m_rate, m_burst), TokenBucket(b_rate, b_burst))
        self._peers[peer] = buckets
        if len(self._peers) > self._max_peers:
            self._peers.popitem(last=False)
        msgs, nbytes = buckets
        now = time.monotonic()
        if not msgs.take(n_msgs, now):
            return False
        if not nbytes.take(n_bytes, now):
            msgs.tokens += n_msgs  # refund: the frame is refused as a whole
            return False
        return True


class SeenCache:
    """Ids seen recently (accepted or refused), bounded by count and by age ``ttl_s``."""

    def __init__(self, max_entries: int, ttl_s: float):
        self._items: OrderedDict[bytes, float] = OrderedDict()
        self.max_entries, self.ttl_s = max_entries, ttl_s

    def __contains__(self, msg_id: bytes) -> bool:
        expiry = self._items.get(msg_id)
        return expiry is not None and expiry > time.monotonic()

    def add(self, msg_id: bytes) -> None:
        now = time.monotonic()
        self._items.pop(msg_id, None)
        self._items[msg_id] = now + self.ttl_s
        while self._items:
            oldest_id, expiry = next(iter(self._items.items()))
            if expiry > now and len(self._items) <= self.max_entries:
                break
            del self._items[oldest_id]

    def discard(self, msg_id: bytes) -> None:
        self._items.pop(msg_id, None)

    def __len__(self) -> int:
        return len(self._items)


class Stored(Protocol):
    """What the store keeps: a verified message (``message.GossipMessage``)."""

    kind: str
    data: bytes
    signed_time: float


class RecentStore:
    """Accepted messages for pulls and sync, newest last, bounded by count, total bytes and age."""

    def __init__(self, max_messages: int, max_bytes: int, max_age_s: float):
        self._items: OrderedDict[bytes, Stored] = OrderedDict()
        self._bytes = 0
        self.max_messages, self.max_bytes, self.max_age_s = max_messages, max_bytes, max_age_s

    def add(self, msg_id: bytes, msg: Stored) -> None:
        if msg_id in self._items:
            return
        self._items[msg_id] = msg
        self._bytes += len(msg.data)
        self._trim()

    def _trim(self) -> None:
        horizon = time.time() - self.max_age_s
        while self._items:
            oldest_id, oldest = next(iter(self._items.items()))
            over = len(self._items) > self.max_messages or self._bytes > self.max_bytes
            if not over and oldest.signed_time >= horizon:
                break
            del self._items[oldest_id]
            self._bytes -= len(oldest.data)

    def get(self, msg_id: bytes) -> Stored | None:
        return self._items.get(msg_id)

    def recent_ids(self, kind: str | None, limit: int) -> list[bytes]:
        """Newest first, at most ``limit``, only ``kind`` unless None."""
        self._trim()
        out, horizon = [], time.time() - self.max_age_s
        for msg_id in reversed(self._items):
            item = self._items[msg_id]
            if (kind is None or item.kind == kind) and item.signed_time >= horizon:
                out.append(msg_id)
                if len(out) >= limit:
                    break
        return out

    def items(self) -> list[tuple[bytes, Stored]]:
        self._trim()
        return list(self._items.items())

    def __len__(self) -> int:
        return len(self._items)
