"""Matchmaking without the DHT: a peer declares itself for a round's group straight to the peers it expects there.

hivemind's matchmaking finds its leader through the DHT: each averager stores a declaration ("I look for a group
under this key until time t") under the round's group key, and polls that key for the others'. Measured
(benchmarks/control_calls.py, 4 peers): those stores and gets were 2.4 DHT operations per peer per round, ~6 RPCs
each among 5 nodes, ~3/4 of a round's DHT traffic and ~58 KB on a peer's link, against an issue target of 20 KB
for all control traffic. Yet the node knows who should be in the round's group (the last round's members and
whoever announced "ready", node/swarm_link.py): it hands that list to the averager, and ``DirectDeclarations``
sends each declaration to those peers in one small unary call each, keeps the declarations it receives in a
table, and answers hivemind's leader search from that table. The rest of hivemind's matchmaking (leaders and
followers, ``rpc_join_group``, expirations, group keys) is unchanged.

- A declaration from a peer we did not declare to (it knows us, we did not know it) is answered with ours, so
  either side's list suffices.
- The leader search waits for a new declaration (or ``LEADER_POLL_S``) instead of re-reading in a loop
  (hivemind 1.1.12 re-queries at once whenever its leader queue is empty, which on the DHT was ~1.4 MB/s).
- A withdrawal ("no longer looking") sends nothing: a declaration lives one matchmaking window under its round's
  key, and a leader refuses a late join request at once (another key, or no longer looking).
- A peer in client mode serves no requests, so nothing can be pushed to it: its leader search asks one expected
  peer at a time for the declarations it holds (``rpc_declarations``), every ``LEADER_POLL_S``.

Everything received is bounded and checked before use (``Declaration.FromString``, ``receive``); the sender is
the libp2p peer of the call, never a field of the message, so no peer can declare for another, and one peer holds
declarations under ``MAX_KEYS_PER_PEER`` keys at most (``_make_room``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hivemind.averaging.key_manager import GroupKey, GroupKeyManager, is_valid_group
from hivemind.p2p import PeerID
from hivemind.utils.timed_storage import get_dht_time

log = logging.getLogger(__name__)

LEADER_POLL_S = 0.5  # a follower learns of a leader no later than this even if a declaration was lost
MAX_MESSAGE_BYTES = 64 * 1024
MAX_KEYS = 16  # group keys held at once (one per round: only the rounds at hand)
MAX_KEYS_PER_PEER = 3  # keys one peer holds a declaration under (the rounds at hand: this one, the next)
MAX_PER_KEY = 1024  # declarations held under one key
MAX_AHEAD_S = 600.0  # a declaration expiring later than this is refused (windows are seconds long)


class Declaration:
    """One wire message of this module (duck-typed as a protobuf for hivemind's P2P: ``FromString`` /
    ``SerializeToString``): ``key`` and ``expiration`` (a declaration or a request for declarations), or
    ``declared`` (an answer: [[peer id base58, expiration], ...]). JSON, schema-checked, at most 64 KB."""

    def __init__(self, key: str = "", expiration: float = 0.0, declared: Sequence[tuple[str, float]] = ()):
        self.key, self.expiration, self.declared = key, float(expiration), [(p, float(e)) for p, e in declared]

    def SerializeToString(self) -> bytes:  # noqa: N802 (protobuf's name)
        return json.dumps({"k": self.key, "e": self.expiration, "d": self.declared}, separators=(",", ":")).encode()

    @classmethod
    def FromString(cls, data: bytes) -> Declaration:  # noqa: N802 (protobuf's name)
        if len(data) > MAX_MESSAGE_BYTES:
            raise ValueError(f"declaration message of {len(data)} bytes")
        raw = json.loads(data)
        if not isinstance(raw, dict) or set(raw) != {"k", "e", "d"}:
            raise ValueError("malformed declaration message")
        key, expiration, declared = raw["k"], raw["e"], raw["d"]
        if not isinstance(key, str) or len(key) > 256 or not isinstance(expiration, (int, float)):
            raise ValueError("malformed declaration message")
        if not isinstance(declared, list) or len(declared) > MAX_PER_KEY:
            raise ValueError("malformed declaration message")
        pairs = []
        for item in declared:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and len(item[0]) <= 128):
                raise ValueError("malformed declaration message")
            if not isinstance(item[1], (int, float)):
                raise ValueError("malformed declaration message")
            pairs.append((item[0], float(item[1])))
        return cls(key, float(expiration), pairs)


def parse_peer_id(text: str) -> PeerID:
    """A base58 libp2p peer id (a sha256 or identity multihash); ValueError otherwise."""
    raw = PeerID.from_base58(text).to_bytes()
    if len(raw) < 3 or raw[0] not in (0x00, 0x12) or raw[1] != len(raw) - 2:
        raise ValueError(f"not a peer id: {text!r}")
    return PeerID(raw)


# (peer, message, timeout) -> the peer's answer; raises on any failure
Call = Callable[[PeerID, Declaration, float], Awaitable[Declaration]]


class DirectDeclarations(GroupKeyManager):
    """hivemind's ``GroupKeyManager`` over direct calls to the expected peers instead of the DHT (module doc).

    ``declare(peer, message, timeout)`` sends our declaration to ``peer``'s ``rpc_declare``; ``ask(peer, message,
    timeout)`` asks ``peer``'s ``rpc_declarations`` (client mode). ``members`` is set before each search."""

    def __init__(
        self,
        base: GroupKeyManager,
        declare: Call,
        ask: Call,
        client_mode: bool,
        request_timeout: float,
        poll_s: float = LEADER_POLL_S,
    ):
        super().__init__(base.dht, base.prefix, base.group_bits, base.target_group_size)
        self._declare, self._ask, self._client_mode = declare, ask, client_mode
        self._timeout, self._poll_s = request_timeout, poll_s
        self.members: tuple[PeerID, ...] = ()
        self._held: dict[GroupKey, dict[PeerID, float]] = {}  # the others' declarations, by key
        self._mine: dict[GroupKey, tuple[float, set[PeerID]]] = {}  # our declaration and whom it went to
        self._changed = asyncio.Event()
        self._next_asked = 0

    def set_members(self, peer_ids: Sequence[str]) -> None:
        """The peers expected in the coming round's group (base58 peer ids); this peer and bad ids are left out."""
        members = []
        for text in peer_ids:
            try:
                peer = parse_peer_id(text)
            except Exception:
                log.debug("not a peer id: %r", text)
                continue
            if peer != self.peer_id and peer not in members:
                members.append(peer)
        self.members = tuple(members)

    async def declare_averager(
        self, group_key: GroupKey, peer_id: PeerID, expiration_time: float, looking_for_group: bool = True
    ) -> bool:
        if not looking_for_group:  # a withdrawal: nothing is sent (module doc)
            self._mine.pop(group_key, None)
            return True
        targets = set(self.members)
        self._mine[group_key] = (expiration_time, targets)
        self._mine = dict(list(self._mine.items())[-MAX_KEYS:])
        await asyncio.gather(*(self._send(peer, group_key, expiration_time) for peer in targets))
        return True

    async def _send(self, peer: PeerID, group_key: GroupKey, expiration: float) -> None:
        try:
            await self._declare(peer, Declaration(group_key, expiration), self._timeout)
        except Exception as e:  # gone, or in client mode: it finds us by asking, or not at all this round
            log.debug("declaration to %s failed: %s: %s", peer, type(e).__name__, e)

    def receive(self, peer: PeerID, message: Declaration) -> bool:
        """Keep ``peer``'s declaration if it is one of ours (our prefix, a live expiration); answer with our own
        declaration under that key if we did not send it to ``peer``. Returns whether it was kept."""
        key, expiration, now = message.key, message.expiration, get_dht_time()
        ours = key.startswith(f"{self.prefix}.0b") and is_valid_group(key)
        if not ours or peer == self.peer_id or not math.isfinite(expiration):
            return False
        if not now < expiration <= now + MAX_AHEAD_S:
            return False
        self._forget_expired(now)
        held = self._held.get(key)
        if held is not None and peer not in held and len(held) >= MAX_PER_KEY:
            return False
        if held is None or peer not in held:
            self._make_room(peer, key)
            held = self._held.setdefault(key, {})
        held[peer] = expiration
        self._changed.set()
        mine = self._mine.get(key)
        if mine is not None and peer not in mine[1]:
            mine[1].add(peer)
            asyncio.create_task(self._send(peer, key, mine[0]))
        return True

    def held(self, group_key: GroupKey) -> list[tuple[PeerID, float]]:
        """Live declarations under ``group_key``: the others' and ours."""
        now = get_dht_time()
        out = [(peer, t) for peer, t in self._held.get(group_key, {}).items() if t > now]
        mine = self._mine.get(group_key)
        if mine is not None and mine[0] > now:
            out.append((self.peer_id, mine[0]))
        return out

    async def get_averagers(self, group_key: GroupKey, only_active: bool) -> list[tuple[PeerID, float]]:
        if self._client_mode:
            await self._pull(group_key)
        elif not self._changed.is_set():
            try:
                await asyncio.wait_for(self._changed.wait(), self._poll_s)
            except TimeoutError:
                pass
        self._changed.clear()
        return self.held(group_key)

    async def _pull(self, group_key: GroupKey) -> None:
        """Client mode: ask the next expected peer for the declarations it holds under ``group_key``."""
        await asyncio.sleep(self._poll_s if self._next_asked else 0.0)
        for _ in range(len(self.members)):
            peer = self.members[self._next_asked % len(self.members)]
            self._next_asked += 1
            try:
                answer = await self._ask(peer, Declaration(group_key), self._timeout)
            except Exception as e:
                log.debug("asking %s for declarations failed: %s: %s", peer, type(e).__name__, e)
                continue
            for text, expiration in answer.declared:
                try:
                    self.receive(parse_peer_id(text), Declaration(group_key, expiration))
                except Exception:
                    continue
            return

    def answer(self, message: Declaration) -> Declaration:
        """What ``rpc_declarations`` returns: the live declarations under the asked key."""
        return Declaration(message.key, 0.0, [(peer.to_base58(), t) for peer, t in self.held(message.key)])

    def _make_room(self, peer: PeerID, key: GroupKey) -> None:
        """Before ``peer`` declares under ``key``, where it holds none: drop its declaration that expires first if it
        holds ``MAX_KEYS_PER_PEER``, and, for a new key, the key with the fewest declarations (never the one we look
        under) if the table holds ``MAX_KEYS``. So one member cannot crowd a round out with made-up rounds: its own
        displace each other, and a round the swarm declares under holds more declarations than any made-up one."""
        own = sorted((t, key) for key, held in self._held.items() for p, t in held.items() if p == peer)
        for _, old in own[: max(0, len(own) - MAX_KEYS_PER_PEER + 1)]:
            del self._held[old][peer]
        for empty in [k for k, held in self._held.items() if not held]:
            del self._held[empty]
        while key not in self._held and len(self._held) >= MAX_KEYS:
            fewest = min((k for k in self._held if k != self.current_key), key=lambda k: len(self._held[k]))
            del self._held[fewest]

    def _forget_expired(self, now: float) -> None:
        for key in [k for k, held in self._held.items() if all(t <= now for t in held.values())]:
            del self._held[key]


def install(matchmaking: Any, declare: Call, ask: Call, request_timeout: float) -> DirectDeclarations:
    """Put a ``DirectDeclarations`` in place of ``matchmaking``'s (a hivemind ``Matchmaking``) group key manager,
    once; returns it."""
    keys = matchmaking.group_key_manager
    if not isinstance(keys, DirectDeclarations):
        keys = DirectDeclarations(keys, declare, ask, matchmaking.client_mode, request_timeout)
        matchmaking.group_key_manager = keys
    return keys
