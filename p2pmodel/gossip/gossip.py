"""Gossip: one object per peer that publishes, validates, delivers and spreads signed messages.

Spreading: a newly accepted message of at most ``eager_push_max_bytes`` is pushed whole to ``fanout`` random
known peers and announced by id (IHAVE) to ``lazy_fanout`` more; a larger one is only announced, and a peer
that lacks it pulls it (IWANT) from an announcer, trying the next announcer if that fails. Votes and tags are
small, so they cost one hop per round trip; big payloads cross each link only when the receiver lacks them.
A pull-based anti-entropy round (``sync``) every ``anti_entropy_interval_s`` and ``catch_up()`` repair what
the random pushes missed and bring late joiners up to date.

Kinds subscribed with ``direct=True`` (the per-round "ready" and "digest") skip the flood while the swarm is
small (``direct_max_peers``): the publisher pushes to every peer it knows in a "direct" frame, whose receivers
keep the message (for pulls) but do not pass it on. Each
unary call through p2pd costs ~0.95 KB on the wire besides the message (benchmarks/control_ops.py), so at 4
peers a flooded 0.75 KB message cost 9 pushes (~17 KB on the wire), a direct one 3 (~5 KB).

Every inbound message goes through: frame size (before decoding), per-peer token buckets, frame schema,
de-duplication (seen-cache), message size, kind subscribed, signature and PeerID, signing time, then the
subscriber's handler, which accepts (True) or rejects. Only accepted messages are stored and forwarded.

Threads: the network side runs on the swarm's background loop (``swarm.aio``); subscriber handlers run on one
delivery thread in arrival order (and, for a message published here, on the publishing thread).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import hivemind

from p2pmodel.core.errors import UsageError, WireError
from p2pmodel.gossip import frames
from p2pmodel.gossip.config import GossipConfig
from p2pmodel.gossip.limits import PeerRateLimiter, RecentStore, SeenCache
from p2pmodel.gossip.message import (
    GossipMessage,
    Refused,
    check_kind,
    make_message,
    message_id,
    open_message,
    peek_kind,
)
from p2pmodel.gossip.outbox import Outbox
from p2pmodel.gossip.transport import Transport
from p2pmodel.swarm.aio import get_loop, get_p2p, run_sync
from p2pmodel.swarm.identity import Identity

logger = logging.getLogger(__name__)

Handler = Callable[[GossipMessage], bool]
"""Validates and takes a message: return True to accept it (it is then stored and forwarded)."""
MAX_PENDING_PULLS = 16_384
MAX_PENDING_PULLS_PER_SOURCE = 2_048  # two sync answers: one announcer cannot take the whole pull backlog
MAX_SOURCES_PER_ID = 4


class Gossip:
    """Epidemic dissemination of signed messages among the peers ``peers()`` names (plus recent talkers).

    Build it after the DHT is up; ``close()`` it before ``dht.shutdown()``. Sync methods are thread-safe;
    the ``a*`` coroutines must run on the swarm loop (``swarm.aio.get_loop()``).
    """

    def __init__(
        self,
        dht: hivemind.DHT,
        identity: Identity,
        peers: Callable[[], Iterable[str]] = tuple,
        config: GossipConfig | None = None,
        start_timeout_s: float = 30.0,
    ):
        self.dht, self.identity, self.config = dht, identity, config or GossipConfig()
        cfg = self.config
        self._peers_fn = peers
        self._handlers: dict[str, Handler] = {}
        self._direct: set[str] = set()  # kinds spread by one push per known peer (small swarms)
        self._counts: Counter[str] = Counter()
        self._drops: Counter[str] = Counter()
        self._seen = SeenCache(cfg.seen_max_entries, cfg.max_age_s + cfg.max_clock_skew_s + 60)
        self._store = RecentStore(cfg.store_max_messages, cfg.store_max_bytes, cfg.max_age_s)
        self._limiter = PeerRateLimiter(cfg.rate_msgs_per_s, cfg.burst_msgs, cfg.rate_bytes_per_s, cfg.burst_bytes)
        self._recent_peers: OrderedDict[str, float] = OrderedDict()
        self._known: tuple[float, list[str]] = (-float("inf"), [])
        self._outboxes: dict[str, Outbox] = {}
        self._pending: dict[bytes, list[str]] = {}  # ids being pulled -> other announcers to try
        self._pulling: Counter[str] = Counter()  # ids each peer is being asked for right now
        self._tasks: set[asyncio.Task] = set()
        self._deliver = ThreadPoolExecutor(1, thread_name_prefix="p2pmodel-gossip-deliver")
        self._closed = False
        self._transport: Transport | None = None
        self._loop = get_loop()
        try:
            run_sync(self._start(), start_timeout_s, "starting gossip")
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- public, sync (any thread)

    @property
    def peer_id(self) -> str:
        """This peer's transport PeerID (the DHT's)."""
        assert self._transport is not None
        return self._transport.peer_id

    def subscribe(self, kind: str, handler: Handler, direct: bool = False) -> None:
        """Deliver verified messages of ``kind`` to ``handler``; it returns True to accept (store, forward).

        Anything else, or an exception, rejects the message: it is neither stored nor forwarded.
        Messages of kinds nobody subscribed to are refused. One handler per kind (a new one replaces it).
        ``direct``: spread it by one push to every known peer, not by a flood (``spread_targets``).
        """
        self._handlers[check_kind(kind)] = handler
        if direct:
            self._direct.add(kind)
        else:
            self._direct.discard(kind)

    def unsubscribe(self, kind: str) -> None:
        self._handlers.pop(kind, None)
        self._direct.discard(kind)

    def publish(self, kind: str, body: dict, timeout_s: float | None = None) -> str:
        """Sign ``body`` (``time`` added if absent), deliver it here, then spread it; returns the msg_id (hex).

        UsageError if this peer's own handler rejects it or it is too large; SwarmError on timeout.
        """
        data, msg = self._prepare_local(kind, body)
        self._deliver_local(msg)
        return run_sync(self._accept_local(msg), timeout_s or self.config.rpc_timeout_s, "publishing")

    def catch_up(
        self,
        kind: str | None = None,
        n_peers: int = 2,
        timeout_s: float | None = None,
        peers: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> int:
        """Ask ``n_peers`` random known peers (or the given ``peers``, at most ``n_peers`` of them) for their
        recent ids (the newest ``limit``), pull what is missing; returns how many were delivered."""
        timeout_s = timeout_s or 3 * self.config.rpc_timeout_s
        chosen = None if peers is None else list(peers)
        return run_sync(self.acatch_up(kind, n_peers, timeout_s, chosen, limit), timeout_s + 1, "catching up")

    def recent(self, kind: str | None = None) -> list[GossipMessage]:
        """Accepted messages still in the recent store, oldest first."""
        return run_sync(self._arecent(kind), self.config.rpc_timeout_s, "listing recent messages")

    def stats(self) -> dict:
        """Counters (delivered, published, pushed, announced, pulled, calls, call_failures) and ``drops`` per
        reason (duplicate, oversized, rate_limited, malformed, bad_signature, expired, unknown_kind, rejected...)."""
        return {**self._counts, "drops": dict(self._drops), "stored": len(self._store)}

    def known_peers(self) -> list[str]:
        """The current gossip targets (``peers()`` plus peers that recently talked to us)."""
        return run_sync(self._known_peers(), self.config.rpc_timeout_s, "listing peers")

    def close(self, timeout_s: float = 10.0) -> None:
        """Unregister the handler, stop every task (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            run_sync(self._aclose(), timeout_s, "closing gossip")
        except Exception as e:
            logger.debug(f"closing gossip: {type(e).__name__}: {e}")
        self._deliver.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Gossip:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- public, async (swarm loop)

    async def apublish(self, kind: str, body: dict) -> str:
        data, msg = await self._loop.run_in_executor(None, self._prepare_local, kind, body)
        await self._loop.run_in_executor(self._deliver, self._deliver_local, msg)
        return await self._accept_local(msg)

    async def acatch_up(
        self,
        kind: str | None = None,
        n_peers: int = 2,
        timeout_s: float = 15.0,
        peers: list[str] | None = None,
        limit: int | None = None,
    ) -> int:
        if kind is not None:
            check_kind(kind)
        if peers is None:
            peers = await self._known_peers()
            chosen = random.sample(peers, min(n_peers, len(peers)))
        else:
            me = self._transport.peer_id
            chosen = [p for p in dict.fromkeys(peers) if p != me and self._transport.parse_peer(p)][:n_peers]
        results = await asyncio.gather(*(self._sync_from(p, kind, wait=True, limit=limit) for p in chosen))
        futures = [f for fs in results for f in fs]
        if not futures:
            return 0
        done, _ = await asyncio.wait(futures, timeout=timeout_s)
        return sum(isinstance(f.result(), GossipMessage) for f in done)

    async def handle_frame(self, frame: bytes, remote: str) -> bytes:
        """The request handler: frame from ``remote`` in, answer out; never raises (drops are counted)."""
        try:
            return await self._handle(frame, remote)
        except Exception:
            self._drop("internal_error")
            logger.warning(f"gossip request from {remote[:64]} failed", exc_info=True)
            return frames.encode("error", {"reason": "internal error"})

    # ---------------------------------------------------------------- lifecycle

    async def _start(self) -> None:
        self._inbox: asyncio.Queue = asyncio.Queue(self.config.inbox_max_messages)
        self._transport = Transport(await get_p2p(self.dht), self.config.protocol)
        await self._transport.register(self.handle_frame)
        self._spawn(self._ingest_loop())
        if self.config.anti_entropy_interval_s > 0:
            self._spawn(self._anti_entropy_loop())

    async def _aclose(self) -> None:
        if self._transport is not None:
            try:
                await self._transport.unregister()
            except Exception as e:
                logger.debug(f"removing the gossip handler: {type(e).__name__}: {e}")
        tasks = list(self._tasks) + [o.task for o in self._outboxes.values() if o.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------- accepting messages

    def _prepare_local(self, kind: str, body: dict) -> tuple[bytes, GossipMessage]:
        cfg = self.config
        try:
            data = make_message(self.identity, kind, body)
        except (TypeError, ValueError) as e:
            raise UsageError(f"cannot publish {kind!r}: {e}") from None
        if len(data) > cfg.max_message_bytes:
            raise UsageError(f"{kind} message of {len(data)} bytes exceeds the limit of {cfg.max_message_bytes}")
        msg = open_message(data, kind, cfg.max_message_bytes, cfg.max_age_s, cfg.max_clock_skew_s, None)
        return data, msg

    def _deliver_local(self, msg: GossipMessage) -> None:
        handler = self._handlers.get(msg.kind)
        if handler is None:
            raise UsageError(f"no subscriber for {msg.kind!r} on this peer; subscribe before publishing")
        if handler(msg) is not True:
            raise UsageError(f"this peer's own {msg.kind!r} handler rejected the message")

    async def _accept_local(self, msg: GossipMessage) -> str:
        mid = bytes.fromhex(msg.msg_id)
        if mid not in self._seen:
            self._seen.add(mid)
            self._counts["published"] += 1
            await self._stored_and_forwarded(mid, msg)
        return msg.msg_id

    async def _ingest_loop(self) -> None:
        while True:
            data, source, future, relay = await self._inbox.get()
            try:
                result: GossipMessage | Refused = await self._ingest(data, source, relay)
            except Refused as refused:
                result = refused
                self._drop(refused.reason)
            except Exception:
                result = Refused("internal_error")
                self._drop("internal_error")
                logger.warning("gossip ingest failed", exc_info=True)
            if future is not None and not future.done():
                future.set_result(result)

    def _enqueue(
        self, data: bytes, source: str, want_result: bool = False, relay: bool = True
    ) -> asyncio.Future | None:
        future = asyncio.get_running_loop().create_future() if want_result else None
        try:
            self._inbox.put_nowait((data, source, future, relay))
        except asyncio.QueueFull:
            self._drop("inbox_full")
            return None
        return future

    async def _ingest(self, data: bytes, source: str | None, relay: bool = True) -> GossipMessage:
        cfg = self.config
        if len(data) > cfg.max_message_bytes:
            raise Refused("oversized")
        mid = message_id(data)
        self._pending.pop(mid, None)
        if mid in self._seen:
            raise Refused("duplicate")
        self._seen.add(mid)  # accepted or refused, the same bytes are never examined twice
        kind = peek_kind(data, cfg.max_message_bytes)
        handler = self._handlers.get(kind)
        if handler is None:
            raise Refused("unknown_kind", kind[:64])
        msg = open_message(data, kind, cfg.max_message_bytes, cfg.max_age_s, cfg.max_clock_skew_s, source)
        verdict = await self._loop.run_in_executor(self._deliver, _call_handler, handler, msg)
        if verdict is not True:
            raise Refused("handler_error" if verdict is None else "rejected")
        self._counts["delivered"] += 1
        await self._stored_and_forwarded(mid, msg, relay)
        return msg

    async def _stored_and_forwarded(self, mid: bytes, msg: GossipMessage, relay: bool = True) -> None:
        self._store.add(mid, msg)
        known = await self._known_peers()
        targets = [p for p in known if p not in (msg.source, msg.signer)]
        random.shuffle(targets)
        small_swarm = len(known) <= self.config.direct_max_peers
        direct = relay and msg.source is None and msg.kind in self._direct and small_swarm
        pushes, ihaves = spread_targets(targets, msg, direct, relay, self.config)
        for peer in pushes:
            self._outbox(peer).put_push(msg.data, relay=not direct)
        for peer in ihaves:
            self._outbox(peer).put_ihave(mid)

    # ---------------------------------------------------------------- the request handler

    async def _handle(self, data: bytes, remote: str) -> bytes:
        cfg = self.config
        if len(data) > cfg.max_frame_bytes:  # before a single byte is decoded
            self._drop("oversized")
            return frames.encode("error", {"reason": "oversized"})
        if not self._limiter.allow(remote, 1, len(data)):  # every frame: one token and its bytes
            self._drop("rate_limited")
            return frames.encode("error", {"reason": "rate limited"})
        try:
            frame = frames.decode(data, cfg.max_frame_bytes, frames.REQUESTS)
        except WireError:
            self._drop("malformed")
            return frames.encode("error", {"reason": "malformed"})
        self._note_peer(remote)
        if frame.type in ("push", "direct"):
            for m in frame.body["msgs"]:  # and one token per message (bytes were charged with the frame)
                if not self._limiter.allow(remote, 1, 0):
                    self._drop("rate_limited")
                else:
                    self._enqueue(m, remote, relay=frame.type == "push")
            return frames.encode("ack", {})
        if frame.type == "ihave":
            self._want(frame.body["ids"], remote)
            return frames.encode("ack", {})
        if frame.type == "iwant":
            found = [s.data for s in map(self._store.get, frame.body["ids"][: frames.MAX_MSGS]) if s is not None]
            return frames.pack_msgs("msgs", found, cfg.max_frame_bytes)[0] if found else _NO_MSGS
        limit = min(frame.body["limit"], cfg.max_sync_ids)
        return frames.encode("ids", {"ids": self._store.recent_ids(frame.body["kind"], limit)})

    # ---------------------------------------------------------------- pulling

    def _want(self, ids: list[bytes], source: str) -> list[bytes]:
        """Start pulling the ``ids`` we lack from ``source`` (remembering it as an alternative if a pull of
        that id already runs). Returns the ids newly requested."""
        new = []
        for mid in ids:
            if mid in self._seen:
                continue
            alternatives = self._pending.get(mid)
            if alternatives is not None:
                if len(alternatives) < MAX_SOURCES_PER_ID and source not in alternatives:
                    alternatives.append(source)
            elif len(self._pending) < MAX_PENDING_PULLS and self._pulling[source] + len(new) < (
                MAX_PENDING_PULLS_PER_SOURCE
            ):
                self._pending[mid] = []
                new.append(mid)
            else:
                self._drop("pull_backlog")
        if new:
            self._pulling[source] += len(new)
            self._spawn(self._fetch(source, new))
        return new

    async def _fetch(self, peer: str, ids: list[bytes], futures: list | None = None) -> None:
        """Pull ``ids`` from ``peer`` in frames of at most MAX_MSGS; hand misses to the next announcer.

        The caller has counted ``ids`` in ``_pulling[peer]``; this releases them."""
        remaining = list(ids)
        try:
            while remaining:
                batch = remaining[: frames.MAX_MSGS]
                answer = await self._call(peer, frames.encode("iwant", {"ids": batch}), ("msgs", "error"))
                if answer is None or answer.type != "msgs":
                    break
                asked, got = set(batch), set()
                for m in answer.body["msgs"]:
                    mid = message_id(m)
                    if mid not in asked or mid in got:
                        self._drop("unrequested")
                        continue
                    got.add(mid)
                    self._pending.pop(mid, None)
                    self._counts["pulled"] += 1
                    future = self._enqueue(m, peer, want_result=futures is not None)
                    if future is not None and futures is not None:
                        futures.append(future)
                if not got:
                    break
                remaining = [m for m in remaining if m not in got]
        finally:
            self._pulling[peer] -= len(ids)
            if self._pulling[peer] <= 0:
                del self._pulling[peer]
            retry: dict[str, list[bytes]] = defaultdict(list)
            for mid in remaining:
                alternatives = self._pending.pop(mid, None)
                if alternatives and mid not in self._seen:
                    self._pending[mid] = alternatives[1:]
                    retry[alternatives[0]].append(mid)
            if not self._closed:
                for other, mids in retry.items():
                    self._pulling[other] += len(mids)
                    self._spawn(self._fetch(other, mids))

    async def _sync_from(
        self, peer: str, kind: str | None, wait: bool = False, limit: int | None = None
    ) -> list[asyncio.Future]:
        """Ask ``peer`` for its (``limit``) recent ids and pull the ones we lack (awaited when ``wait``)."""
        limit = max(1, min(limit or self.config.max_sync_ids, self.config.max_sync_ids, frames.MAX_IDS))
        answer = await self._call(peer, frames.encode("sync", {"kind": kind, "limit": limit}), ("ids", "error"))
        if answer is None or answer.type != "ids":
            return []
        if not wait:
            self._want(answer.body["ids"], peer)
            return []
        missing = [m for m in answer.body["ids"] if m not in self._seen and m not in self._pending]
        for mid in missing:
            self._pending[mid] = []
        futures: list[asyncio.Future] = []
        if missing:
            self._pulling[peer] += len(missing)
            await self._fetch(peer, missing, futures)
        return futures

    async def _anti_entropy_loop(self) -> None:
        interval = self.config.anti_entropy_interval_s
        while True:
            await asyncio.sleep(interval * random.uniform(0.75, 1.25))
            try:
                peers = await self._known_peers()
                if peers:
                    await self._sync_from(random.choice(peers), None, limit=self.config.anti_entropy_max_ids)
            except Exception as e:
                logger.debug(f"gossip anti-entropy round failed: {type(e).__name__}: {e}")

    # ---------------------------------------------------------------- peers and calls

    async def _known_peers(self) -> list[str]:
        cfg, now = self.config, time.monotonic()
        stamp, cached = self._known
        if now - stamp > cfg.peers_cache_s:
            try:
                listed = await asyncio.wait_for(
                    self._loop.run_in_executor(None, lambda: list(self._peers_fn())), cfg.rpc_timeout_s
                )
                cached = [p for p in listed if isinstance(p, str)]
            except Exception as e:
                self._counts["peers_errors"] += 1
                logger.debug(f"peers() failed: {type(e).__name__}: {e}")
            self._known = (now, cached)
        while self._recent_peers and next(iter(self._recent_peers.values())) < now - cfg.recent_peer_ttl_s:
            self._recent_peers.popitem(last=False)
        me, transport = self._transport.peer_id, self._transport
        return [p for p in dict.fromkeys([*cached, *self._recent_peers]) if p != me and transport.parse_peer(p)]

    def _note_peer(self, peer: str) -> None:
        self._recent_peers.pop(peer, None)
        self._recent_peers[peer] = time.monotonic()
        if len(self._recent_peers) > 256:
            self._recent_peers.popitem(last=False)

    def _outbox(self, peer: str) -> Outbox:
        outbox = self._outboxes.get(peer)
        if outbox is None:
            if len(self._outboxes) > 1024:  # forget idle ones
                self._outboxes = {p: o for p, o in self._outboxes.items() if not o.idle}
            outbox = Outbox(peer, self._send, self.config.outbox_max_items, self.config.max_frame_bytes, self._add)
            self._outboxes[peer] = outbox
        return outbox

    def _add(self, counter: str, n: int) -> None:
        if counter.endswith("_full"):
            self._drops[counter] += n
        else:
            self._counts[counter] += n

    async def _send(self, peer: str, frame: bytes) -> bool:
        answer = await self._call(peer, frame, ("ack", "error"))
        return answer is not None and answer.type == "ack"

    async def _call(self, peer: str, frame: bytes, allowed: tuple[str, ...]) -> frames.Frame | None:
        """One request with the configured deadline; None (counted) on any failure."""
        cfg = self.config
        try:
            answer = await self._transport.call(peer, frame, cfg.rpc_timeout_s)
            self._counts["calls"] += 1
            return frames.decode(answer, cfg.max_frame_bytes, allowed)
        except asyncio.CancelledError:
            raise
        except WireError:
            self._drop("malformed_answer")
        except Exception as e:
            self._counts["call_failures"] += 1
            logger.debug(f"gossip call to {peer[:16]} failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
        return None

    def _drop(self, reason: str) -> None:
        self._drops[reason] += 1

    async def _arecent(self, kind: str | None) -> list[GossipMessage]:
        return [m for _, m in self._store.items() if kind is None or m.kind == kind]  # type: ignore[misc]


_NO_MSGS = frames.encode("msgs", {"msgs": []})


def spread_targets(
    targets: list[str], msg: GossipMessage, direct: bool, relay: bool, cfg: GossipConfig
) -> tuple[list[str], list[str]]:
    """Whom to push ``msg`` to and whom to announce it to (IHAVE), from the shuffled ``targets`` (known peers less
    its source and signer).

    ``relay=False`` (it came in a "direct" frame): nobody. ``direct`` (a small message this peer publishes, of a
    kind subscribed ``direct``, in a swarm of at most ``cfg.direct_max_peers``): a push to every target, in a
    "direct" frame. Otherwise the flood: a small message is pushed to ``fanout`` targets and announced to
    ``lazy_fanout`` more, a large one announced to ``fanout``."""
    if not relay:
        return [], []
    eager = len(msg.data) <= cfg.eager_push_max_bytes
    if direct and eager:
        return list(targets), []
    if eager:
        return targets[: cfg.fanout], targets[cfg.fanout : cfg.fanout + cfg.lazy_fanout]
    return [], targets[: cfg.fanout]


def _call_handler(handler: Handler, msg: GossipMessage) -> bool | None:
    """True / False from the subscriber; None when it raised (logged)."""
    try:
        return handler(msg) is True
    except Exception:
        logger.warning(f"gossip handler for {msg.kind!r} raised on {msg.msg_id[:12]}", exc_info=True)
        return None
