"""GossipConfig: every limit and deadline of the gossip layer in one validated place."""

from __future__ import annotations

from dataclasses import dataclass, fields

from p2pmodel.core.errors import ConfigError

# hivemind's unary calls ride the daemon's persistent connection, whose messages are capped at 4 MiB
MAX_FRAME_LIMIT_BYTES = 2 << 20
FRAME_OVERHEAD_BYTES = 4096


@dataclass(frozen=True)
class GossipConfig:
    max_message_bytes: int = 256 << 10
    """Hard size limit of one signed message; bigger ones are dropped before decoding."""
    fanout: int = 4
    """Peers a new message is pushed to (small messages) or announced to (large ones)."""
    lazy_fanout: int = 4
    """Further peers that only get the id of a small message (IHAVE), for reliability."""
    eager_push_max_bytes: int = 16 << 10
    """Messages up to this size are pushed whole; larger ones are announced by id and pulled."""
    rpc_timeout_s: float = 5.0
    """Deadline of every call to another peer."""
    max_age_s: float = 600.0
    """Messages signed longer ago (body "time") are refused; the recent store keeps them this long."""
    max_clock_skew_s: float = 60.0
    """Messages stamped further in the future than this are refused."""
    store_max_messages: int = 2048
    """Recent messages kept to serve pulls and sync."""
    store_max_bytes: int = 64 << 20
    """Total bytes of the recent store."""
    seen_max_entries: int = 200_000
    """Bound of the de-duplication cache (ids of accepted and refused messages)."""
    rate_msgs_per_s: float = 200.0
    """Per-peer sustained inbound message rate."""
    burst_msgs: float = 500.0
    """Per-peer inbound message burst (token bucket size)."""
    rate_bytes_per_s: float = 16 << 20
    """Per-peer sustained inbound byte rate."""
    burst_bytes: float = 32 << 20
    """Per-peer inbound byte burst."""
    max_sync_ids: int = 1024
    """Most ids one sync answer carries."""
    anti_entropy_interval_s: float = 10.0
    """Every this often, ask one random peer for recent ids and pull what is missing (0: never)."""
    anti_entropy_max_ids: int = 1024
    """Most ids (the newest) one anti-entropy round asks for: each costs 32 bytes of the answer."""
    direct_max_peers: int = 32
    """Kinds subscribed with ``direct=True``: while its publisher knows at most this many peers, a message is
    pushed to every one of them in a "direct" frame, which receivers do not pass on (a missed push is repaired by
    anti-entropy or a targeted ``catch_up``): one push per peer instead of a flood with duplicates."""
    recent_peer_ttl_s: float = 300.0
    """Peers that talked to us are gossip targets for this long."""
    peers_cache_s: float = 1.0
    """The caller's ``peers()`` is called at most this often."""
    inbox_max_messages: int = 8192
    """Messages waiting for validation; beyond it inbound messages are dropped (counted)."""
    outbox_max_items: int = 4096
    """Per-peer queue of messages/ids waiting to be sent; beyond it they are dropped (counted)."""
    protocol: str = "/p2pmodel/gossip/1"
    """libp2p protocol name of the handler (one Gossip per DHT and protocol)."""

    def __post_init__(self) -> None:
        limit = MAX_FRAME_LIMIT_BYTES - FRAME_OVERHEAD_BYTES
        if not 1024 <= self.max_message_bytes <= limit:
            raise ConfigError(f"max_message_bytes must be in [1024, {limit}]")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "anti_entropy_interval_s":
                ok = value >= 0
            elif f.name == "protocol":
                ok = isinstance(value, str) and value.startswith("/") and len(value) <= 128
            elif f.name in ("lazy_fanout", "direct_max_peers"):
                ok = isinstance(value, int) and value >= 0
            elif f.name == "anti_entropy_max_ids":
                ok = isinstance(value, int) and 0 < value <= 1024
            else:
                ok = value > 0
            if not ok:
                raise ConfigError(f"gossip config field {f.name} has an invalid value {value!r}")

    @property
    def max_frame_bytes(self) -> int:
        """Largest frame this peer accepts or sends: one message plus envelope overhead."""
        return self.max_message_bytes + FRAME_OVERHEAD_BYTES
