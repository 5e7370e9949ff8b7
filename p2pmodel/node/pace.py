"""The round's pace: when each round closed and who is in it, as this peer learned it.

A peer that finishes its inner phase announces "ready" for the round: the round closes for everyone, and the
peers that announced are the round's participants. It is pushed straight to every peer (gossip, ``direct``: ~5 KB
on the wire in all at 4 peers, against ~17 KB flooded and ~20 KB for the DHT store that used to follow every
push); only a push that fails is stored in the DHT, which the watcher reads every ``poll_s`` while a round is
open (~5 KB a read). A push lost on the way is repaired by gossip's anti-entropy; a peer that never hears of it
trains its H steps and joins the round's group then.

A peer that stops cleanly announces a signed "leave", so the others neither wait for it in matchmaking nor in the
commit step. A peer that starts (or restarts) announces "join" for the round it will train first, so the others
expect it in that round's group instead of assembling without it a moment before it arrives.

``RoundCloses`` keeps only rounds just ahead of the last commit: "ready" messages are signed but any member
may send them, for any round number, so an unbounded map would be memory a stranger could fill. The leave
list is bounded the same way."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from p2pmodel.core.errors import P2PModelError
from p2pmodel.swarm.keys import JOIN_KIND, LEAVE_KIND, READY_KIND, ready_key
from p2pmodel.swarm.records import get_signed, publish_signed

log = logging.getLogger("p2pmodel.pace")
ROUNDS_AHEAD = 4  # a peer further behind than this re-syncs its state before it trains that round anyway
MAX_READY_PER_ROUND = 1024
MAX_LEFT = 1024


class RoundCloses:
    def __init__(self, rounds_ahead: int = ROUNDS_AHEAD):
        self.rounds_ahead = rounds_ahead
        self._since: dict[int, float] = {}  # round -> time.monotonic() when it closed here
        self._who: dict[int, set[str]] = {}  # round -> peers that announced ready for it
        self._joining: dict[int, set[str]] = {}  # round -> peers that announced they join in it
        self._lock = threading.Lock()  # the gossip handler, the DHT poller and the round loop all write

    def mark(self, round_: int, committed: int, peer: str | None = None) -> bool:
        """``round_`` closed (``peer`` announced it); ``committed`` is this peer's last committed round (older
        entries are dropped).

        Returns whether ``round_`` is near enough to ``committed`` (either side) to be worth passing on to peers:
        the gossip handler refuses the rest, so a "ready" for an absurd round stops at the first honest hop."""
        with self._lock:
            self._forget(committed)
            if committed < round_ <= committed + self.rounds_ahead:
                self._since.setdefault(round_, time.monotonic())
                who = self._who.setdefault(round_, set())
                if peer is not None and len(who) < MAX_READY_PER_ROUND:
                    who.add(peer)
        return committed - self.rounds_ahead < round_ <= committed + self.rounds_ahead

    def mark_joining(self, round_: int, committed: int, peer: str) -> bool:
        """``peer`` joins the swarm in ``round_`` (it does not close the round); same window as ``mark``."""
        with self._lock:
            self._forget(committed)
            if committed < round_ <= committed + self.rounds_ahead:
                who = self._joining.setdefault(round_, set())
                if len(who) < MAX_READY_PER_ROUND:
                    who.add(peer)
        return committed - self.rounds_ahead < round_ <= committed + self.rounds_ahead

    def _forget(self, committed: int) -> None:
        for r in [r for r in (*self._since, *self._joining) if r <= committed]:
            self._since.pop(r, None)
            self._who.pop(r, None)
            self._joining.pop(r, None)

    def joining(self, round_: int) -> frozenset[str]:
        """The peers known to join in ``round_``."""
        with self._lock:
            return frozenset(self._joining.get(round_, ()))

    def announcers(self) -> frozenset[str]:
        """Every peer that announced ready for, or joining in, a round still kept (just ahead of the commit)."""
        with self._lock:
            return frozenset().union(*self._who.values(), *self._joining.values())

    def __contains__(self, round_: int) -> bool:
        return round_ in self._since

    def closed_for(self, round_: int) -> float | None:
        """Seconds since ``round_`` closed, None while it is open."""
        since = self._since.get(round_)
        return None if since is None else time.monotonic() - since

    def ready(self, round_: int) -> frozenset[str]:
        """The peers known to have announced ready for ``round_``."""
        with self._lock:
            return frozenset(self._who.get(round_, ()))

    def __len__(self) -> int:
        return len(self._since)


class Pace:
    """Owns the "ready"/"leave" traffic of one run: the gossip handlers and the DHT fallback poller (a thread).

    ``committed()`` returns this peer's last committed round (read from the round loop's snapshot)."""

    def __init__(
        self,
        dht,
        gossip,
        identity,
        run_id: str,
        committed: Callable[[], int],
        poll_s: float,
        ready_ttl_s: float,
        in_background: Callable[[Callable[[], object]], object] = lambda job: job(),
    ):
        self.dht, self.gossip, self.identity, self.run_id = dht, gossip, identity, run_id
        self._in_background = in_background  # DHT stores off the round's critical path
        self._committed, self._poll_s, self._ready_ttl_s = committed, poll_s, ready_ttl_s
        self.closes = RoundCloses()
        self._left: collections.OrderedDict[str, float] = collections.OrderedDict()  # peer -> monotonic time
        self._left_lock = threading.Lock()
        self._watch_round = 0
        self._said_ready = 0  # the last round this peer announced ready for (said once)
        self._stop = threading.Event()
        gossip.subscribe(READY_KIND, self._on_ready, direct=True)
        gossip.subscribe(JOIN_KIND, self._on_join)
        gossip.subscribe(LEAVE_KIND, self._on_leave)
        self._thread = threading.Thread(target=self._watch, name="p2pmodel-pace", daemon=True)
        self._thread.start()

    # --- what this peer says ------------------------------------------------------------------------
    def announce_ready(self, round_: int, timeout_s: float | None = None) -> None:
        """This peer finished its inner phase of ``round_``: gossip push (milliseconds; given up after
        ``timeout_s``, the gossip's own default if None); the DHT if it failed. Said once per round (a second call
        for the same round sends nothing)."""
        if round_ == self._said_ready:
            return
        self._said_ready = round_
        me = self.identity.peer_id
        self.closes.mark(round_, self._committed(), me)
        try:
            self.gossip.publish(READY_KIND, {"run_id": self.run_id, "round": round_}, timeout_s=timeout_s)
            return
        except P2PModelError as e:  # the others see the DHT record at their next poll
            log.warning("could not push ready for round %d: %s", round_, e)
        body = {"peer_id": me, "round": round_, "time": time.time()}
        key = ready_key(self.run_id, round_)
        self._in_background(lambda: publish_signed(self.dht, self.identity, key, READY_KIND, body, self._ready_ttl_s))

    def announce_join(self, round_: int) -> None:
        """This peer (re)starts and will train ``round_``: the others expect it in that round's group."""
        try:
            self.gossip.publish(JOIN_KIND, {"run_id": self.run_id, "round": round_})
        except P2PModelError as e:  # the others assemble without us this round; we are in the next one
            log.debug("could not announce join for round %d: %s", round_, e)

    def announce_leave(self, timeout_s: float = 3.0) -> None:
        """A clean stop: the others stop waiting for this peer at once (best effort, bounded)."""
        try:
            self.gossip.publish(LEAVE_KIND, {"run_id": self.run_id, "round": self._committed()}, timeout_s=timeout_s)
        except P2PModelError as e:
            log.debug("could not announce leave: %s", e)

    # --- what this peer knows -----------------------------------------------------------------------
    def round_closed(self, round_: int, grace_s: float) -> bool:
        """True once another peer finished ``round_`` at least ``grace_s`` ago: stop the inner phase."""
        self._watch_round = round_
        closed_for = self.closes.closed_for(round_)
        return closed_for is not None and closed_for >= grace_s

    def ready(self, round_: int) -> frozenset[str]:
        return self.closes.ready(round_)

    def joining(self, round_: int) -> frozenset[str]:
        return self.closes.joining(round_)

    def heard_from(self) -> frozenset[str]:
        """Peers known to train now: they announced ready or joining for a round near our last commit."""
        return self.closes.announcers() - {self.identity.peer_id}

    def left(self) -> frozenset[str]:
        """Peers that announced a clean stop (and have not announced ready since)."""
        with self._left_lock:
            return frozenset(self._left)

    # --- what the others say ------------------------------------------------------------------------
    def _on_ready(self, msg) -> bool:
        """A gossiped "ready" of this run: that round closes here too (our own push is delivered locally)."""
        return self._on_round_message(msg, self.closes.mark)

    def _on_join(self, msg) -> bool:
        """A gossiped "join": expect its signer in that round's group."""
        return self._on_round_message(msg, self.closes.mark_joining)

    def _on_round_message(self, msg, mark) -> bool:
        """A "ready" or "join" {run_id, round}: its signer is back if it had left; ``mark`` keeps it (False: neither
        kept nor forwarded)."""
        body = msg.body
        if body.get("run_id") != self.run_id or type(body.get("round")) is not int or body["round"] < 1:
            return False
        if msg.signer == self.identity.peer_id:
            return True
        with self._left_lock:
            self._left.pop(msg.signer, None)  # back after a restart
        return mark(body["round"], self._committed(), msg.signer)

    def _on_leave(self, msg) -> bool:
        body = msg.body
        if body.get("run_id") != self.run_id or msg.signer == self.identity.peer_id:
            return msg.signer == self.identity.peer_id
        with self._left_lock:
            self._left.pop(msg.signer, None)
            self._left[msg.signer] = time.monotonic()
            while len(self._left) > MAX_LEFT:
                self._left.popitem(last=False)
        log.info("peer %s left the swarm", msg.signer)
        return True

    def _watch(self) -> None:
        """DHT fallback for a lost gossip push: look for other peers' "ready" of the round being trained."""
        while not self._stop.wait(self._poll_s):
            r = self._watch_round
            if not r or r in self.closes:
                continue
            try:
                ready = get_signed(self.dht, ready_key(self.run_id, r), READY_KIND)
            except Exception as e:  # a DHT hiccup: look again next tick
                log.debug("pace check failed: %s", e)
                continue
            for pid in ready:
                if pid != self.identity.peer_id:
                    self.closes.mark(r, self._committed(), pid)

    def close(self) -> None:
        self._stop.set()
        self.gossip.unsubscribe(READY_KIND)
        self.gossip.unsubscribe(JOIN_KIND)
        self.gossip.unsubscribe(LEAVE_KIND)
        self._thread.join(2.0)
