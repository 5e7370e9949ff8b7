"""Releases in a running peer: every ``release_every`` committed rounds the state is a candidate; each
member of that round evaluates it, signs a vote and gossips it; a quorum of accepting votes becomes a
self-verifying tag, appended to this peer's ledger, gossiped, and indexed in the DHT so a light client
(the ``versions`` CLI) can list, verify and pull it. Tagged states are pinned in the store and served."""

import json
import logging
import threading
import time
from pathlib import Path

from p2pmodel.core.errors import P2PModelError
from p2pmodel.core.ids import sha256_hex
from p2pmodel.eval.suite import judge, metrics_of
from p2pmodel.node.contributions import ContributionLog
from p2pmodel.node.proposals import ADOPT_AFTER, StateReview, state_proposals
from p2pmodel.swarm.keys import PROPOSAL_KIND, TAG_INDEX_KIND, proposals_key, tags_key
from p2pmodel.swarm.records import get_signed, publish_signed
from p2pmodel.versioning.atomic import atomic_write
from p2pmodel.versioning.ledger import Ledger
from p2pmodel.versioning.quorum import VoteBox
from p2pmodel.versioning.semver import Version, next_version
from p2pmodel.versioning.tag import TAG_KIND, build_tag, decode_tag, encode_tag, verify_tag
from p2pmodel.versioning.votes import VOTE_KIND, candidate_id, make_vote

log = logging.getLogger("p2pmodel.release")
MAX_CERT_BYTES = 1 << 20
MAX_HELD_TAGS = 16


class Releases:
    def __init__(self, cfg, peer, link, data_dir: Path):
        self.cfg, self.peer, self.link = cfg, peer, link
        v = cfg.versioning
        allow = set(v.allowlist) or None
        self.reopen_rounds = 2 * v.release_every  # an untagged acceptance stops blocking its slot after this
        self.box = VoteBox(peer.run_id, allowlist=allow, reopen_after_rounds=self.reopen_rounds)
        self.ledger = Ledger(Path(data_dir) / "ledger.bin", allowlist=allow, major_fraction=v.major_fraction)
        self.contributions = ContributionLog(Path(data_dir) / "contributions.json")
        self.electorates: dict[int, list[str]] = {}
        self.last_round: int | None = None  # the last round this peer committed (None until the first commit)
        self._committed: dict[int, str] = {}  # release round -> the digest this peer committed (recent ones)
        self._held_tags: list[dict] = []  # verified tags of rounds this peer has not committed yet
        self._accepted_path = Path(data_dir) / "accepted_slots.json"  # survives restarts: never accept twice
        self._accepted: dict[str, list] = (  # version → [candidate, round] we accepted
            json.loads(self._accepted_path.read_text()) if self._accepted_path.exists() else {}
        )
        self.certs: dict[str, bytes] = {}  # sha256 → packed certificate (served as blobs)
        self._lock = threading.RLock()
        self._indexed_at = time.monotonic()  # when the tag index was last published (the runner does at start)
        self._ledger_behind = False  # a tag arrived whose parent this ledger lacks: sync before the next vote
        self.review = StateReview(peer, link.dht, cfg.sync.download_timeout_s)  # versions propose --state
        for cert in self.ledger.all():
            self._index(cert)
        self.gossip = link.gossip  # owned (and closed) by the link
        self.gossip.subscribe(VOTE_KIND, self._on_vote)
        self.gossip.subscribe(TAG_KIND, self._on_tag)
        link.providers.append(self.certs.get)

    # --- voting ----------------------------------------------------------------------------------------
    def on_commit(self, round_: int, members: list[str], contributions: dict[str, int] | None = None) -> None:
        """After committing ``round_``: record who contributed to it; vote on it if it is a release candidate and
        we are in its electorate."""
        peer = self.peer
        with self._lock:
            latest = self.ledger.latest()
        self.contributions.record(round_, contributions or {}, covered=latest["round"] if latest else 0)
        release = round_ % self.cfg.versioning.release_every == 0
        voting = release and self.link.identity.peer_id in members
        found = self._read_proposals() if voting else {}
        allow = set(self.cfg.versioning.allowlist) or None
        window = 2 * self.cfg.versioning.release_every
        under_review = self.review.take(state_proposals(found, peer.run_id, allow), round_, window)
        candidate = under_review[0].digest if under_review else peer.digest  # a proposed state, or ours
        with self._lock:
            if voting:
                self.electorates[round_] = sorted(members)
                self.box.set_electorate(round_, candidate, members)
            if release:
                self._committed[round_] = candidate
                for old in sorted(self._committed)[:-MAX_HELD_TAGS]:
                    del self._committed[old]
            self.last_round = round_
            self.box.advance(round_, self.reopen_rounds)
            self._release_held_tags(round_)
        parent = latest  # as it was when the round committed, before the proposals were read
        if voting and self._ledger_behind:
            self.sync_ledger()
            with self._lock:
                parent = self.ledger.latest()
        if voting and not self._vote(round_, members, parent, found, under_review) and self.sync_ledger():
            with self._lock:  # our slot was taken by a candidate the swarm tagged without us hearing of it
                parent = self.ledger.latest()
            self._vote(round_, members, parent, found, under_review)
        if time.monotonic() - self._indexed_at > self._index_ttl_s() / 3:  # keep the light clients' view alive
            self.publish_index()

    def _vote(self, round_: int, members: list[str], parent: dict | None, found: dict, under_review=None) -> bool:
        """Sign and gossip our vote on ``round_``'s candidate (our state, or ``under_review``: a proposed state and
        its evaluation); False when our slot for its version is taken."""
        peer = self.peer
        if parent and parent["round"] >= round_:  # a quorum tagged this round (or a later one) before we voted
            log.info("round %d is already tagged (%s): not voting", round_, parent["version"])
            return True
        proposal, report = under_review or (None, peer.last_report)
        digest = proposal.digest if proposal else peer.digest
        bump = proposal.bump if proposal else self.proposed_bump(parent["version"] if parent else "", found)
        baseline = parent["metrics"] if parent and bump != "major" else None  # MAJOR may accept a regression
        verdict, reasons = judge(  # the run's validation set and every named eval set, each by its own tolerance
            report,
            baseline,
            self.cfg.versioning.regression_tolerance,
            self.cfg.eval.checks,
            self.cfg.set_tolerances(),
        )
        version = next_version(Version.parse(parent["version"]) if parent else None, bump)
        cid = candidate_id(peer.run_id, round_, digest)
        prev_cid, prev_round = self._accepted.get(str(version), (cid, round_))
        same_window = round_ // self.reopen_rounds == prev_round // self.reopen_rounds  # VoteBox's rule
        if verdict == "accept" and prev_cid != cid and same_window:
            log.warning("already accepted another candidate for %s: not voting on round %d", version, round_)
            return False
        if verdict == "accept":
            self._accepted[str(version)] = (cid, round_)
            atomic_write(self._accepted_path, json.dumps(self._accepted).encode())
        body = make_vote(
            run_id=peer.run_id,
            round=round_,
            digest=digest,
            object_sha256=digest,
            parent=parent["version"] if parent else "",
            version=str(version),
            metrics=metrics_of(report),
            verdict=verdict,
            bump=bump,
            voter=self.link.identity.peer_id,
            electorate=members,
            time=time.time(),
            contributors=self.contributions.tally(parent["round"] if parent else 0, round_),
            **({} if proposal else self._patch_fields(parent, round_)),
        )
        log.info(
            "round %d candidate %s%s: voting %s for %s%s",
            round_,
            digest[:12],
            " (proposed)" if proposal else "",
            verdict,
            version,
            f" ({'; '.join(reasons)})" if reasons else "",
        )
        try:
            self.gossip.publish(VOTE_KIND, body)
        except P2PModelError as e:
            log.warning("could not publish our vote: %s", e)
        return True

    def _patch_fields(self, parent: dict | None, round_: int) -> dict:
        """The vote's "rounds" and "momentum" where this peer holds them: how a light client patches a pulled parent
        into this candidate (versioning/round_object.py)."""
        rounds, momentum = self.peer.patch_refs(parent, round_)
        return {k: v for k, v in (("rounds", rounds), ("momentum", momentum)) if v is not None}

    def _read_proposals(self) -> dict[str, dict]:
        """The run's signed proposal records ({signer: body}); {} when the DHT does not answer (a plain PATCH on our
        own state is always safe)."""
        try:
            return get_signed(self.link.dht, proposals_key(self.peer.run_id), PROPOSAL_KIND)
        except Exception as e:
            log.warning("reading proposals failed, voting PATCH on our own state: %s", e)
            return {}

    def proposed_bump(self, parent_version: str, found: dict[str, dict]) -> str:
        """PATCH unless an open bump proposal among ``found`` asks for more (the larger bump wins). A proposal made
        when version X was the latest stays open until a tag after X carries its bump (or a larger one)."""
        allow = set(self.cfg.versioning.allowlist)
        tags = self.ledger.all()
        bumps = []
        for pid, p in found.items():
            if (
                "state" in p  # a state proposal: its bump is its own candidate's
                or p.get("run_id") != self.peer.run_id
                or p.get("bump") not in ("minor", "major")
                or not isinstance(p.get("after"), str)
                or (allow and pid not in allow)
            ):
                continue
            try:
                after = Version.parse(p["after"]) if p["after"] else None
            except ValueError:
                continue
            done = any(
                (after is None or Version.parse(c["version"]) > after) and c["bump"] in (p["bump"], "major")
                for c in tags
            )
            if not done:
                bumps.append(p["bump"])
        bump = "major" if "major" in bumps else "minor" if bumps else "patch"
        log.debug("%d proposal(s) in the DHT, %d open on top of %s: %s", len(found), len(bumps), parent_version, bump)
        return bump

    def _on_vote(self, msg) -> bool:
        with self._lock:
            parent = msg.body.get("parent") if isinstance(msg.body, dict) else None
            if isinstance(parent, str) and parent and self.ledger.get(parent) is None:
                self._ledger_behind = True  # another voter builds on a tag we lack: fetch it before our next vote
            counted, reason = self.box.add(msg.data)
            if not counted:
                log.debug("vote from %s not counted: %s", msg.signer, reason)
                return reason.startswith("held")
            self._try_tag(msg.body)
            return True

    def _try_tag(self, vote: dict) -> None:
        members = self.electorates.get(vote["round"])
        if members is None or self.ledger.get(vote["version"]) is not None:
            return
        parent = self.ledger.get(vote["parent"]) if vote["parent"] else None
        if vote["parent"] and parent is None:
            return
        try:
            cert = build_tag(
                votes=self.box.accepting(vote["candidate"]),
                electorate=members,
                parent_cert=parent,
                major_fraction=self.cfg.versioning.major_fraction,
            )
        except ValueError:
            return  # no quorum yet
        if self._append(cert):
            log.info(
                "tagged %s = %s (round %d, %d/%d votes)",
                cert["version"],
                cert["digest"][:12],
                cert["round"],
                len(cert["votes"]),
                len(members),
            )
            threading.Thread(target=self._announce, args=(cert,), daemon=True).start()

    # --- tags ------------------------------------------------------------------------------------------
    def _on_tag(self, msg) -> bool:
        try:
            cert = decode_tag(msg.body["cert"], MAX_CERT_BYTES)
            with self._lock:
                if cert["parent"] and self.ledger.get(cert["parent"]) is None:
                    self._ledger_behind = True  # a gap in our chain: fetch it at the next commit
                if self.last_round is not None and cert["round"] > self.last_round:
                    return self._hold_tag(cert)
                self._check_digest(cert)
                if self._append(cert):
                    return True
                # a tag we hold already (e.g. our own announcement, delivered here first): still accept it so
                # gossip spreads it to peers outside the electorate, but only once it verifies on its own
                parent = self.ledger.get(cert["parent"]) if cert["parent"] else None
                verify_tag(cert, parent, allowlist=self.ledger.allowlist, major_fraction=self.ledger.major_fraction)
                return True
        except (P2PModelError, KeyError, TypeError, ValueError) as e:
            log.debug("tag from %s refused: %s", msg.signer, e)
            return False

    def _hold_tag(self, cert: dict) -> bool:
        """A tag of a round this peer has not committed yet (it often arrives just before our own commit) waits,
        checked against the ledger (parent, votes, conflicts), for that commit, so that its digest can be checked
        against ours. Tags of rounds too far ahead to be real, or past a small bound, are refused, not forwarded."""
        if cert["round"] > self.last_round + self.reopen_rounds:
            raise ValueError(f"round {cert['round']} is too far past this peer's {self.last_round}")
        if not self.ledger.check(cert) or any(encode_tag(c) == encode_tag(cert) for c in self._held_tags):
            return True  # held or stored already
        if len(self._held_tags) >= MAX_HELD_TAGS:
            raise ValueError("too many tags waiting for their round")
        self._held_tags.append(cert)
        return True

    def _release_held_tags(self, committed: int) -> None:
        """Caller holds the lock: tags of rounds up to ``committed`` are appended if their digest is ours."""
        due = sorted((c for c in self._held_tags if c["round"] <= committed), key=lambda c: c["round"])
        self._held_tags = [c for c in self._held_tags if c["round"] > committed]
        for cert in due:
            try:
                self._check_digest(cert)
            except ValueError as e:
                log.warning("tag %s refused: %s", cert["version"], e)
                continue
            if self._append(cert):
                log.info("tagged %s = %s (round %d, received)", cert["version"], cert["digest"][:12], cert["round"])

    def sync_ledger(self) -> int:
        """Fetch (verified, in chain order) the tags other peers index that this ledger lacks: a joining or
        returning peer must know the latest version before it votes, or it proposes a version name the others
        tagged long ago and no name reaches a quorum. → how many tags were added."""
        from p2pmodel.node.light import sync_tags

        self._ledger_behind = False
        try:
            added = sync_tags(self.link.dht, self.peer.run_id, _AppendThrough(self))
        except Exception as e:  # the DHT may be briefly unreachable: try again at the next commit
            log.warning("could not fetch the swarm's tags: %s", e)
            self._ledger_behind = True
            return 0
        if added:
            latest = self.ledger.latest()
            log.info("fetched %d tag(s) from the swarm; latest %s", added, latest["version"] if latest else "none")
            self.publish_index()
        return added

    def _check_digest(self, cert: dict) -> None:
        """A tag of a (recent) round this peer committed must name the state this peer committed in it."""
        ours = self._committed.get(cert["round"])
        if ours is not None and cert["digest"] != ours and cert["digest"] not in self.review.known:
            raise ValueError(
                f"it names {cert['digest'][:12]} for round {cert['round']}, this peer committed {ours[:12]}"
            )

    def _append(self, cert: dict) -> bool:
        if not self.ledger.append(cert):  # verifies the certificate against its parent; refuses conflicts
            return False
        self.peer.store.pin(cert["digest"])
        self._index(cert)
        if cert["digest"] in self.review.known:  # a proposed state the quorum accepted: everyone adopts it then
            self.peer.schedule_adoption(cert["round"] + ADOPT_AFTER, cert["digest"], cert["version"])
        return True

    def _index(self, cert: dict) -> None:
        self.certs[sha256_hex(encode_tag(cert))] = encode_tag(cert)

    def _announce(self, cert: dict) -> None:
        try:
            self.gossip.publish(TAG_KIND, {"cert": encode_tag(cert), "version": cert["version"]})
        except P2PModelError as e:
            log.debug("tag gossip failed: %s", e)
        self.publish_index()

    def publish_index(self) -> None:
        """Tell light clients which tags we hold and the blob ids of their certificates."""
        with self._lock:
            tags = [[c["version"], sha256_hex(encode_tag(c))] for c in self.ledger.all()][-64:]
        body = {"peer_id": self.link.identity.peer_id, "run_id": self.peer.run_id, "tags": tags, "time": time.time()}
        try:
            key, ttl = tags_key(self.peer.run_id), self._index_ttl_s()
            publish_signed(self.link.dht, self.link.identity, key, TAG_INDEX_KIND, body, ttl)
            self._indexed_at = time.monotonic()
        except Exception as e:  # the DHT may be briefly unreachable; the next commit republishes
            log.debug("tag index publish failed: %s", e)

    def _index_ttl_s(self) -> float:
        """The tag index lives this long in the DHT; it is republished every third of it (at a commit)."""
        return self.cfg.swarm.record_ttl_s * 10

    def settle(self, round_: int, timeout_s: float, linger_s: float = 2.0) -> bool:
        """Before exiting after a release round: wait (bounded) for its tag so our vote's outcome is recorded.

        Then linger ``linger_s``: the last voter completes the quorum the moment it votes, and ``close()`` drops
        gossip pushes still queued, so without this its vote and tag never reached the others (seen in the
        demo: only the last voter held the final tag)."""
        if round_ % self.cfg.versioning.release_every:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(c["round"] == round_ for c in self.ledger.all()):
                time.sleep(max(0.0, min(linger_s, deadline - time.monotonic())))
                return True
            time.sleep(0.2)
        return False

    def close(self) -> None:
        self.gossip.unsubscribe(VOTE_KIND)
        self.gossip.unsubscribe(TAG_KIND)


class _AppendThrough:
    """The ledger as ``sync_tags`` sees it: appends go through ``Releases._append`` (pin, index) under its lock."""

    def __init__(self, releases: Releases):
        self._releases = releases

    def get(self, version: str) -> dict | None:
        return self._releases.ledger.get(version)

    def append(self, cert: dict) -> bool:
        with self._releases._lock:
            return self._releases._append(cert)
