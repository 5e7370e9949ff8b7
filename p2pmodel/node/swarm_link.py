"""The peer's side of the swarm: DHT + identity, the deterministic averager, the round pace, the commit step
(majority digest, re-sync from a peer that holds it) and state offers for late joiners.

DHT keys it uses besides swarm/records.py's: ``p2pmodel/{run}/ready/{round}`` (a peer finished its inner
phase: the round closes for everyone, nobody idles) and ``p2pmodel/{run}/state`` (state offers: round,
params digest and the sha256 of the downloadable package, served by the BlobServer).

A peer still training when the round closes keeps going for ``CLOSE_GRACE`` of the matchmaking window (or until
its H steps are done): the first finisher waits that window for a group anyway, and rounds start a little apart
(commit, eval and DHT work take different times on each peer), so stopping at once cost up to a fifth of a short
round's steps (tests/integration/test_swarm_training.py: 23-27 of 30 steps per peer).

"Ready" is also pushed over gossip, which reaches every peer in milliseconds; the DHT key is the fallback,
polled every ``PACE_POLL_S``. Measured (benchmarks/communication.py, 5 DHT nodes in a network namespace): one
DHT get costs ~5 KB on the wire, one store of a signed record ~24 KB (replicated, traversal, encryption), so
polling every 1.5 s cost more per round than the averaging payload at H=250; a gossip push costs one small
message per peer."""

import collections
import logging
import threading
import time

import torch
from hivemind.compression import CompressionInfo
from hivemind.utils.logging import use_hivemind_log_handler

from p2pmodel.compress import make_codec
from p2pmodel.core.errors import IntegrityError, P2PModelError
from p2pmodel.core.ids import is_hex64, sha256_hex
from p2pmodel.eval.digest import canonical_bytes
from p2pmodel.gossip import Gossip
from p2pmodel.node.exchange import ExchangeOutcome
from p2pmodel.node.pace import RoundCloses
from p2pmodel.node.state_package import pack_state, package_limit, unpack_state
from p2pmodel.swarm.blobs import BlobServer, fetch_blob
from p2pmodel.swarm.keys import HISTORY_KIND, OFFER_KIND, READY_KIND, RUN_KIND, RUNS_KEY
from p2pmodel.swarm.node import start_dht, stop_dht, visible_maddrs
from p2pmodel.swarm.records import (
    get_digests,
    get_signed,
    list_peer_records,
    make_peer_record,
    publish_digest,
    publish_signed,
)
from p2pmodel.swarm.refresher import RecordRefresher
from p2pmodel.sync import DeterministicAverager

log = logging.getLogger("p2pmodel.swarm")
READY, OFFER = READY_KIND, OFFER_KIND
CLOSE_GRACE = 1 / 3  # of sync.matchmaking_time_s: joins the group well inside the window
PACE_POLL_S = 10.0  # DHT fallback for a lost "ready" gossip push (each poll ~5 KB on the wire)
PEER_LIST_CACHE_S = 30.0  # gossip's view of who is online (each refresh ~17 KB on the wire at 4 peers)
_KEEP_PACKAGES = 3


class SwarmLink:
    def __init__(self, cfg, peer, identity):
        self.cfg, self.peer, self.identity = cfg, peer, identity
        s = cfg.swarm
        use_hivemind_log_handler("nowhere")  # hivemind propagates to our root handler (one format, one stream)
        if cfg.logging.level != "debug":
            logging.getLogger("hivemind").setLevel(logging.WARNING)
        self.run_id = peer.run_id
        self.codec = make_codec(cfg.compress.codec, cfg.compress.block_size)
        self._buffers = [torch.zeros_like(p) for p in peer.global_params]
        self.residuals = [torch.zeros_like(p) for p in peer.global_params] if cfg.compress.error_feedback else None
        self.encoded_bytes = sum(len(self.codec.compress(t, _info(t)).SerializeToString()) for t in self._buffers)
        self.packages: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.providers = [self.packages.get, self._stored_state]  # blob id → bytes, first hit wins
        self.commit_hooks: list = []  # called with (round, members) after each commit (releases)
        self._peer_cache: tuple[float, list[str]] = (0.0, [])
        self.samples_per_s = 0.0
        self._closed = RoundCloses()
        self._pace_round = 0
        self._stop = threading.Event()
        self.dht = start_dht(
            identity.path,
            s.initial_peers,
            s.host_maddrs,
            s.announce_maddrs,
            s.client_mode,
            wait_timeout_s=min(s.join_timeout_s, 10.0),
            startup_timeout_s=s.join_timeout_s,
        )
        try:  # whatever fails from here takes down the parts started before it (close skips the rest)
            self.maddrs = visible_maddrs(self.dht)
            self._start_averaging(cfg, s)
            self.blobs = BlobServer(self.dht, self._provide)
            self.gossip = Gossip(self.dht, identity, peers=self.peer_ids)
            self.gossip.subscribe(READY, self._on_ready)
            self.refresher = RecordRefresher(self.dht, identity, self._record, s.record_ttl_s)
        except BaseException:
            self.close()
            raise
        self._pace = threading.Thread(target=self._watch_pace, name="p2pmodel-pace", daemon=True)
        self._pace.start()

    def _start_averaging(self, cfg, s) -> None:
        self.averager = DeterministicAverager(
            self._buffers,
            self.dht,
            prefix=f"p2pmodel_{self.run_id}",
            codec=self.codec,
            error_feedback=cfg.compress.error_feedback,
            target_group_size=cfg.sync.target_group_size,
            min_group_size=cfg.sync.min_group_size,
            min_matchmaking_time=cfg.sync.matchmaking_time_s,
            request_timeout=cfg.sync.request_timeout_s,
            allreduce_timeout=cfg.sync.allreduce_timeout_s,
            next_chunk_timeout=cfg.sync.chunk_timeout_s,
            client_mode=s.client_mode,
            allow_state_sharing=False,  # late joiners use our verified state offers, not hivemind's download
        )

    def _provide(self, blob_id: str) -> bytes | None:
        for provider in self.providers:
            blob = provider(blob_id)
            if blob is not None:
                return blob
        return None

    def _stored_state(self, digest: str) -> bytes | None:
        """States we hold are served by digest as their canonical bytes (sha256 of them == digest)."""
        store = self.peer.store
        try:
            return canonical_bytes(store.get_state(digest)) if store.has_state(digest) else None
        except P2PModelError:
            return None

    def peer_ids(self, max_age_s: float = PEER_LIST_CACHE_S) -> list[str]:
        """Live peers of this run (from their DHT records), cached up to ``max_age_s``; used by gossip."""
        at, ids = self._peer_cache
        if time.monotonic() - at >= (max_age_s if ids else min(max_age_s, 5.0)):  # alone: look again soon
            try:
                records = list_peer_records(self.dht, self.run_id, max_age_s=self.cfg.swarm.record_ttl_s)
                ids = [r["peer_id"] for r in records if r["peer_id"] != self.identity.peer_id]
            except Exception as e:  # keep the last known list
                log.debug("peer list refresh failed: %s", e)
            self._peer_cache = (time.monotonic(), ids)
        return ids

    def publish_run(self) -> None:
        """Register this run under the global key so light clients can find it without a config."""
        history = {
            "peer_id": self.identity.peer_id,
            "run_id": self.run_id,
            "rounds": self.peer.history[-256:],
            "time": time.time(),
        }
        body = {
            "peer_id": self.identity.peer_id,
            "run_id": self.run_id,
            "run_name": self.cfg.run_name,
            "model": self.cfg.model.model_dump(),
            "time": time.time(),
        }
        try:
            ttl = self.cfg.swarm.record_ttl_s * 10
            publish_signed(self.dht, self.identity, RUNS_KEY, RUN_KIND, body, ttl)
            publish_signed(self.dht, self.identity, f"p2pmodel/{self.run_id}/history", HISTORY_KIND, history, ttl)
        except Exception as e:
            log.debug("run record publish failed: %s", e)

    def _record(self) -> dict:
        p = self.peer
        return make_peer_record(self.identity, self.run_id, p.round, self.samples_per_s, p.digest, self.maddrs)

    # --- pace: the round closes for everyone when the first peer finishes its inner phase ---------------
    def _key(self, what: str, round_: int | None = None) -> str:
        return f"p2pmodel/{self.run_id}/{what}" + ("" if round_ is None else f"/{round_}")

    def _watch_pace(self) -> None:
        while not self._stop.wait(PACE_POLL_S):
            r = self._pace_round
            if r and r not in self._closed:
                try:
                    ready = get_signed(self.dht, self._key(READY, r), READY)
                except Exception as e:  # a DHT hiccup: look again next tick
                    log.debug("pace check failed: %s", e)
                    continue
                if any(pid != self.identity.peer_id for pid in ready):
                    self._closed.mark(r, self.peer.round)

    def _on_ready(self, msg) -> bool:
        """A gossiped "ready" of this run: that round closes here too (our own push is delivered locally)."""
        body = msg.body
        if body.get("run_id") != self.run_id or type(body.get("round")) is not int or body["round"] < 1:
            return False
        if msg.signer == self.identity.peer_id:
            return True
        return self._closed.mark(body["round"], self.peer.round)  # False: neither kept nor forwarded

    def round_closed(self, round_: int) -> bool:
        """True once another peer finished ``round_`` at least the grace period ago: stop the inner phase."""
        self._pace_round = round_
        closed_for = self._closed.closed_for(round_)
        return closed_for is not None and closed_for >= CLOSE_GRACE * self.cfg.sync.matchmaking_time_s

    def others_alive(self) -> bool:
        max_age = self.cfg.swarm.record_ttl_s
        records = list_peer_records(self.dht, self.run_id, max_age_s=max_age)
        return any(r["peer_id"] != self.identity.peer_id for r in records)

    # --- exchange -------------------------------------------------------------------------------------
    def average(self, round_: int, delta: list[torch.Tensor], weight: float) -> ExchangeOutcome:
        ttl = self.cfg.sync.allreduce_timeout_s + 60
        publish_signed(
            self.dht,
            self.identity,
            self._key(READY, round_),
            READY,
            {"peer_id": self.identity.peer_id, "round": round_, "time": time.time()},
            ttl,
        )
        self._closed.mark(round_, self.peer.round)
        try:
            self.gossip.publish(READY, {"run_id": self.run_id, "round": round_})
        except P2PModelError as e:  # the others still see the DHT record at their next poll
            log.warning("could not push ready for round %d: %s", round_, e)
        sent = [d + r for d, r in zip(delta, self.residuals, strict=True)] if self.residuals else delta
        with self.averager.get_tensors() as tensors:
            for t, d in zip(tensors, sent, strict=True):
                t.copy_(d)
        if not self.others_alive():
            if self.residuals:
                for r in self.residuals:
                    r.zero_()
            return ExchangeOutcome(mean_delta=sent, reason="no other peer online")
        base = {"round": round_, "base": self.peer.digest}
        timeout = self.cfg.sync.matchmaking_time_s + 2 * self.cfg.sync.request_timeout_s
        log.info("round %d: averaging", round_)
        res = self.averager.step(weight=weight, timeout=timeout, gather=base)
        mixed = res.succeeded and any(v != base for v in res.gathered.values())
        if not res.succeeded or mixed or res.group_size < 2:
            if self.residuals:  # our full compensated delta is applied: nothing left over
                for r in self.residuals:
                    r.zero_()
            reason = "group of another round or state" if mixed else (res.reason or "alone")
            return ExchangeOutcome(mean_delta=sent, reason=reason)
        with self.averager.get_tensors() as tensors:
            mean = [t.clone() for t in tensors]
        if self.residuals:
            for r, fresh in zip(self.residuals, self.averager.residuals, strict=True):
                r.copy_(fresh)
        n = res.group_size
        moved = int(2 * (n - 1) / n * self.encoded_bytes)
        return ExchangeOutcome(
            mean_delta=mean,
            group_size=n,
            members=list(res.peer_ids),
            averaged=True,
            reason="" if res.complete else f"reducers failed: {len(res.failed_reducers)}",
            bytes_sent=moved,
            bytes_received=moved,
        )

    # --- commit step: the digest most members hold is the committed state ------------------------------
    def agree(self, round_: int, outcome: ExchangeOutcome) -> None:
        peer = self.peer
        ttl = self.cfg.swarm.record_ttl_s * 10
        publish_digest(self.dht, self.identity, self.run_id, round_, peer.digest, ttl)
        # everyone online, not just our group: a round that split into two groups must still pick one state
        expected = set(outcome.members) | set(self.peer_ids(max_age_s=0)) | {self.identity.peer_id}
        # a group that formed later may still be averaging: give it a matchmaking window, requests and a stall
        sync = self.cfg.sync
        deadline = time.monotonic() + sync.matchmaking_time_s + 2 * sync.request_timeout_s + 2 * sync.chunk_timeout_s
        digests = get_digests(self.dht, self.run_id, round_)
        while not expected <= set(digests) and time.monotonic() < deadline:
            time.sleep(0.3)
            digests = get_digests(self.dht, self.run_id, round_)
        # only peers known to be in this run vote, and only with a real digest ("" would send everyone re-syncing)
        winner = majority({p: d for p, d in digests.items() if p in expected and is_hex64(d)}) or peer.digest
        if winner != peer.digest:
            log.warning(
                "round %d: this peer holds %s but most peers hold %s: re-syncing", round_, peer.digest[:12], winner[:12]
            )
            self.resync(round_, winner)

    def resync(self, round_: int, digest: str) -> bool:
        """Download round ``round_``'s state ``digest`` from a peer offering it; verified before use."""
        deadline = time.monotonic() + self.cfg.sync.download_timeout_s
        tried: set[str] = {self.identity.peer_id}
        while time.monotonic() < deadline:
            offers = self._offers(round_, digest)
            shapes = {n: tuple(t.shape) for n, t in self.peer.global_state().items()}
            got = download_state(self.dht, offers, shapes, digest, round_, deadline - time.monotonic(), tried)
            if got is not None:
                pid, params, momentum = got
                self.peer.adopt(params, momentum)
                log.info("re-synced round %d state %s from %s", round_, digest[:12], pid)
                return True
            time.sleep(0.5)
        log.error("could not download state %s of round %d in time; keeping ours", digest[:12], round_)
        return False

    def _offers(self, round_: int, digest: str) -> dict[str, dict]:
        offers = get_signed(self.dht, self._key(OFFER), OFFER)
        return {
            pid: o for pid, o in offers.items() if _valid_offer(o) and o["round"] == round_ and o["digest"] == digest
        }

    def after_commit(self, round_: int, samples_per_s: float, members: list[str]) -> None:
        """Serve the committed state to late joiners and refresh our peer record."""
        peer = self.peer
        blob = pack_state(peer.names, peer.global_params, peer.outer.state_dict()["momentum_buffers"], round_)
        blob_id = sha256_hex(blob)
        self.packages[blob_id] = blob
        while len(self.packages) > _KEEP_PACKAGES:
            self.packages.popitem(last=False)
        offer = {
            "peer_id": self.identity.peer_id,
            "round": round_,
            "digest": peer.digest,
            "blob": blob_id,
            "size": len(blob),
            "time": time.time(),
        }
        publish_signed(self.dht, self.identity, self._key(OFFER), OFFER, offer, self.cfg.swarm.record_ttl_s * 10)
        self.samples_per_s = samples_per_s
        self.refresher.refresh_now()
        if round_ % self.cfg.versioning.release_every == 0:  # each publish is two DHT stores (~50 KB on the wire)
            self.publish_run()
        for hook in self.commit_hooks:
            hook(round_, members)

    # --- late join -------------------------------------------------------------------------------------
    def catch_up(self) -> bool:
        """If the swarm is ahead of this peer, adopt its latest committed state (verified)."""
        offers = get_signed(self.dht, self._key(OFFER), OFFER)
        picked = most_offered([o for pid, o in offers.items() if pid != self.identity.peer_id and _valid_offer(o)])
        if picked is None or picked[0] <= self.peer.round:
            return False
        latest, digest = picked
        log.info("swarm is at round %d (this peer: %d): downloading state %s", latest, self.peer.round, digest[:12])
        if self.resync(latest, digest):
            self.peer.round = latest
            return True
        return False

    def close(self) -> None:
        self._stop.set()
        parts = (("gossip", "close"), ("refresher", "stop"), ("blobs", "close"), ("averager", "shutdown"))
        steps = [getattr(getattr(self, part), method) for part, method in parts if hasattr(self, part)]
        for step in (*steps, lambda: stop_dht(self.dht)):
            try:
                step()
            except Exception as e:  # keep closing the rest
                log.debug("shutdown step failed: %s", e)


def download_state(
    dht, offers: dict[str, dict], shapes: dict[str, tuple], digest: str, round_: int, timeout_s: float, tried: set[str]
) -> tuple[str, dict, list] | None:
    """Try the state ``offers`` ({peer_id: offer}) in turn, skipping (and adding to) ``tried``: the first package
    whose bytes match the offer's blob id, whose params hash to ``digest`` and whose round is ``round_`` wins.
    → (peer_id, params by name, momentum), or None when none verified; every rejection is logged."""
    deadline = time.monotonic() + timeout_s
    untried = [pid for pid in offers if pid not in tried]
    for i, pid in enumerate(untried):
        tried.add(pid)
        offer = offers[pid]
        share = (deadline - time.monotonic()) / (len(untried) - i)  # one stalling peer cannot use all the time
        try:
            blob = fetch_blob(dht, pid, offer["blob"], package_limit(shapes), timeout_s=max(1.0, share))
            params, momentum, got_round = unpack_state(blob, shapes, digest)
            if got_round != round_:
                raise IntegrityError(f"package is of round {got_round}, offer said {round_}")
        except P2PModelError as e:
            log.warning("state download from %s rejected: %s", pid, e)
            continue
        return pid, params, momentum
    return None


def majority(digests: dict[str, str]) -> str | None:
    """The digest held by the most peers; ties go to the smallest digest, so every peer picks the same."""
    if not digests:
        return None
    counts = collections.Counter(digests.values())
    return min(counts, key=lambda d: (-counts[d], d))


def most_offered(offers: list[dict]) -> tuple[int, str] | None:
    """The (round, digest) the most peers offer; among equals the latest round, then the smallest digest.

    Each peer has one offer (its last commit), so a single key claiming some far round cannot outvote two peers
    that agree; just after a commit, when peers are split between two rounds, a joiner may take the older one
    and re-syncs at its first commit."""
    support = collections.Counter((o["round"], o["digest"]) for o in offers)
    if not support:
        return None
    return min(support, key=lambda rd: (-support[rd], -rd[0], rd[1]))


def _valid_offer(o: dict) -> bool:
    return (
        isinstance(o, dict)
        and type(o.get("round")) is int
        and 0 < o["round"] < 2**63
        and is_hex64(o.get("digest"))
        and is_hex64(o.get("blob"))
        and isinstance(o.get("peer_id"), str)
    )


def _info(t: torch.Tensor) -> CompressionInfo:
    return CompressionInfo.from_tensor(t)
