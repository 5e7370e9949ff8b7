"""Who contributed to each committed round, kept by a peer until a tag covers it: the authorship record.

After each commit the round's exchange says whose updates the committed state used, with the samples each
claimed (all-reduce: the group members' gathered claims; broadcast: the accepted updates' announcements; alone:
this peer). A peer that adopted another state in the commit step records nothing for that round: it cannot know.

A vote on a release candidate carries its voter's tally over the rounds since the parent tag
(``versioning/votes.py``, field ``contributors``); a tag's contributors are the tally its accepting votes agree
on (``versioning/tag.contributors``). Records of rounds a tag covers are dropped; the file is rewritten
atomically after each commit, so a restart keeps them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from p2pmodel.versioning.atomic import atomic_write
from p2pmodel.versioning.votes import MAX_CONTRIBUTORS

log = logging.getLogger("p2pmodel.contributions")
MAX_ROUNDS = 4096  # rounds kept when no tag comes: the oldest go first


class ContributionLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._rounds: dict[int, dict[str, int]] = {}
        try:
            raw = json.loads(self.path.read_text())
            self._rounds = {int(r): {str(p): int(n) for p, n in c.items()} for r, c in raw.items()}
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError) as e:  # a damaged record loses authorship, not training
            log.warning("ignoring %s: %s", self.path, e)

    def record(self, round_: int, contributions: dict[str, int], covered: int) -> None:
        """Keep ``round_``'s contributions (nothing if empty: unknown); drop rounds up to ``covered`` (tagged)."""
        for old in [r for r in self._rounds if r <= covered or r >= round_]:
            del self._rounds[old]  # rounds at or after this one belong to a state this peer left (a re-sync)
        if contributions:
            self._rounds[round_] = dict(contributions)
        for old in sorted(self._rounds)[:-MAX_ROUNDS]:
            del self._rounds[old]
        atomic_write(self.path, json.dumps(self._rounds, sort_keys=True).encode())

    def get(self, round_: int) -> dict[str, int] | None:
        return self._rounds.get(round_)

    def tally(self, after: int, upto: int) -> list[list]:
        """Samples per peer over the recorded rounds in (``after``, ``upto``], as sorted [peer, samples] pairs;
        past MAX_CONTRIBUTORS peers, those with the most samples."""
        total: Counter[str] = Counter()
        for r, c in self._rounds.items():
            if after < r <= upto:
                total.update(c)
        top = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CONTRIBUTORS]
        return [[peer, n] for peer, n in sorted(top)]
