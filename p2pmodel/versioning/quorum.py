"""Quorum arithmetic and the vote box: the only door through which a received vote can count.

Quorum (docs/versions.md, "Churn and partitions", has the argument): a tag of a round with electorate E (the
round's N members) needs ``floor(2N/3)+1`` distinct accepting votes of E, a MAJOR bump ``floor(f*N)+1`` with
the configured supermajority f; and, for every tag but the genesis, accepting votes from MORE THAN HALF of the
parent tag's electorate ("continuity"). Two disjoint halves of a split swarm can never both hold a majority
of the parent's voters, so at most one of them tags the next version; a swarm that loses a minority of its
voters at once (crashes, Ctrl-C, laptops closing) keeps tagging, and the next tag's smaller electorate is the
parent the continuity rule uses from then on.

Safety: ``VoteBox`` counts at most one vote per voter per candidate, and at most one ACCEPTING vote per voter
per version slot (run, proposed version), whatever the second vote says. Two different candidates can both
reach quorum for one version only if some voter of the parent's electorate signed an accept for each (two
parent majorities share at least one voter): a partition plus such a double-signing key (provable from the two
certificates). A reject does not use up the slot, so the next candidate after a rejected one reuses its number.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from fractions import Fraction

from p2pmodel.core.errors import IntegrityError, WireError
from p2pmodel.swarm.signed import open_signed
from p2pmodel.versioning.votes import (
    BUMPS,
    MAX_ELECTORATE,
    MAX_VOTE_BYTES,
    VOTE_KIND,
    check_vote_body,
    electorate_hash,
    is_count,
    is_hex64,
    is_id,
)

logger = logging.getLogger(__name__)

DEFAULT_FRACTION = 2 / 3
MAX_PENDING = 1024  # votes held for rounds whose electorate is not known yet
MAX_PENDING_PER_VOTER = 8


def _fraction(fraction: float) -> Fraction:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, Fraction)):
        raise ValueError(f"quorum fraction must be a number, got {fraction!r:.40}")
    if not math.isfinite(float(fraction)) or not 0.5 < fraction <= 1:
        raise ValueError(f"quorum fraction must be in (0.5, 1], got {fraction!r:.40}")
    return Fraction(fraction).limit_denominator(10**6)  # 2/3 as a float -> exactly 2/3


def quorum_size(n: int, fraction: float = DEFAULT_FRACTION) -> int:
    """Votes needed among ``n`` voters: ``floor(fraction*n)+1``, at most ``n`` (fraction 1 = unanimity).

    The default is ``floor(2n/3)+1``; ``n == 0`` gives 1 (nobody can tag alone with no electorate).
    """
    if not is_count(n):
        raise ValueError(f"electorate size must be a non-negative integer, got {n!r:.40}")
    need = math.floor(_fraction(fraction) * n) + 1
    return max(1, min(need, n))


def required_votes(electorate_size: int, bump: str, major_fraction: float) -> int:
    """Accepting votes of the round's electorate a tag needs; MAJOR uses the supermajority."""
    if bump not in BUMPS:
        raise ValueError(f"unknown bump {bump!r:.40}")
    return quorum_size(electorate_size, major_fraction if bump == "major" else DEFAULT_FRACTION)


def continuity_votes(parent_electorate_size: int) -> int:
    """Accepting votes a child tag needs from its parent's electorate: more than half of it (0 for a genesis)."""
    if not is_count(parent_electorate_size):
        raise ValueError(f"electorate size must be a non-negative integer, got {parent_electorate_size!r:.40}")
    return parent_electorate_size // 2 + 1 if parent_electorate_size else 0


class VoteBox:
    """Collects signed votes of one run; the only door through which a vote can count.

    ``add`` never raises on hostile bytes: it answers ``(counted, reason)``. Thread-safe.
    """

    def __init__(
        self,
        run_id: str,
        allowlist: set[str] | None = None,
        max_pending: int = MAX_PENDING,
        reopen_after_rounds: int | None = None,
    ):
        if not is_id(run_id):
            raise ValueError(f"bad run_id {run_id!r:.40}")
        self.run_id = run_id
        self.allowlist = frozenset(allowlist) if allowlist is not None else None
        self.max_pending = max_pending
        # liveness: an accepted candidate that never got tagged frees its voter's slot in the next window of
        # this many rounds (windows are round // n, shared by all voters so they re-align; the old acceptance
        # is retracted here, so it can never count for both)
        self.reopen_after_rounds = reopen_after_rounds
        self._lock = threading.Lock()
        self._electorates: dict[int, tuple[str, frozenset[str], str]] = {}  # round -> (digest, members, hash)
        self._pending: list[tuple[bytes, dict]] = []
        self._hold_window: tuple[int, int] | None = None  # (last committed round, furthest round held); see advance
        self._pending_per_voter: Counter[str] = Counter()
        self._slots: dict[tuple[str, str], tuple[str, int]] = {}  # (version, voter) -> (candidate, round)
        self._voted: set[tuple[str, str]] = set()  # (candidate, voter)
        self._counted: dict[str, dict[str, tuple[bytes, dict]]] = {}  # candidate -> voter -> (signed, body)

    # --- electorate snapshots -------------------------------------------------------------------
    def set_electorate(self, round: int, digest: str, members: list[str]) -> None:
        """Fix round ``round``'s membership snapshot (the peers that committed ``digest``), then re-check held votes.

        The first snapshot of a round wins: a later, different one is ignored with a warning (changing the
        electorate after votes were counted would let one voter count twice).
        """
        members = list(members)
        if not is_count(round) or not is_hex64(digest):
            raise ValueError(f"bad electorate snapshot key (round {round!r:.20}, digest {digest!r:.70})")
        if not members or len(set(members)) > MAX_ELECTORATE or not all(is_id(m) for m in members):
            raise ValueError(f"electorate must be 1..{MAX_ELECTORATE} PeerID strings")
        snapshot = (digest, frozenset(members), electorate_hash(members))
        with self._lock:
            known = self._electorates.get(round)
            if known is not None:
                if known != snapshot:
                    logger.warning("round %d already has an electorate snapshot; ignoring a different one", round)
                return
            self._electorates[round] = snapshot
            for data, body in self._take_pending(lambda r: r == round):
                _, reason = self._admit(data, body)
                logger.debug("held vote of %s for round %d: %s", body["voter"][:16], round, reason)

    def advance(self, committed: int, hold_ahead: int) -> None:
        """This peer committed round ``committed``: only votes of rounds in (committed, committed + hold_ahead]
        wait for an electorate from now on. Held votes of rounds up to it can never be judged here (their
        electorate was not set) and go, as do those of far rounds, so a stranger's votes neither fill the pending
        list nor travel on."""
        with self._lock:
            low, high = self._hold_window = (committed, committed + hold_ahead)
            self._take_pending(lambda r: not low < r <= high)

    def _take_pending(self, by_round) -> list[tuple[bytes, dict]]:
        """Caller holds the lock: remove and return the held votes whose round ``by_round`` selects."""
        taken = [(data, body) for data, body in self._pending if by_round(body["round"])]
        self._pending = [(data, body) for data, body in self._pending if not by_round(body["round"])]
        for _, body in taken:
            self._pending_per_voter[body["voter"]] -= 1
            if self._pending_per_voter[body["voter"]] <= 0:
                del self._pending_per_voter[body["voter"]]
        return taken

    def electorate(self, round: int) -> list[str] | None:
        """The snapshot set for ``round`` (sorted), or None."""
        with self._lock:
            known = self._electorates.get(round)
        return sorted(known[1]) if known else None

    # --- votes ----------------------------------------------------------------------------------
    def add(self, signed: bytes) -> tuple[bool, str]:
        """Check a signed vote and count it if valid: ``(counted, reason)``.

        A vote for a round whose electorate is not set yet answers ``(False, "held: ...")`` and is re-checked
        (and possibly counted) by ``set_electorate`` for that round.
        """
        try:
            if not isinstance(signed, (bytes, bytearray, memoryview)):
                return False, f"malformed: expected bytes, got {type(signed).__name__}"
            data = bytes(signed)
            if len(data) > MAX_VOTE_BYTES:
                return False, f"malformed: vote of {len(data)} bytes exceeds {MAX_VOTE_BYTES}"
            try:
                body, signer = open_signed(data, VOTE_KIND, MAX_VOTE_BYTES)
            except IntegrityError as e:
                return False, f"bad signature: {e}"
            except WireError as e:
                return False, f"malformed: {e}"
            try:
                check_vote_body(body)
            except WireError as e:
                return False, f"malformed: {e}"
            if signer != body["voter"]:
                return False, f"signer {signer[:16]} is not the voter {body['voter'][:16]}"
            if body["run_id"] != self.run_id:
                return False, f"vote of another run {body['run_id'][:16]}"
            if self.allowlist is not None and signer not in self.allowlist:
                return False, f"voter {signer[:16]} is not in the allowlist"
            with self._lock:
                if body["round"] not in self._electorates:
                    return self._hold(data, body)
                return self._admit(data, body)
        except Exception as e:  # defensive: hostile input must never take the caller down
            logger.debug("vote refused by an unexpected error", exc_info=True)
            return False, f"malformed: {type(e).__name__}"

    def _hold(self, data: bytes, body: dict) -> tuple[bool, str]:
        voter = body["voter"]
        if self._hold_window is not None and not self._hold_window[0] < body["round"] <= self._hold_window[1]:
            return False, f"refused: round {body['round']} is outside the rounds held here {self._hold_window}"
        if any(held == data for held, _ in self._pending):
            return False, f"held: already waiting for the electorate of round {body['round']}"
        if len(self._pending) >= self.max_pending:
            return False, "refused: too many votes waiting for an electorate"
        if self._pending_per_voter[voter] >= MAX_PENDING_PER_VOTER:
            return False, f"refused: too many waiting votes by {voter[:16]}"
        self._pending.append((data, body))
        self._pending_per_voter[voter] += 1
        return False, f"held: electorate of round {body['round']} is not set yet"

    def _admit(self, data: bytes, body: dict) -> tuple[bool, str]:
        """Checks that need the round's snapshot; counts the vote. Caller holds the lock."""
        digest, members, members_hash = self._electorates[body["round"]]
        voter, candidate = body["voter"], body["candidate"]
        if body["digest"] != digest:
            return False, f"replay: round {body['round']} committed {digest[:12]}, not {body['digest'][:12]}"
        if voter not in members:
            return False, f"voter {voter[:16]} is not in the electorate of round {body['round']}"
        if body["electorate"] != members_hash:
            return False, f"electorate hash of {voter[:16]}'s vote does not match round {body['round']}'s snapshot"
        slot = (body["version"], voter)
        if (candidate, voter) in self._voted:
            return False, f"second vote by {voter[:16]} for candidate {candidate[:12]}; the first one stands"
        if body["verdict"] == "accept":  # only acceptances use up a slot: a rejected candidate's number is reused
            if slot in self._slots:
                old_candidate, old_round = self._slots[slot]
                r = self.reopen_after_rounds  # slots reopen on a grid of r rounds, the same for every voter
                if r is None or body["round"] // r <= old_round // r:
                    return (
                        False,
                        f"second vote by {voter[:16]} accepting version slot {body['version']}; the first stands",
                    )
                self._counted.get(old_candidate, {}).pop(voter, None)  # retracted: never counts for both
            self._slots[slot] = (candidate, body["round"])
        self._voted.add((candidate, voter))
        self._counted.setdefault(candidate, {})[voter] = (data, body)
        return True, "counted"

    # --- tallies --------------------------------------------------------------------------------
    def accepting(self, candidate: str) -> list[bytes]:
        """Signed bytes of the counted accepting votes for ``candidate``, sorted by voter."""
        with self._lock:
            counted = self._counted.get(candidate, {})
            return [counted[v][0] for v in sorted(counted) if counted[v][1]["verdict"] == "accept"]

    def votes(self, candidate: str) -> list[dict]:
        """Bodies of the counted votes for ``candidate`` (accept and reject), sorted by voter."""
        with self._lock:
            counted = self._counted.get(candidate, {})
            return [dict(counted[v][1]) for v in sorted(counted)]

    def candidates(self) -> list[str]:
        """Candidates with at least one counted vote."""
        with self._lock:
            return sorted(self._counted)

    def slot_taken(self, version: str, voter: str) -> bool:
        """Whether ``voter`` already has a counted vote for ``version`` (e.g. our own, before voting again)."""
        with self._lock:
            return (str(version), voter) in self._slots

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)
