"""When a peer cannot keep up with the swarm's exchange, it sits rounds out instead of stalling the others.

A peer on a link ~10x slower than the swarm's (benchmarks/links.py --slow-link 3=10: 0.1 Mbit/s against 1 Mbit/s)
never completes an all-reduce in time: it averages alone, its digest loses every commit step, and while it
still says "ready" and votes, the others wait for its digest and expect it in every group. Measured before this
existed: from the second round on the fast peers' groups fragmented, four peers held four digests, and the tie
went to the slow peer's own state, which nobody could then download from it in time.

So a peer judges itself, from what it saw of its own rounds: a *miss* is a round it did not average in while at
least two other peers agreed on a state without it. After ``after_misses`` misses in a row, or at once when its
all-reduce ran but lost most of the other reducers' parts (the exchange itself measured its link as the one too
slow), it sits out the next ``span`` rounds: it announces "leave" (the others stop expecting it in groups and in
the commit step), trains no inner phase (node/round.py: it waits for the others to close each round) and takes
their committed state after each round (a re-sync). Then it announces "join" and tries again; a miss on that
first try doubles the span (up to ``max_span``), a round averaged in resets it. Only the peer itself is judged:
one slow peer cannot talk a fast one out of the swarm."""

from __future__ import annotations

from dataclasses import dataclass

LINK = 2  # what ``misses`` returns for a round whose all-reduce lost most parts


def misses(averaged: bool, failed_reducers: int, group_size: int, won: bool, winner_votes: int) -> int:
    """How much a round counts against this peer (module doc), when the others agreed without it (``winner_votes``
    >= 2, not its digest): ``LINK`` when its all-reduce ran and most other reducers' parts never reached it (the
    exchange itself measured its link as the one too slow: sit out now), 1 when it did not average (a late start,
    or a matchmaking window missed, is one too), else 0."""
    if won or winner_votes < 2:
        return 0
    if not averaged:
        return 1
    return LINK if 2 * failed_reducers > group_size - 1 else 0


@dataclass
class SitOut:
    after_misses: int = 3
    first_span: int = 2
    max_span: int = 32
    misses: int = 0  # in a row, in rounds this peer tried
    span: int = 0  # the next sit-out's length (first_span until a sit-out happened)
    until: int = 0  # sits out every round <= until
    trying: bool = False  # the first round after a sit-out: one miss sends it back out

    def sits_out(self, round_: int) -> bool:
        return round_ <= self.until

    def record(self, round_: int, missed: int) -> bool:
        """How much committed round ``round_`` counted against this peer (``misses``); True when a sit-out starts now
        (rounds round_ + 1 .. ``until``). Rounds sat out count for nothing."""
        if self.sits_out(round_):
            self.trying = round_ == self.until
            return False
        if not missed:
            self.misses, self.span, self.trying = 0, 0, False
            return False
        self.misses += 1
        if self.misses < self.after_misses and not self.trying and missed != LINK:
            return False
        self.span = min(self.max_span, 2 * self.span if self.span else self.first_span)
        self.until, self.misses, self.trying = round_ + self.span, 0, False
        return True
