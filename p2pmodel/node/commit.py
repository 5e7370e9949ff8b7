"""The commit step: after the outer step every participant of a round announces the digest it holds; the digest
most of them hold is the round's state, and a peer holding another one re-syncs (DESIGN: "Commit step").

Who counts: the peers that took part in the round (its averaging group, and every peer that announced "ready"
for it, which may have ended in another group), less those that left or are no longer connected. Waiting for
everyone with a live peer record instead made one crashed peer cost every survivor the whole deadline each
round until its record expired (a minute).

How the digests travel: each participant signs a "digest" message {run_id, round, digest, blob, size, patch,
patch_size} and pushes it straight to every peer it knows (gossip, ``direct``); the step waits on what arrives.
The message is also an offer of the state package of that round (blob id, size) and of the round's object
(patch id, size): a peer that must re-sync replays the object, or downloads the package, from a peer that voted
for the winner, without a DHT lookup. Only a step still missing participants after ``fallback_after_s`` falls
back, and keeps at it every ``dht_poll_s``: it pulls the "digest" messages of the missing peers from them (a
lost push), stores its own digest record in the DHT and reads the DHT's (a peer whose gossip does not get
through). Measured on the wire at 4 peers and a bootstrap (benchmarks/control_ops.py): the DHT way cost a store
(~22 KB) per peer and a get (~20 KB) every 0.3 s of waiting; a direct push costs
~1.7 KB per receiving peer."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from p2pmodel.core.errors import P2PModelError
from p2pmodel.core.ids import is_hex64
from p2pmodel.swarm.keys import DIGEST_KIND
from p2pmodel.swarm.records import get_digests, publish_digest

log = logging.getLogger("p2pmodel.commit")
POLL_S = 0.3  # without gossip: how often the DHT is read
LOCAL_POLL_S = 0.05  # with gossip: how often the step looks at what arrived (no network)
FALLBACK_AFTER_S = 4.0
DHT_POLL_S = 2.0
ROUNDS_WINDOW = 4  # digests of rounds this far from the last commit are kept (either side)
MAX_PER_ROUND = 1024
MAX_LATEST = 1024
PULL_IDS = 64  # newest "digest" ids asked of a missing peer (each 32 bytes of its answer)
DIGEST_FIELDS = ("run_id", "round", "digest", "blob", "size", "time")
# the round's object (versioning/round_object.py) the voter serves: a re-sync replays it instead of downloading
# the state; optional, so peers of an earlier release that send none still count
PATCH_FIELDS = ("patch", "patch_size")


def majority(digests: dict[str, str]) -> str | None:
    """The digest held by the most peers; ties go to the smallest digest, so every peer picks the same."""
    if not digests:
        return None
    counts = collections.Counter(digests.values())
    return min(counts, key=lambda d: (-counts[d], d))


def settled(digests: dict[str, str], could_vote: set[str]) -> bool:
    """Whether one digest is already held by more than half of ``could_vote``, counting only their real digests."""
    counts = collections.Counter(d for p, d in digests.items() if p in could_vote and is_hex64(d))
    return bool(counts) and 2 * max(counts.values()) > len(could_vote)


def valid_digest_message(body, run_id: str) -> bool:
    """A "digest" gossip body of ``run_id``: exactly DIGEST_FIELDS, a real digest, a blob id or "", sane numbers."""
    return (
        isinstance(body, dict)
        and set(body) in (set(DIGEST_FIELDS), {*DIGEST_FIELDS, *PATCH_FIELDS})
        and body["run_id"] == run_id
        and type(body["round"]) is int
        and 0 < body["round"] < 2**63
        and is_hex64(body["digest"])
        and (body["blob"] == "" or is_hex64(body["blob"]))
        and type(body["size"]) is int
        and 0 <= body["size"] < 2**63
        and (body.get("patch", "") == "" or is_hex64(body["patch"]))
        and type(body.get("patch_size", 0)) is int
        and 0 <= body.get("patch_size", 0) < 2**63
    )


class DigestBox:
    """The "digest" messages of one run as gossip delivered them (checked by ``valid_digest_message``).

    Kept by round only for rounds near the last commit: anyone may sign a message for any round, so an unbounded
    map would be memory a stranger could fill; and each signer's newest one (its latest state offer, what a late
    joiner looks for), bounded by the number of signers."""

    def __init__(self, window: int = ROUNDS_WINDOW):
        self.window = window
        self._rounds: dict[int, dict[str, dict]] = {}
        self._latest: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._lock = threading.Lock()  # the gossip delivery thread writes, the round thread reads

    def add(self, signer: str, body: dict, committed: int) -> bool:
        """Keep ``signer``'s message; True when its round is near ``committed`` (worth storing and serving)."""
        offer = {"peer_id": signer, **{k: body[k] for k in ("round", "digest", "blob", "size")}}
        offer.update(patch=body.get("patch", ""), patch_size=body.get("patch_size", 0))
        r = offer["round"]
        with self._lock:
            prev = self._latest.get(signer)
            if prev is None or prev["round"] <= r:
                self._latest[signer] = offer
                self._latest.move_to_end(signer)
                while len(self._latest) > MAX_LATEST:
                    self._latest.popitem(last=False)
            for old in [x for x in self._rounds if x <= committed - self.window]:
                del self._rounds[old]
            near = committed - self.window < r <= committed + self.window
            if near:
                per = self._rounds.setdefault(r, {})
                if signer in per or len(per) < MAX_PER_ROUND:
                    per[signer] = offer
        return near

    def digests(self, round_: int) -> dict[str, str]:
        """{signer: digest} of ``round_``."""
        with self._lock:
            return {p: o["digest"] for p, o in self._rounds.get(round_, {}).items()}

    def offers(self, round_: int, digest: str) -> dict[str, dict]:
        """{signer: offer} of the peers that announced ``digest`` for ``round_`` with a package to serve."""
        with self._lock:
            return {p: dict(o) for p, o in self._rounds.get(round_, {}).items() if o["digest"] == digest and o["blob"]}

    def latest(self) -> list[dict]:
        """Each signer's newest offer that names a package."""
        with self._lock:
            return [dict(o) for o in self._latest.values() if o["blob"]]


@dataclass(frozen=True)
class Agreement:
    """How a round's commit step ended."""

    winner: str  # the digest every participant holds after it
    committed_by: list[str] = field(default_factory=list)  # the peers whose digests decided it (this one included)
    missing: list[str] = field(default_factory=list)  # participants waited for until the deadline, in vain
    # how this peer reached the winner when it held another digest (node/swarm_link.py): "replay" (the round's
    # object), "download" (the state), "catch-up" (the swarm's latest round instead), "failed"; "" when it held it
    resync: str = ""
    winner_votes: int = 0  # how many voters held the winner (this peer included when it did)


class CommitStep:
    """The commit step of one run. With ``gossip``, digests are pushed and the DHT is the fallback (module doc);
    without, every digest goes through the DHT, read every POLL_S. ``committed()`` is this peer's last committed
    round (it bounds what the "digest" handler keeps)."""

    def __init__(
        self,
        dht,
        identity,
        run_id: str,
        ttl_s: float,
        gossip=None,
        committed: Callable[[], int] = lambda: 0,
        fallback_after_s: float = FALLBACK_AFTER_S,
        dht_poll_s: float = DHT_POLL_S,
    ):
        self.dht, self.identity, self.run_id, self.ttl_s = dht, identity, run_id, ttl_s
        self.gossip, self._committed = gossip, committed
        self.fallback_after_s, self.dht_poll_s = fallback_after_s, dht_poll_s
        self.box = DigestBox()
        self.fallbacks = 0  # commit steps that needed the fallback (tests, metrics)
        self._early: tuple[int, str, threading.Thread, list[bool]] | None = None  # vote_early's push
        if gossip is not None:
            gossip.subscribe(DIGEST_KIND, self._on_digest, direct=True)

    def _on_digest(self, msg) -> bool:
        if not valid_digest_message(msg.body, self.run_id):
            return False
        return self.box.add(msg.signer, msg.body, self._committed())

    def vote_early(self, round_: int, digest: str, offer: dict) -> None:
        """Push our vote for ``round_`` now, before ``agree`` (the overlapped schedule knows its state mid-phase):
        the others' commit steps find it there. On a thread: a push can stall on a saturated link (seconds)."""
        pushed = [False]

        def push() -> None:
            pushed[0] = self._push(round_, digest, offer)
            if not pushed[0]:
                self._store(round_, digest)

        thread = threading.Thread(target=push, name="p2pmodel-vote", daemon=True)
        self._early = (round_, digest, thread, pushed)
        thread.start()

    def voted(self, round_: int, digest: str) -> bool:
        """Whether ``vote_early`` cast this vote (``agree`` then needs no offer: the pushed vote carried it)."""
        return self._early is not None and self._early[:2] == (round_, digest)

    def _cast(self, round_: int, digest: str, offer: dict | None, deadline: float) -> bool:
        """Our vote, unless ``vote_early`` cast it (then wait for that push, at most until ``deadline``); True when
        it was pushed (else the DHT carries it)."""
        if self.voted(round_, digest):
            _, _, thread, pushed = self._early
            thread.join(max(deadline - time.monotonic(), 0.0))
            return pushed[0]
        pushed = self._push(round_, digest, offer or {})
        if not pushed:
            self._store(round_, digest)  # without gossip (or when the push failed) the DHT carries our vote
        return pushed

    def close(self) -> None:
        if self.gossip is not None:
            self.gossip.unsubscribe(DIGEST_KIND)

    def agree(
        self,
        round_: int,
        digest: str,
        participants: Callable[[], Iterable[str]],
        eligible: Callable[[], Iterable[str]],
        deadline_s: float,
        former: Callable[[], Iterable[str]] = frozenset,
        offer: dict | None = None,
        vote: bool = True,
    ) -> Agreement:
        """Announce ``digest`` for ``round_`` (with ``offer``: {"blob", "size"} of the package this peer serves for
        it) and wait (at most ``deadline_s``) for the digests of the round's ``participants()`` (re-read while
        waiting: a peer that leaves or disconnects stops being waited for).

        The majority is taken over the digests of every ``eligible()`` peer of the run (and every ``former()`` one,
        which left since) that has announced one by then (participants included), not only those waited for: a
        peer that missed the others' "ready" (it was restarting, or its group failed) still sees the state most of
        them hold, and a last round's majority that stopped right after it still counts. The winner is ours when
        nobody else answered.

        It stops waiting as soon as one digest is held by more than half of everyone who could vote (the
        participants and the eligible peers as known when the step began): no later answer can outvote it. A
        peer that restarted and trained the round alone no longer holds the others up for the whole deadline.

        ``vote=False`` (a peer sitting out, node/sit_out.py): our digest is neither pushed nor stored, only read."""
        me = self.identity.peer_id
        start = time.monotonic()
        deadline = start + deadline_s
        mine = {me: digest} if vote else {}  # a peer sitting out counts the votes as the others do, without its own
        pushed = vote and self._cast(round_, digest, offer, deadline)
        poll_s = POLL_S if self.gossip is None else LOCAL_POLL_S
        fallback_at = start if self.gossip is None else start + self.fallback_after_s
        fell_back = False
        from_dht: dict[str, str] = {}
        live = (set(eligible()) - {me}) | set(mine)
        gone = set(former())
        while True:
            now = time.monotonic()
            if now >= fallback_at:
                expected = set(participants()) | {me}
                missing = sorted(expected - set(self.box.digests(round_)) - set(from_dht) - {me})
                if self.gossip is not None and missing:
                    if not fell_back:
                        fell_back = True
                        self.fallbacks += 1
                        log.info("round %d: no digest yet from %s: asking them, and the DHT", round_, missing[:4])
                        if pushed:
                            _in_thread(lambda: self._store(round_, digest))
                    _in_thread(lambda m=missing: self.gossip.catch_up(DIGEST_KIND, len(m), peers=m, limit=PULL_IDS))
                if self.gossip is None or missing:
                    from_dht = self._read_dht(round_, from_dht)
                fallback_at = now + (poll_s if self.gossip is None else self.dht_poll_s)
            expected = (set(participants()) - {me}) | set(mine)
            digests = {**from_dht, **self.box.digests(round_), **mine}
            if expected <= set(digests) or now >= deadline:
                break
            if settled(digests, live | expected | (gone & set(digests))):
                break
            time.sleep(poll_s)
        # only peers known to be in this run vote, and only with a real digest ("" would send everyone re-syncing);
        # a peer that left after committing this round voted like the others
        voters = expected | set(eligible()) | set(former())
        votes = {p: d for p, d in digests.items() if p in voters and is_hex64(d)}
        missing = sorted(expected - set(digests))
        if missing:
            log.info("round %d: no digest from %d participant(s) in time: %s", round_, len(missing), missing[:4])
        winner = majority(votes) or digest
        return Agreement(winner, sorted(votes), missing, winner_votes=sum(d == winner for d in votes.values()))

    def offers(self, round_: int, digest: str) -> dict[str, dict]:
        """Packages of ``round_``'s state ``digest`` that peers announced with their vote, by peer."""
        return self.box.offers(round_, digest)

    def _push(self, round_: int, digest: str, offer: dict) -> bool:
        if self.gossip is None:
            return False
        body = {
            "run_id": self.run_id,
            "round": round_,
            "digest": digest,
            "blob": offer.get("blob", ""),
            "size": int(offer.get("size", 0)),
            "patch": offer.get("patch", ""),
            "patch_size": int(offer.get("patch_size", 0)),
        }
        try:
            self.gossip.publish(DIGEST_KIND, body)
            return True
        except P2PModelError as e:
            log.warning("could not push our digest for round %d: %s", round_, e)
            return False

    def _store(self, round_: int, digest: str) -> None:
        try:
            publish_digest(self.dht, self.identity, self.run_id, round_, digest, self.ttl_s)
        except Exception as e:  # the others still get our push, or see us missing
            log.debug("digest record store failed: %s", e)

    def _read_dht(self, round_: int, known: dict[str, str]) -> dict[str, str]:
        try:
            return get_digests(self.dht, self.run_id, round_)
        except Exception as e:  # keep what we had
            log.debug("digest read failed: %s", e)
            return known


def _in_thread(job: Callable[[], object]) -> None:
    """Run ``job`` on a daemon thread, its failure logged: the commit step never waits on a slow peer or DHT."""

    def run() -> None:
        try:
            job()
        except Exception as e:
            log.debug("commit step fallback job failed: %s", e)

    threading.Thread(target=run, name="p2pmodel-commit-fallback", daemon=True).start()
