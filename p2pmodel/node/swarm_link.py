"""The peer's side of the swarm, one part per job, wired here: the DHT (this class owns it), the deterministic
averager, the round pace (``pace.py``), the commit step (``commit.py``), state offers for late joiners and
re-syncs (``state_offers.py``) and the peer record. ``run_round`` sees it through the ``Exchange`` protocol
(``exchange.py``). docs/architecture.md describes the parts, the round and who owns which thread.

A peer still training when the round closes keeps going for ``CLOSE_GRACE`` of the matchmaking window (or until
its H steps are done): rounds start a little apart (commit, eval and DHT work take different times on each
peer), so stopping at once cost up to a fifth of a short round's steps.

The group of a round forms as soon as the peers expected in it are in (those of the last round that are still
connected and did not leave, plus any that announced "ready" for this round); the matchmaking window is only
the upper bound, for a peer that crashed since the last round or a straggler.

"Ready" is pushed over gossip, which reaches every peer in milliseconds; the DHT key is the fallback, polled
every ``PACE_POLL_S``. Measured (benchmarks/communication.py, 5 DHT nodes in a network namespace): one DHT get
costs ~5 KB on the wire, one store of a signed record ~24 KB, so polling every 1.5 s cost more per round than
the averaging payload at H=250; a gossip push costs one small message per peer."""

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from hivemind.compression import CompressionInfo
from hivemind.utils.logging import use_hivemind_log_handler

from p2pmodel.aggregate.guard import NormGuard
from p2pmodel.compress import make_codec
from p2pmodel.core.errors import P2PModelError
from p2pmodel.core.ids import sha256_hex
from p2pmodel.eval.digest import canonical_bytes
from p2pmodel.gossip import Gossip, GossipConfig
from p2pmodel.node.broadcast import Broadcast
from p2pmodel.node.commit import Agreement, CommitStep
from p2pmodel.node.exchange import ExchangeOutcome
from p2pmodel.node.pace import Pace
from p2pmodel.node.sit_out import SitOut, misses
from p2pmodel.node.state_offers import StateOffers
from p2pmodel.swarm.blobs import BlobServer, fetch_blob
from p2pmodel.swarm.connections import connected_peers
from p2pmodel.swarm.listen import expand_wildcards
from p2pmodel.swarm.node import DEFAULT_HOST_MADDRS, start_dht, stop_dht, visible_maddrs
from p2pmodel.swarm.records import get_digests, list_peer_records, make_peer_record
from p2pmodel.swarm.refresher import RecordRefresher
from p2pmodel.swarm.serial_dht import serialize_calls
from p2pmodel.sync import DeterministicAverager
from p2pmodel.versioning.round_object import on_grid

log = logging.getLogger("p2pmodel.swarm")
CLOSE_GRACE = 1 / 3  # of sync.matchmaking_time_s: joins the group well inside the window
READY_PUSH_TIMEOUT_S = 1.0  # how long the training thread waits for a "ready" push before the DHT fallback
PACE_POLL_S = 60.0  # DHT fallback for a "ready" whose push failed (each poll ~5 KB on the wire)
MAX_ADDRS = 32  # a peer record carries at most this many (swarm/records.py)
# test-only: rounds ("3,5") whose all-reduce mean this peer corrupts, as if a part's reply never came (the
# integration test of a re-sync by replay); never set in use
LOSE_PART_ENV = "P2PMODEL_TEST_LOSE_PART"
# test-only: rounds ("1,2") whose group this peer misses, as if its link were too slow for any to form in time
MISS_ROUNDS_ENV = "P2PMODEL_TEST_MISS_ROUNDS"
# measured (benchmarks/links.py --slow-link 3=10): a DHT node behind a slow link answers the others' matchmaking
# lookups seconds late, and their groups failed to form even while it sat out; as a DHT client it asks, never answers
CLIENT_MODE_HINT = "; on a link much slower than the others', set swarm.client_mode = true"
# a DHT node that has not answered in this long is skipped (and hivemind blacklists it for a while): with 10 s, a
# peer behind a 0.1 Mbit/s uplink held every matchmaking lookup of the others past their 5 s window
DHT_RPC_TIMEOUT_S = 3.0
PEER_LIST_CACHE_S = 300.0  # gossip's view of who is online (each refresh ~22 KB on the wire at 4 peers); gossip
# also targets the peers that talked to it lately, and the round engine checks connections itself
PEER_LIST_FRESH_S = 30.0  # ... refreshed this often instead after a change (or the start) until it holds for
PEER_LIST_SETTLE_S = 120.0  # this long: "ready" and "digest" are pushed to the listed peers only (no flood)


@dataclass(frozen=True)
class Committed:
    """What background work (record refresher, pace, gossip handlers) may read of the peer: replaced whole
    after each commit, never mutated, so a reader never sees a round with another round's digest."""

    round: int
    digest: str
    samples_per_s: float = 0.0


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
        self.committed = Committed(peer.round, peer.digest)
        self._lose_part = _rounds_from_env(LOSE_PART_ENV)
        self._miss_rounds = _rounds_from_env(MISS_ROUNDS_ENV)
        self.sit_out = SitOut()  # rounds this peer leaves to the others while its link cannot keep up
        # fire-and-forget DHT stores (ready fallback, state offers, run records), in order, off the round's path
        self._publisher = Publisher()
        self.commit_hooks: list = []  # called with (round, members, contributions) after each commit (releases)
        self._peer_cache: tuple[float, list[str]] = (0.0, [])
        self._peers_changed_at = time.monotonic()  # the DHT's peer list changed (or this peer started) then
        self._last_members: list[str] = []  # the last commit step's voters and the participants it did not wait for
        self._settled: tuple[int, str] = (0, "")  # (round r + 1, the digest round r's commit step settled on)
        self.dht = serialize_calls(
            start_dht(
                identity.path,
                s.initial_peers,
                s.host_maddrs,
                s.announce_maddrs,
                s.client_mode,
                wait_timeout_s=min(s.join_timeout_s, 10.0),
                startup_timeout_s=s.join_timeout_s,
                rpc_timeout_s=DHT_RPC_TIMEOUT_S,
                use_relay=s.use_relay,
                use_auto_relay=s.use_auto_relay,
                relays=s.relays,
            )
        )
        try:  # whatever fails from here takes down the parts started before it (close skips the rest)
            announced = visible_maddrs(self.dht)  # libp2p names loopback and the default route's interface only
            wildcards = s.host_maddrs or list(DEFAULT_HOST_MADDRS)
            self.maddrs = announced if s.announce_maddrs else expand_wildcards(wildcards, announced)[:MAX_ADDRS]
            if cfg.sync.mode == "allreduce":
                self._start_averaging(cfg, s)  # before any thread touches the DHT: the averager process is forked
            # anti-entropy (a sync call ~1 KB + 32 bytes per id) repairs lost pushes; the commit step pulls itself
            quiet = GossipConfig(anti_entropy_interval_s=60.0, anti_entropy_max_ids=64)
            self.gossip = Gossip(self.dht, identity, peers=self.peer_ids, config=quiet)
            ready_ttl = cfg.sync.allreduce_timeout_s + 60
            self.pace = Pace(
                self.dht, self.gossip, identity, self.run_id, self._round, PACE_POLL_S, ready_ttl, self._in_background
            )
            self.commit = CommitStep(self.dht, identity, self.run_id, s.record_ttl_s * 10, self.gossip, self._round)
            self.offers = StateOffers(
                self.dht, identity, peer, s.record_ttl_s * 10, cfg.sync.download_timeout_s, votes=self.commit
            )
            # blob id → bytes, first hit wins; round objects and momentum blobs make patches between versions
            self.providers = [self.offers.serve, self._stored_state, peer.patches.get]
            if cfg.model.kind == "hf":  # light clients fetch it to write a pulled version transformers can load
                self.providers.append(_file_provider(cfg.model.hf_config_path))
            if cfg.sync.mode == "broadcast":
                self.broadcast = Broadcast(
                    self.gossip,
                    identity,
                    self.run_id,
                    self.codec,
                    [tuple(p.shape) for p in peer.global_params],
                    fetch=lambda pid, blob, limit, t: fetch_blob(self.dht, pid, blob, limit, timeout_s=t),
                    method=cfg.sync.aggregator,
                    committed=self._round,
                    max_norm_ratio=cfg.sync.max_norm_ratio,
                )
                self.providers.append(self.broadcast.serve)
            self.blobs = BlobServer(self.dht, self._provide)
            self._fell_back = False  # the last commit step needed the DHT: offer our state there too
            self._run_published_at: float | None = None  # time.monotonic() of the last run record
            self._committed_once = False  # this process committed a round (its records were stored since)
            self.refresher = RecordRefresher(self.dht, identity, self._record, s.record_ttl_s)
        except BaseException:
            self.close()
            raise

    def _start_averaging(self, cfg, s) -> None:
        self.guard = NormGuard()  # the all-reduce safety net
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

    def _round(self) -> int:
        return self.committed.round

    def _in_background(self, job) -> None:
        self._publisher.submit(job)

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

    # --- who is online ------------------------------------------------------------------------------
    def peer_ids(self, max_age_s: float = PEER_LIST_CACHE_S) -> list[str]:
        """Live peers of this run (DHT records, cached up to ``max_age_s``, and the peers that announced ready or
        joining for the rounds at hand), less those that announced leaving."""
        at, ids = self._peer_cache
        now = time.monotonic()
        if not ids:  # alone: look again soon
            period = min(max_age_s, 5.0)
        elif now - self._peers_changed_at < PEER_LIST_SETTLE_S:  # it changed lately: more may be coming
            period = min(max_age_s, PEER_LIST_FRESH_S)
        else:
            period = max_age_s
        if now - at >= period:
            try:
                records = list_peer_records(self.dht, self.run_id, max_age_s=self.cfg.swarm.record_ttl_s)
                fresh = [r["peer_id"] for r in records if r["peer_id"] != self.identity.peer_id]
                if set(fresh) != set(ids):
                    self._peers_changed_at = now
                ids = fresh
            except Exception as e:  # keep the last known list
                log.debug("peer list refresh failed: %s", e)
            self._peer_cache = (time.monotonic(), ids)
        if not hasattr(self, "pace"):
            return ids
        gone, heard = self.pace.left(), self.pace.heard_from()
        return [p for p in ids if p not in gone] + sorted(heard - gone - set(ids))

    def expected_group(self, round_: int) -> set[str]:
        """Who should average in ``round_``: the last round's peers still connected and not gone, those that
        announced ready for it or that they join in it, and this peer; before any round, every peer with a live
        record."""
        me, left = self.identity.peer_id, self.pace.left()
        if self._last_members:
            connected = connected_peers(self.dht)
            before = {p for p in self._last_members if connected is None or p in connected}
        else:
            before = set(self.peer_ids(max_age_s=0))
        return (before | self.pace.ready(round_) | self.pace.joining(round_) | {me}) - (left - {me})

    def participants(self, round_: int, outcome: ExchangeOutcome) -> set[str]:
        """Whose digest the commit step waits for: the round's group and whoever announced ready for it, less
        those that left or whose connection is gone (a crashed peer's p2pd dies with it). A peer that did not
        average this round (it just joined, or its group failed) cannot know who did: it waits for every live
        peer of the run that is still connected."""
        who = set(outcome.members) | self.pace.ready(round_)
        if not outcome.averaged:
            who |= set(self.peer_ids())  # cached: this is re-read while the commit step waits
        # and those that said they join a later round (one sitting out says so a round ahead, node/sit_out.py)
        who -= self.pace.left() | self.pace.joining(round_ + 1) | self.pace.joining(round_ + 2)
        connected = connected_peers(self.dht)
        if connected is not None:
            who &= connected
        return who | {self.identity.peer_id}

    # --- Exchange ------------------------------------------------------------------------------------
    def round_closed(self, round_: int) -> bool:
        """True once another peer finished ``round_`` at least the grace period ago, or already committed it (a
        peer that started or caught up while the others were finishing the round): stop the inner phase."""
        grace_s = CLOSE_GRACE * self.cfg.sync.matchmaking_time_s
        return self.pace.round_closed(round_, grace_s) or self._committed_by_others(round_) or self._swarm_past(round_)

    def sits_out(self, round_: int) -> bool:
        """While sitting out, and at least two others train: if they are gone, this peer trains alone after all."""
        return self.sit_out.sits_out(round_) and len(self.peer_ids()) >= 2

    def vote(self, round_: int, patch: bytes | None) -> None:
        """Push our vote for ``round_`` before the commit step (Exchange.vote); a peer sitting out casts none."""
        if self.sit_out.sits_out(round_):
            return
        self.commit.vote_early(round_, self.peer.digest, self.offers.prepare(round_, patch))

    def phase_done(self, round_: int) -> None:
        if self.sit_out.sits_out(round_):
            return
        # on the training thread (overlap): a push that stalls (a peer behind a saturated link measured 5 s, the
        # gossip's default timeout) gives way to the DHT in the background after READY_PUSH_TIMEOUT_S
        self.pace.announce_ready(round_, timeout_s=READY_PUSH_TIMEOUT_S)

    def average(self, round_: int, delta: list[torch.Tensor], weight: float) -> ExchangeOutcome:
        sent = [d + r for d, r in zip(delta, self.residuals, strict=True)] if self.residuals else delta
        if self.sit_out.sits_out(round_):  # the others do not expect us (we said "leave"): no "ready", no group
            why = f"sitting out until round {self.sit_out.until}: this peer's exchange could not keep up"
            return replace(self._alone(sent, weight, why), sat_out=True)
        self.pace.announce_ready(round_)  # once: the overlapped schedule said it at the end of the phase
        expected = self.expected_group(round_)
        if self.cfg.sync.mode == "broadcast":
            return self._broadcast(round_, sent, int(weight), expected)
        with self.averager.get_tensors() as tensors:
            for t, d in zip(tensors, sent, strict=True):
                t.copy_(d)
        if len(expected) < 2:
            return self._alone(sent, weight, "no other peer online")
        if self._too_late(round_):
            return self._alone(sent, weight, "the round's group formed before this peer was ready")
        if round_ in self._miss_rounds:
            log.warning("TEST FAULT: round %d: no group for this peer (%s is set)", round_, MISS_ROUNDS_ENV)
            return self._alone(sent, weight, "no group found (test fault)")
        # the state the round starts from as the commit step settled it: a peer still re-syncing to it (overlap:
        # its exchange starts before the re-sync, see agree) averages with the others, not alone
        settled_for, settled = self._settled
        base = {"round": round_, "base": settled if settled_for == round_ else self.peer.digest}
        timeout = self.cfg.sync.matchmaking_time_s + 2 * self.cfg.sync.request_timeout_s
        log.info("round %d: averaging (expecting %d peers)", round_, len(expected))
        res = self.averager.step(
            weight=weight,
            timeout=timeout,
            gather={**base, "samples": int(weight)},
            expected_size=len(expected),
            round_=round_,
            give_up=lambda: self._averaged_without_us(round_, expected),
            members=sorted(expected),
        )
        mixed = res.succeeded and not all(_same_base(v, base) for v in res.gathered.values())
        if not res.succeeded or mixed or res.group_size < 2:
            why = "group of another round or state" if mixed else (res.reason or "alone")
            return self._alone(sent, weight, why)
        with self.averager.get_tensors() as tensors:
            mean = [t.clone() for t in tensors]
        if round_ in self._lose_part:
            log.warning("TEST FAULT: round %d: the first tensor's mean lost (%s is set)", round_, LOSE_PART_ENV)
            mean[0].zero_()
        if self.residuals:
            for r, fresh in zip(self.residuals, self.averager.residuals, strict=True):
                r.copy_(fresh)
        n = res.group_size
        moved = int(2 * (n - 1) / n * self.encoded_bytes)
        unsafe = self.guard.check(mean)  # the same bytes at every member: every member decides the same
        if unsafe:
            log.warning("round %d: not applying the group's mean: %s", round_, unsafe)
        return ExchangeOutcome(
            mean_delta=mean,
            group_size=n,
            members=list(res.peer_ids),
            averaged=True,
            applied=not unsafe,
            reason=unsafe or ("" if res.complete else f"reducers failed: {len(res.failed_reducers)}"),
            failed_reducers=len(res.failed_reducers),
            bytes_sent=moved,
            bytes_received=moved,
            contributions={peer: _claimed_samples(v) for peer, v in sorted(res.gathered.items())},
        )

    def _broadcast(self, round_: int, sent: list[torch.Tensor], samples: int, expected: set[str]) -> ExchangeOutcome:
        """The broadcast exchange (node/broadcast.py): what this peer aggregated from the updates it fetched."""
        sync = self.cfg.sync
        others = expected - {self.identity.peer_id}
        wait_s, fetch_s = sync.matchmaking_time_s, sync.allreduce_timeout_s
        res = self.broadcast.exchange(round_, sent, max(1, samples), others, wait_s, fetch_s)
        if self.residuals:  # what this round's codec dropped goes into the next round's update
            for r, s, o in zip(self.residuals, sent, res.own, strict=True):
                r.copy_(s - o)
        refused = res.refused
        return ExchangeOutcome(
            mean_delta=res.mean,
            group_size=len(res.members),
            members=res.members,
            averaged=len(res.members) >= 2,
            reason="; ".join(f"{p[:12]}: {why}" for p, why in refused.items()) if refused else "",
            bytes_sent=res.bytes_sent,
            bytes_received=res.bytes_received,
            refused=refused,
            contributions=res.samples,
        )

    def _committed_by_others(self, round_: int) -> bool:
        """Another peer announced its round-``round_`` digest: its group averaged already, so one still looking
        for a group (a restarted peer whose "join" came after the group formed) will not find one this round."""
        return bool(set(self.commit.box.digests(round_)) - {self.identity.peer_id})

    def _swarm_past(self, round_: int) -> bool:
        """Another peer already committed a round after ``round_`` (its newest "digest" message says so): a peer that
        joined late, or is far slower, is training a round the swarm left behind. Measured (benchmarks/links.py
        --slow 3=10): a peer at 0.04 core caught up to round 8, then trained round 9's whole phase for 3 minutes
        while the others went on to round 28, and committed it alone (it never heard round 9 close)."""
        me = self.identity.peer_id
        return any(o["round"] > round_ for o in self.commit.box.latest() if o["peer_id"] != me)

    def _averaged_without_us(self, round_: int, expected: set[str]) -> bool:
        """Stop looking for a group of ``round_``: the others averaged it already, as a group (two or more announced
        one digest) or all of them (every peer expected in it committed). One peer that committed alone is no
        reason: measured (benchmarks/links.py --slow-link 3=10), a slow peer's lone commit made every fast peer
        give up its matchmaking, each committed alone, and the tie of four digests went to the slow one's."""
        me = self.identity.peer_id
        digests = {p: d for p, d in self.commit.box.digests(round_).items() if p != me}
        if not digests:
            return False
        counts = collections.Counter(digests.values())
        return max(counts.values()) >= 2 or expected - {me} <= digests.keys()

    def _too_late(self, round_: int) -> bool:
        """Whether the others have averaged ``round_`` without us already, so that matchmaking could only time out
        (a whole window and two requests): the round closed here longer ago than the others wait for a group,
        or, in our first round after a (re)start, someone already announced its round-``round_`` digest."""
        window = self.cfg.sync.matchmaking_time_s
        closed_for = self.pace.closes.closed_for(round_)
        if closed_for is not None and closed_for > (1 + CLOSE_GRACE) * window:
            return True
        if self._last_members:
            return False
        if self._committed_by_others(round_):  # digests travel by gossip, the DHT is the fallback
            return True
        try:
            return bool(set(get_digests(self.dht, self.run_id, round_)) - {self.identity.peer_id})
        except Exception as e:  # no answer: try to average
            log.debug("digest check failed: %s", e)
            return False

    def _alone(self, sent: list[torch.Tensor], weight: float, reason: str) -> ExchangeOutcome:
        """Our own delta, on the codec's grid (versioning/round_object.py ``on_grid``): what the rounding leaves goes
        into the next round's delta with error feedback, and a peer that must take our state replays a small round
        object. Measured before (benchmarks/links.py --slow-link 3=10): a lone peer's state won a round, and the
        others' downloads of it (6.7 MB at 1 Mbit/s, all from that peer) outlasted four rounds."""
        c = self.cfg.compress
        grid = on_grid(dict(zip(self.peer.names, sent, strict=True)), c.codec, c.block_size)
        applied = [grid[n] for n in self.peer.names]
        if self.residuals:  # the rounding is carried over (nothing, for a codec without a grid)
            for r, s, a in zip(self.residuals, sent, applied, strict=True):
                r.copy_(s - a)
        return ExchangeOutcome(
            mean_delta=applied, reason=reason, contributions={self.identity.peer_id: int(weight)}, replayable=True
        )

    def agree(
        self, round_: int, outcome: ExchangeOutcome, patch: bytes | None = None, then: Callable[[], None] | None = None
    ) -> Agreement:
        """The commit step: the digest most of the round's participants hold wins; re-sync if it is not ours.
        ``then`` runs once the winner is known, before a re-sync (the overlapped schedule starts the next round's
        exchange there: a re-sync of ~6 s at 1 Mbit/s made a slow peer late for every next group, a chase)."""
        sync = self.cfg.sync
        # a group that formed later may still be averaging: give it a matchmaking window, requests and a stall
        deadline_s = sync.matchmaking_time_s + 2 * sync.request_timeout_s + 2 * sync.chunk_timeout_s
        # our vote names the package (and round object) we serve: a re-sync needs no DHT lookup
        ours = self.peer.digest
        voted = self.commit.voted(round_, ours)  # Exchange.vote pushed it, with its offer, mid-phase
        offer = None if voted else self.offers.prepare(round_, patch)
        fallbacks = self.commit.fallbacks
        agreement = self.commit.agree(
            round_,
            ours,
            participants=lambda: self.participants(round_, outcome),
            eligible=self.peer_ids,  # cached: a participant new since then is in participants() (ready or group)
            deadline_s=deadline_s,
            former=self.pace.left,  # a peer that stopped right after its commit voted for this round too
            offer=offer,
            vote=not outcome.sat_out,  # the others do not count on us: our state would only tip their ties
        )
        self._fell_back = self.commit.fallbacks > fallbacks
        # the next round expects the peers not waited for too (the commit step ends once a majority agrees; a
        # peer behind by a re-sync is still in the swarm) and those that just joined, even if they came too late
        # for this round's group: the connection check drops the crashed ones
        joined = self.pace.joining(round_) | self.pace.joining(round_ + 1)
        self._last_members = sorted({*agreement.committed_by, *agreement.missing, *joined})
        self._settled = (round_ + 1, agreement.winner)
        self._judge_own_pace(round_, outcome, agreement, ours)
        back = not self.sit_out.sits_out(round_ + 1)  # we train round_ + 1 with the others
        if self.sit_out.sits_out(round_ + 1) and not self.sit_out.sits_out(round_ + 2):
            # a round ahead: overlapped, the others' round_ + 2 group forms at their commit of round_ + 1, the moment
            # ours ends; said then, our "join" came after a group of those expected had formed (measured)
            self.pace.announce_join(round_ + 2)
        if agreement.winner != self.peer.digest:
            log.warning(
                "round %d: this peer holds %s but most peers hold %s: re-syncing",
                round_,
                self.peer.digest[:12],
                agreement.winner[:12],
            )
            # the others did not wait for us: without this they assemble the next round without us too, and a
            # peer that re-synced starts every round late, goes alone and re-syncs again (a chase)
            if back:
                self.pace.announce_join(round_ + 1)
            if then is not None:
                then()
            how = self.offers.resync(round_, agreement.winner)
            if not how and self.catch_up():
                # the swarm moved past that round before we got its state (we started a round behind): take the
                # latest instead; the round loop commits it under its own round (node/round.py)
                log.warning("round %d: caught up to the swarm's round %d instead", round_, self.peer.round)
                how = "catch-up"
            agreement = replace(agreement, resync=how or "failed")
        elif len(agreement.committed_by) <= 1 and self._swarm_past(round_) and self.catch_up():
            # nobody else voted on this round and the others committed later ones: ours would be a lone fork
            log.warning(
                "round %d: nobody else committed it; caught up to the swarm's round %d", round_, self.peer.round
            )
            agreement = replace(agreement, resync="catch-up")
        return agreement

    def _judge_own_pace(self, round_: int, outcome: ExchangeOutcome, agreement: Agreement, ours: str) -> None:
        """Sit the next rounds out when the others keep agreeing without us (node/sit_out.py)."""
        o, won = outcome, agreement.winner == ours
        if self.sit_out.record(
            round_, misses(o.averaged, o.failed_reducers, o.group_size, won, agreement.winner_votes)
        ):
            hint = "" if self.cfg.swarm.client_mode else CLIENT_MODE_HINT
            log.warning(
                "round %d: the others agreed without this peer (its link or pace cannot keep up with their"
                " exchange): sitting out rounds %d-%d, following their state%s",
                round_,
                round_ + 1,
                self.sit_out.until,
                hint,
            )
            self._in_background(self.pace.announce_leave)  # they stop expecting us in groups and commit steps

    def after_commit(self, round_: int, samples_per_s: float, outcome: ExchangeOutcome) -> None:
        """Serve the committed state (our "digest" message announced it); offer it in the DHT only every third of
        the offer's lifetime, or when the commit step needed the DHT. The peer record (round, digest) is stored at
        once after this process's first commit (``swarm peers`` and joinability checks see a committed round),
        later at its refresher's period; the run record and history (two DHT stores, ~50 KB) after the first
        commit, on release rounds and every third of their lifetime."""
        offers = self.offers
        due = offers.announced_at is None or time.monotonic() - offers.announced_at >= offers.ttl_s / 3
        offers.offer(round_, self._in_background, announce=due or self._fell_back)
        self.committed = Committed(round_, self.peer.digest, samples_per_s)
        first, self._committed_once = not self._committed_once, True
        if first:
            self.refresher.refresh_now()
        published = self._run_published_at
        stale = published is None or time.monotonic() - published >= self.cfg.swarm.record_ttl_s * 10 / 3
        if first or stale or round_ % self.cfg.versioning.release_every == 0:
            self._run_published_at = time.monotonic()
            self._in_background(self.publish_run)
        for hook in self.commit_hooks:
            hook(round_, outcome.members, outcome.contributions)

    def catch_up(self) -> bool:
        """Late join: adopt the swarm's latest committed state (verified) if it is ahead of this peer; then tell
        the others which round this peer trains first."""
        caught_up = self.offers.catch_up()
        if caught_up:
            self.committed = Committed(self.peer.round, self.peer.digest)
        # the state this peer trains from, packed: a first round that ends off the majority (its all-reduce missed
        # parts) re-syncs by replaying that round's object on it (node/state_offers.py), not by a whole download
        self.offers.prepare(self.peer.round)
        if not self.sit_out.sits_out(self.peer.round + 1):
            self.pace.announce_join(self.peer.round + 1)
        return caught_up

    # --- records ---------------------------------------------------------------------------------------
    def publish_run(self) -> None:
        """Register this run under the global key so light clients can find it without a config."""
        from p2pmodel.node import run_registry

        p, ttl = self.peer, self.cfg.swarm.record_ttl_s * 10
        self._run_published_at = time.monotonic()
        run_registry.publish_run(
            self.dht, self.identity, self.cfg, self.run_id, p.corpus.fingerprint, p.history, ttl, p.set_fingerprints
        )

    def _record(self) -> dict:
        c = self.committed
        return make_peer_record(self.identity, self.run_id, c.round, c.samples_per_s, c.digest, self.maddrs)

    def close(self) -> None:
        if hasattr(self, "pace"):
            self.pace.announce_leave()
        self._publisher.close()
        parts = (
            ("pace", "close"),
            ("gossip", "close"),
            ("refresher", "stop"),
            ("broadcast", "close"),
            ("blobs", "close"),
            ("averager", "shutdown"),
        )
        steps = [getattr(getattr(self, part), method) for part, method in parts if hasattr(self, part)]
        for step in (*steps, lambda: stop_dht(self.dht)):
            try:
                step()
            except Exception as e:  # keep closing the rest
                log.debug("shutdown step failed: %s", e)


class Publisher:
    """One daemon thread running queued jobs in order (DHT stores nobody waits for). A daemon, not an executor:
    a store to a DHT whose process is gone never returns, and the interpreter joins executor threads at exit."""

    def __init__(self, max_queued: int = 64):
        self._jobs: queue.Queue = queue.Queue(max_queued)
        self._thread = threading.Thread(target=self._run, name="p2pmodel-publish", daemon=True)
        self._thread.start()

    def submit(self, job) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:  # the DHT is stuck: the next round publishes again
            log.debug("publish queue full: dropping a store")

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception as e:  # the next round publishes again; readers cope with a missing record
                log.debug("background publish failed: %s", e)

    def close(self) -> None:
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass


def _rounds_from_env(name: str) -> set[int]:
    """A test fault's rounds ("3,5")."""
    return {int(r) for r in os.environ.get(name, "").split(",") if r.strip()}


def _info(t: torch.Tensor) -> CompressionInfo:
    return CompressionInfo.from_tensor(t)


def _same_base(gathered: object, base: dict) -> bool:
    """A group member's gathered data (hostile: any msgpack value) names our round and base state."""
    return isinstance(gathered, dict) and all(gathered.get(k) == v for k, v in base.items())


def _claimed_samples(gathered: dict) -> int:
    """The samples a member claimed in its gathered data (0 if it claimed none or nonsense: it is a record)."""
    n = gathered.get("samples")
    return n if type(n) is int and 0 <= n < 2**40 else 0


def _file_provider(path: str) -> Callable[[str], bytes | None]:
    """Serves one small file (the HF config; a directory means its config.json) under its sha256, the id the run
    record names."""
    p = Path(path)
    data = (p / "config.json" if p.is_dir() else p).read_bytes()
    blob_id = sha256_hex(data)
    return lambda wanted: data if wanted == blob_id else None
