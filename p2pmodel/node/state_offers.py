"""State offers: after each commit a peer serves its state (θ_global + outer momentum, one safetensors package); a
late joiner, or a peer that lost the commit step's majority, downloads the state it needs from a peer offering
it and verifies it before use.

Where offers are found: the package of a round is packed before its commit step (``prepare``) and its blob id
rides on the peer's "digest" message (node/commit.py), so a peer that must re-sync asks the peers that voted for
the winner, and a late joiner pulls the latest "digest" messages from two peers. The DHT key
``p2pmodel/{run}/state`` is the fallback, written every third of the offer's lifetime (and after a commit step
that needed its own fallback; node/swarm_link.py), not every round: a store there costs ~28 KB on the wire at 4
peers.

A peer of the round that lost the commit step's majority (its all-reduce missed some parts) first replays the
round's object (versioning/round_object.py), offered with the winners' votes, on its own state of the round
before: at int4 ~0.14 of the package's bytes (0.48 against 6.7 MB for configs/tiny.toml), a few seconds where a
package over a 1 Mbit/s uplink took a minute. The package is the fallback.

Slow links: a download is cut when its peer sends nothing for ``STALL_S``, not at a fixed share of the deadline,
and what arrived is kept (``swarm/blobs.Partial``): the next attempt, to that peer or another offering the same
package, resumes where it stopped. A re-sync gives up ``download_timeout_s`` after it began if no byte arrived in
the last ``STALL_S``, and in any case once the package could have come at ``MIN_RATE_BPS``: 6.7 MB of
configs/tiny.toml state take 54 s at 1 Mbit/s, more than the 40 s share one of three offering peers used to get.
It gives up sooner, after ``NONE_OFFERED_S``, when every peer offering the package refused it (peers keep only
their last few): the caller then takes the swarm's latest state instead."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from p2pmodel.core.errors import IntegrityError, P2PModelError
from p2pmodel.core.ids import is_hex64, sha256_hex
from p2pmodel.node.patch_pull import object_limit
from p2pmodel.node.state_package import pack_state, package_limit, unpack_state
from p2pmodel.swarm.blobs import Partial, fetch_blob
from p2pmodel.swarm.keys import DIGEST_KIND, OFFER_KIND, offers_key
from p2pmodel.swarm.records import get_signed, publish_signed
from p2pmodel.versioning.round_object import decode_round, replay

log = logging.getLogger("p2pmodel.swarm")
KEEP_PACKAGES = 3
# one more is kept while someone downloads it: a re-sync over a slow link (6.7 MB at 1 Mbit/s: 54 s, three rounds
# of a fast swarm) that was cut resumes from the package it started, instead of finding it gone and starting over
MAX_PACKAGES = KEEP_PACKAGES + 1
ASKED_GRACE_S = 120.0
PULL_IDS = 64  # newest "digest" ids a late joiner asks a peer for
STALL_S = 20.0  # a peer that sent nothing for this long is left for the next one offering the package
MIN_RATE_BPS = 32 << 10  # 256 kbit/s: below this a re-sync of a whole package gives up
# a re-sync with no untried peer offering its package for this long gives up at once (its caller then catches up
# to the swarm's latest state): peers keep only their last KEEP_PACKAGES packages, so a peer that fell a few rounds
# behind (e.g. its all-reduce hung) is refused by all of them and used to wait out download_timeout_s for nothing
NONE_OFFERED_S = 8.0


class StateOffers:
    """The packages this peer serves (its last few commits) and the download path for the states it needs."""

    def __init__(self, dht, identity, peer, ttl_s: float, download_timeout_s: float, votes=None):
        """``votes``: the run's CommitStep (its "digest" messages are offers, its gossip pulls them), or None."""
        self.dht, self.identity, self.peer = dht, identity, peer
        self.ttl_s, self.download_timeout_s = ttl_s, download_timeout_s
        self.votes = votes
        self.packages: collections.OrderedDict[str, bytes] = collections.OrderedDict()  # least recently used first
        self.round_objects: collections.OrderedDict[str, bytes] = collections.OrderedDict()  # the last few rounds'
        self._asked: dict[str, float] = {}  # blob id -> time.monotonic() a peer last asked for it
        self._lock = threading.Lock()  # the blob server's worker threads read what the round thread writes
        self._packed: dict[tuple[int, str], tuple[str, int]] = {}  # (round, digest) -> (blob id, size), recent
        self.announced_at: float | None = None  # time.monotonic() of the last offer stored in the DHT

    def prepare(self, round_: int, patch: bytes | None = None) -> dict:
        """Pack the state this peer holds for ``round_`` (before its commit step) and serve it, with ``patch`` (the
        round's object, if any); → {"blob", "size", "patch", "patch_size"}."""
        peer = self.peer
        blob = pack_state(peer.names, peer.global_params, peer.outer.state_dict()["momentum_buffers"], round_)
        blob_id = sha256_hex(blob)
        patch_id = sha256_hex(patch) if patch is not None else ""
        with self._lock:
            self.packages[blob_id] = blob
            self.packages.move_to_end(blob_id)
            self._evict()
            if patch is not None:
                self.round_objects[patch_id] = patch
                while len(self.round_objects) > KEEP_PACKAGES:
                    self.round_objects.popitem(last=False)
        self._packed[(round_, peer.digest)] = (blob_id, len(blob))
        for old in list(self._packed)[:-KEEP_PACKAGES]:
            del self._packed[old]
        return {"blob": blob_id, "size": len(blob), "patch": patch_id, "patch_size": len(patch or b"")}

    def serve(self, blob_id: str) -> bytes | None:
        """The package or round object ``blob_id`` if this peer still holds it (the blob server's provider); asking
        for a package keeps it."""
        with self._lock:
            blob = self.packages.get(blob_id)
            if blob is not None:
                self.packages.move_to_end(blob_id)
                self._asked[blob_id] = time.monotonic()
                return blob
            return self.round_objects.get(blob_id)

    def _evict(self) -> None:
        """Down to KEEP_PACKAGES, least recently used first; up to MAX_PACKAGES while the oldest is being asked for."""
        now = time.monotonic()
        while len(self.packages) > KEEP_PACKAGES:
            oldest = next(iter(self.packages))
            if len(self.packages) <= MAX_PACKAGES and now - self._asked.get(oldest, -ASKED_GRACE_S) < ASKED_GRACE_S:
                break
            self.packages.popitem(last=False)
            self._asked.pop(oldest, None)

    def offer(
        self,
        round_: int,
        in_background: Callable[[Callable[[], object]], object] = lambda job: job(),
        announce: bool = True,
    ) -> None:
        """Serve the state just committed (packed by ``prepare`` unless it changed since: a re-sync) and, if
        ``announce``, store the offer in the DHT (``in_background``)."""
        peer = self.peer
        packed = self._packed.get((round_, peer.digest))
        if packed is None or packed[0] not in self.packages:
            self.prepare(round_)
            packed = self._packed[(round_, peer.digest)]
        if not announce:
            return
        blob_id, size = packed
        body = {
            "peer_id": self.identity.peer_id,
            "round": round_,
            "digest": peer.digest,
            "blob": blob_id,
            "size": size,
            "time": time.time(),
        }
        key = offers_key(peer.run_id)
        self.announced_at = time.monotonic()
        in_background(lambda: publish_signed(self.dht, self.identity, key, OFFER_KIND, body, self.ttl_s))

    def offers(self) -> dict[str, dict]:
        """Valid offers of other peers, by signer."""
        found = get_signed(self.dht, offers_key(self.peer.run_id), OFFER_KIND)
        return {pid: o for pid, o in found.items() if pid != self.identity.peer_id and valid_offer(o)}

    def resync(self, round_: int, digest: str, offers: dict[str, dict] | None = None) -> str:
        """Reach round ``round_``'s state ``digest``: by replaying the round's object on ours of the round before
        (``_replay``), else by downloading it from a peer offering it; verified before use. ``offers``
        ({peer_id: offer}) are tried first (those of the commit step's votes by default), then the DHT's.
        → "replay" or "download", "" when neither worked in time."""
        start = time.monotonic()
        shapes = {n: tuple(t.shape) for n, t in self.peer.global_state().items()}
        soft = start + self.download_timeout_s
        hard = soft + package_limit(shapes) / MIN_RATE_BPS
        progress = Progress()
        tried: set[str] = {self.identity.peer_id}
        if offers is None:
            offers = self.votes.offers(round_, digest) if self.votes is not None else {}
        first = {p: o for p, o in offers.items() if valid_offer(o) and o["round"] == round_ and o["digest"] == digest}
        if self._replay(round_, digest, first, shapes):
            return "replay"
        hoped = start  # when an untried peer last offered the package
        while (now := time.monotonic()) < hard and (now < soft or now - progress.at < STALL_S):
            if first:
                offers, first = first, {}
            else:
                offers = {p: o for p, o in self.offers().items() if o["round"] == round_ and o["digest"] == digest}
            if set(offers) - tried:
                hoped = now
            elif now - max(hoped, progress.at) >= NONE_OFFERED_S:
                log.warning("no peer offers state %s of round %d any more", digest[:12], round_)
                return ""
            got = download_state(self.dht, offers, shapes, digest, round_, hard - now, tried, progress)
            if got is not None:
                pid, params, momentum = got
                self.peer.adopt(params, momentum)
                log.info("re-synced round %d state %s from %s", round_, digest[:12], pid)
                return "download"
            time.sleep(0.5)
        log.error("could not download state %s of round %d in time; keeping ours", digest[:12], round_)
        return ""

    def _replay(self, round_: int, digest: str, offers: dict[str, dict], shapes: dict[str, tuple]) -> bool:
        """Reach round ``round_``'s state ``digest`` from our own state of the round before by replaying the round's
        object, fetched from a peer whose vote offered it (a peer whose all-reduce was partial still holds the
        parent): ~0.14 of the state's bytes at int4 instead of the whole package. False when we hold no package
        of that parent or no offered object replays to ``digest`` (each refusal logged); the caller then downloads
        the state."""
        with_patch = {p: o for p, o in offers.items() if o.get("patch")}
        base = next((k for k in reversed(self._packed) if k[0] == round_ - 1), None)
        if not with_patch or base is None:
            return False
        with self._lock:
            package = self.packages.get(self._packed[base][0])
        if package is None:
            return False
        try:
            params, momentum, _ = unpack_state(package, shapes, base[1])
        except P2PModelError as e:  # our own package: never expected
            log.warning("cannot read our package of round %d: %s", round_ - 1, e)
            return False
        parent_momentum = {n: m for n, m in zip(shapes, momentum, strict=True) if m is not None}
        limit = object_limit(shapes)
        for pid, offer in with_patch.items():
            # as long as the object takes at MIN_RATE_BPS (62 MB at int4 for 124M parameters), cut after STALL_S silent
            size = min(max(int(offer.get("patch_size", 0)), 0), limit)
            try:
                blob = fetch_blob(self.dht, pid, offer["patch"], limit, STALL_S + size / MIN_RATE_BPS, stall_s=STALL_S)
                obj = decode_round(blob, shapes, limit)
                if (obj.run_id, obj.round, obj.child) != (self.peer.run_id, round_, digest):
                    raise IntegrityError(f"round object {offer['patch'][:12]} is not round {round_}'s {digest[:12]}")
                state, moved = replay(params, parent_momentum, obj)
            except P2PModelError as e:
                log.warning("replaying round %d from %s's round object failed: %s", round_, pid, e)
                continue
            self.peer.adopt(state, [moved.get(n) for n in shapes])
            self.peer.keep_round(round_, blob, obj.parent, obj.child)
            log.info("re-synced round %d state %s by replaying %s's round object (%d bytes)", round_, digest[:12],
                     pid, len(blob))  # fmt: skip
            return True
        return False

    def catch_up(self) -> bool:
        """If the swarm is ahead of this peer, adopt its latest committed state (verified)."""
        known = self.known_offers()
        picked = most_offered(list(known.values()))
        if picked is None or picked[0] <= self.peer.round:
            return False
        latest, digest = picked
        log.info("swarm is at round %d (this peer: %d): downloading state %s", latest, self.peer.round, digest[:12])
        chosen = {p: o for p, o in known.items() if (o["round"], o["digest"]) == (latest, digest)}
        if self.resync(latest, digest, chosen):
            self.peer.round = latest
            return True
        return False

    def known_offers(self) -> dict[str, dict]:
        """Each other peer's newest offer: the "digest" messages pulled from two peers (what they committed last)
        and the DHT's offers (written every few minutes), the later round of the two per peer."""
        found: dict[str, dict] = {}
        try:
            found.update(self.offers())
        except Exception as e:  # the gossip side may still answer
            log.debug("reading state offers failed: %s", e)
        if self.votes is not None and self.votes.gossip is not None:
            try:
                self.votes.gossip.catch_up(DIGEST_KIND, 2, limit=PULL_IDS)
            except Exception as e:  # the DHT's offers are the fallback
                log.debug("pulling the latest digests failed: %s", e)
            for o in self.votes.box.latest():
                pid = o["peer_id"]
                if pid != self.identity.peer_id and valid_offer(o) and o["round"] > found.get(pid, {}).get("round", 0):
                    found[pid] = o
        return found


class Progress:
    """One re-sync's downloads: the received prefix of each package (by blob id) and when bytes last arrived."""

    def __init__(self):
        self.partials: dict[str, Partial] = {}
        self.at = time.monotonic()

    def partial(self, blob_id: str) -> Partial:
        return self.partials.setdefault(blob_id, Partial(blob_id))

    def received(self) -> int:
        return sum(len(p.data) for p in self.partials.values())


def download_state(
    dht,
    offers: dict[str, dict],
    shapes: dict[str, tuple],
    digest: str,
    round_: int,
    timeout_s: float,
    tried: set[str],
    progress: Progress | None = None,
) -> tuple[str, dict, list] | None:
    """Try the state ``offers`` ({peer_id: offer}) in turn, skipping (and adding to) ``tried``: the first package
    whose bytes match the offer's blob id, whose params hash to ``digest`` and whose round is ``round_`` wins.
    A peer cut off after sending part of a package stays untried (the next attempt resumes from ``progress``).
    → (peer_id, params by name, momentum), or None when none verified; every rejection is logged."""
    deadline = time.monotonic() + timeout_s
    progress = progress or Progress()
    for pid in [pid for pid in offers if pid not in tried]:
        if time.monotonic() >= deadline:
            break
        offer = offers[pid]
        partial = progress.partial(offer["blob"])
        before = len(partial.data)
        try:
            blob = fetch_blob(
                dht,
                pid,
                offer["blob"],
                package_limit(shapes),
                timeout_s=max(1.0, deadline - time.monotonic()),
                partial=partial,
                stall_s=STALL_S,
            )
            params, momentum, got_round = unpack_state(blob, shapes, digest)
            if got_round != round_:
                raise IntegrityError(f"package is of round {got_round}, offer said {round_}")
        except P2PModelError as e:
            if len(partial.data) > before:
                progress.at = time.monotonic()
                log.info("state download from %s cut at %d bytes (resumable): %s", pid, len(partial.data), e)
            else:
                tried.add(pid)
                log.warning("state download from %s rejected: %s", pid, e)
            continue
        tried.add(pid)
        return pid, params, momentum
    return None


def most_offered(offers: list[dict]) -> tuple[int, str] | None:
    """The (round, digest) the most peers offer; among equals the latest round, then the smallest digest.

    Each peer has one offer (its last commit), so a single key claiming some far round cannot outvote two peers
    that agree; just after a commit, when peers are split between two rounds, a joiner may take the older one
    and re-syncs at its first commit."""
    support = collections.Counter((o["round"], o["digest"]) for o in offers)
    if not support:
        return None
    return min(support, key=lambda rd: (-support[rd], -rd[0], rd[1]))


def valid_offer(o: dict) -> bool:
    return (
        isinstance(o, dict)
        and type(o.get("round")) is int
        and 0 < o["round"] < 2**63
        and is_hex64(o.get("digest"))
        and is_hex64(o.get("blob"))
        and isinstance(o.get("peer_id"), str)
    )
