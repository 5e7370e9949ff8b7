"""Proposals a swarm reads at its release rounds (signed DHT records, ``versions propose``): a MINOR or MAJOR bump
for the next version, or a whole state to review like a pull request (``versions propose --state DIR``: a merge,
a fork folded back in). A state proposal names its digest, the peer that serves it, the tag it builds on and the
round from which it is up; each member fetches it (verified by digest), evaluates it as the release candidate of
its first release round from then, and votes (each peer once per proposal). If a quorum accepts, every peer
adopts the state ``ADOPT_AFTER`` round after that release round, instead of that round's outer step and with the
outer momentum reset (the same round everywhere, so one digest after it), and trains on from it. A peer that has
not heard of the tag by then keeps its own state and re-syncs in the commit step, as for any disagreement.

Everything in a record is hostile input: schema-checked here, the state checked by digest and shapes on download."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from p2pmodel.core.errors import IntegrityError, P2PModelError
from p2pmodel.core.ids import is_hex64
from p2pmodel.eval.digest import parse_canonical
from p2pmodel.swarm.blobs import fetch_blob
from p2pmodel.versioning.semver import Version

log = logging.getLogger("p2pmodel.release")

ADOPT_AFTER = 1  # rounds from the release round that tagged a proposed state to its adoption: the tag has spread
STATE_BUMPS = ("patch", "minor", "major")


@dataclass(frozen=True)
class StateProposal:
    proposer: str
    digest: str
    provider: str  # the peer that serves the state's canonical bytes
    after: str  # the tag it builds on ("" = none yet)
    from_round: int  # voted on at the first release round >= this
    bump: str
    reason: str


def state_proposals(found: dict[str, dict], run_id: str, allow: set[str] | None = None) -> list[StateProposal]:
    """The well-formed state proposals of ``run_id`` among signed proposal records ({signer: body}), sorted by
    digest (every peer picks the same one first); an allowlist keeps only its signers'."""
    out = []
    for signer, p in found.items():
        if not isinstance(p, dict) or p.get("run_id") != run_id or (allow and signer not in allow):
            continue
        digest, provider, after, at = p.get("state"), p.get("provider"), p.get("after"), p.get("round")
        if not (is_hex64(digest) and isinstance(provider, str) and 0 < len(provider) <= 128):
            continue
        if not isinstance(after, str) or type(at) is not int or not 0 < at < 2**62:
            continue
        if after:
            try:
                if str(Version.parse(after)) != after:
                    continue
            except ValueError:
                continue
        bump = p.get("bump")
        if bump not in STATE_BUMPS:
            continue
        reason = p.get("reason") if isinstance(p.get("reason"), str) else ""
        out.append(StateProposal(signer, digest, provider, after, at, bump, reason[:500]))
    return sorted(out, key=lambda s: (s.digest, s.proposer))


def due(proposals: list[StateProposal], round_: int, window: int) -> StateProposal | None:
    """The proposal to vote on at release round ``round_``, if any: the first (by digest) up from a round not after
    this one and less than ``window`` rounds before it (two release rounds: a peer that read it late votes at the
    second; after that every peer has voted on it, and one that restarted must not vote on it alone). It is judged
    against the latest tag, whichever that is by then (``after`` names the one the proposer saw)."""
    for s in proposals:
        if s.from_round <= round_ < s.from_round + window:
            return s
    return None


def state_limit(shapes: dict[str, tuple]) -> int:
    """The most bytes the canonical state of a model of these shapes takes (names, shapes, float32 values)."""
    return sum(4 * math.prod(s) + len(n) + 64 for n, s in shapes.items())


class StateReview:
    """A peer's side of state proposals: at a release round, the proposal due (fetched from its provider, checked
    by digest and shapes, stored), evaluated like a candidate; each is voted on once. ``known`` holds every
    proposed digest seen, so a tag naming one is not mistaken for a conflicting history."""

    def __init__(self, peer, dht, timeout_s: float):
        self.peer, self.dht, self.timeout_s = peer, dht, timeout_s
        self.known: set[str] = set()
        self._voted: set[str] = set()

    def take(self, proposals: list[StateProposal], round_: int, window: int):
        """→ (proposal, its EvalReport) to vote on at ``round_``, or None (none due, or it could not be fetched)."""
        self.known |= {p.digest for p in proposals}
        proposal = due([p for p in proposals if p.digest not in self._voted], round_, window)
        if proposal is None:
            return None
        self._voted.add(proposal.digest)  # once: a rejected proposal does not hold up every later release
        try:
            state = self._fetch(proposal)
        except (P2PModelError, ValueError) as e:
            log.warning(
                "proposed state %s from %s: %s; voting on our own state",
                proposal.digest[:12],
                proposal.provider[:16],
                e,
            )
            return None
        log.info("round %d: the candidate is the proposed state %s (%s)", round_, proposal.digest[:12], proposal.reason)
        return proposal, self.peer.evaluate_state(state)

    def _fetch(self, proposal: StateProposal) -> dict:
        """The proposed state from its provider (which keeps a connection to every peer open, so none has to dial
        it), checked against this model, stored."""
        store = self.peer.store
        if store.has_state(proposal.digest):
            return store.get_state(proposal.digest)
        shapes = {n: tuple(p.shape) for n, p in zip(self.peer.names, self.peer.global_params, strict=True)}
        blob = fetch_blob(self.dht, proposal.provider, proposal.digest, state_limit(shapes), timeout_s=self.timeout_s)
        state = parse_canonical(blob)  # the bytes hash to the digest: fetch_blob checked them
        if {n: tuple(t.shape) for n, t in state.items()} != shapes:
            raise IntegrityError("it does not fit this model (names or shapes)")
        store.put_state(state)
        return state
