"""Semantic versions of the weights: ``vMAJOR.MINOR.PATCH`` (DESIGN.md section 3, "Versions").

PATCH: same parameter schema, no eval regression beyond tolerance. MINOR: architecture grown while keeping
the old function. MAJOR: breaking change, needs a supermajority. The first tag of a run is ``GENESIS``
(v0.1.0); every later tag is ``next_version(parent, bump)``, so the version of a tag is determined by its
parent and its bump and two honest peers can never disagree on what a candidate would be called.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BUMP_KINDS = ("patch", "minor", "major")
MAX_COMPONENT = 10**9  # far beyond any real lineage; keeps hostile version strings small
_VERSION = re.compile(r"v?(0|[1-9][0-9]{0,9})\.(0|[1-9][0-9]{0,9})\.(0|[1-9][0-9]{0,9})", re.ASCII)


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int

    def __post_init__(self) -> None:
        for name in ("major", "minor", "patch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COMPONENT:
                raise ValueError(f"version {name} must be an integer in [0, {MAX_COMPONENT}], got {value!r:.40}")

    @classmethod
    def parse(cls, s: str | Version) -> Version:
        """``"v0.1.0"`` or ``"0.1.0"`` (no leading zeros, nothing else); ValueError otherwise."""
        if isinstance(s, Version):
            return s
        if not isinstance(s, str) or len(s) > 40:
            raise ValueError(f"not a version (expected vMAJOR.MINOR.PATCH): {s!r:.40}")
        m = _VERSION.fullmatch(s)
        if m is None:
            raise ValueError(f"not a version (expected vMAJOR.MINOR.PATCH): {s!r:.40}")
        return cls(*(int(g) for g in m.groups()))

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"

    def bump(self, kind: str) -> Version:
        """The next version for a ``"patch"``, ``"minor"`` or ``"major"`` change (lower components reset)."""
        if kind == "patch":
            return Version(self.major, self.minor, self.patch + 1)
        if kind == "minor":
            return Version(self.major, self.minor + 1, 0)
        if kind == "major":
            return Version(self.major + 1, 0, 0)
        raise ValueError(f"unknown bump {kind!r:.40}; expected one of {', '.join(BUMP_KINDS)}")


GENESIS = Version(0, 1, 0)


def next_version(parent: Version | None, bump: str) -> Version:
    """The version a candidate gets: ``GENESIS`` for the first tag of a run, else ``parent.bump(bump)``."""
    if bump not in BUMP_KINDS:
        raise ValueError(f"unknown bump {bump!r:.40}; expected one of {', '.join(BUMP_KINDS)}")
    return GENESIS if parent is None else parent.bump(bump)
