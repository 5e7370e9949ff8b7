"""When each round closed, as this peer learned it (its own "ready", another's gossip push or DHT record).

Only rounds just ahead of the last commit are kept: "ready" messages are signed but any member may send them,
for any round number, so an unbounded map would be memory a stranger could fill."""

from __future__ import annotations

import threading
import time

ROUNDS_AHEAD = 4  # a peer further behind than this re-syncs its state before it trains that round anyway


class RoundCloses:
    def __init__(self, rounds_ahead: int = ROUNDS_AHEAD):
        self.rounds_ahead = rounds_ahead
        self._since: dict[int, float] = {}  # round -> time.monotonic() when it closed here
        self._lock = threading.Lock()  # the gossip handler, the DHT poller and the round loop all write

    def mark(self, round_: int, committed: int) -> bool:
        """``round_`` closed; ``committed`` is this peer's last committed round (older entries are dropped).

        Returns whether ``round_`` is near enough to ``committed`` (either side) to be worth passing on to peers:
        the gossip handler refuses the rest, so a "ready" for an absurd round stops at the first honest hop."""
        with self._lock:
            for r in [r for r in self._since if r <= committed]:
                del self._since[r]
            if committed < round_ <= committed + self.rounds_ahead:
                self._since.setdefault(round_, time.monotonic())
        return committed - self.rounds_ahead < round_ <= committed + self.rounds_ahead

    def __contains__(self, round_: int) -> bool:
        return round_ in self._since

    def closed_for(self, round_: int) -> float | None:
        """Seconds since ``round_`` closed, None while it is open."""
        since = self._since.get(round_)
        return None if since is None else time.monotonic() - since

    def __len__(self) -> int:
        return len(self._since)
