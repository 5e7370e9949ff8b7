"""The commit step: after the outer step every participant of a round announces the digest it holds; the digest
most of them hold is the round's state, and a peer holding another one re-syncs (DESIGN: "Commit step").

Who counts: the peers that took part in the round (its averaging group, and every peer that announced "ready"
for it, which may have ended in another group), less those that left or are no longer connected. Waiting for
everyone with a live peer record instead made one crashed peer cost every survivor the whole deadline each
round until its record expired (a minute)."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from p2pmodel.core.ids import is_hex64
from p2pmodel.swarm.records import get_digests, publish_digest

log = logging.getLogger("p2pmodel.commit")
POLL_S = 0.3


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


@dataclass(frozen=True)
class Agreement:
    """How a round's commit step ended."""

    winner: str  # the digest every participant holds after it
    committed_by: list[str] = field(default_factory=list)  # the peers whose digests decided it (this one included)
    missing: list[str] = field(default_factory=list)  # participants waited for until the deadline, in vain


class CommitStep:
    def __init__(self, dht, identity, run_id: str, ttl_s: float):
        self.dht, self.identity, self.run_id, self.ttl_s = dht, identity, run_id, ttl_s

    def agree(
        self,
        round_: int,
        digest: str,
        participants: Callable[[], Iterable[str]],
        eligible: Callable[[], Iterable[str]],
        deadline_s: float,
        former: Callable[[], Iterable[str]] = frozenset,
    ) -> Agreement:
        """Announce ``digest`` for ``round_`` and wait (at most ``deadline_s``) for the digests of the round's
        ``participants()`` (re-read while waiting: a peer that leaves or disconnects stops being waited for).

        The majority is taken over the digests of every ``eligible()`` peer of the run (and every ``former()`` one,
        which left since) that has announced one by then (participants included), not only those waited for: a
        peer that missed the others' "ready" (it was restarting, or its group failed) still sees the state most of
        them hold, and a last round's majority that stopped right after it still counts. The winner is ours when
        nobody else answered.

        It stops waiting as soon as one digest is held by more than half of everyone who could vote (the
        participants and the eligible peers as known when the step began): no later answer can outvote it. A
        peer that restarted and trained the round alone no longer holds the others up for the whole deadline."""
        me = self.identity.peer_id
        publish_digest(self.dht, self.identity, self.run_id, round_, digest, self.ttl_s)
        deadline = time.monotonic() + deadline_s
        live = set(eligible()) | {me}
        gone = set(former())
        while True:
            expected = set(participants()) | {me}
            digests = get_digests(self.dht, self.run_id, round_)
            if expected <= set(digests) or time.monotonic() >= deadline:
                break
            if settled(digests | {me: digest}, live | expected | (gone & set(digests))):
                break
            time.sleep(POLL_S)
        # only peers known to be in this run vote, and only with a real digest ("" would send everyone re-syncing);
        # a peer that left after committing this round voted like the others
        voters = expected | set(eligible()) | set(former())
        votes = {p: d for p, d in digests.items() if p in voters and is_hex64(d)}
        votes[me] = digest
        missing = sorted(expected - set(digests))
        if missing:
            log.info("round %d: no digest from %d participant(s) in time: %s", round_, len(missing), missing[:4])
        return Agreement(majority(votes) or digest, sorted(votes), missing)
