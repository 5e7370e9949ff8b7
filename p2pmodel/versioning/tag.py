"""Tags: self-verifying certificates that a release candidate became a version.

A tag (certificate) is a plain map::

    {"version": "vX.Y.Z", "run_id", "digest", "object_sha256", "parent": "vX.Y.Z" or "" (genesis),
     "round", "candidate", "bump", "electorate": [sorted PeerIDs of the round],
     "required": accepting votes needed, "metrics": {name: median over the accepting votes},
     "votes": [signed vote bytes, sorted by voter], "time": latest vote time}

``verify_tag`` trusts nothing in it: it re-checks every vote signature, the voters, their agreement, the
quorum (over this round's electorate, plus more than half of the parent's electorate: ``quorum.py``), the
version arithmetic and the metrics.
``tag_id`` names what a tag asserts (version, run, digest, parent, round): two valid certificates with the
same ``tag_id`` are the same tag (possibly with different vote subsets); two different ``tag_id`` for one
version are a conflict, which a ledger never stores. To send one: ``encode_tag``/``decode_tag``, or sign it
as ``sign_message(identity, TAG_KIND, cert)``.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

from p2pmodel.core import wire
from p2pmodel.core.errors import IntegrityError, WireError
from p2pmodel.core.ids import sha256_hex
from p2pmodel.swarm.signed import canonical_pack, open_signed
from p2pmodel.versioning.quorum import continuity_votes, required_votes
from p2pmodel.versioning.semver import Version, next_version
from p2pmodel.versioning.votes import (
    BUMPS,
    MAX_ELECTORATE,
    MAX_VOTE_BYTES,
    VOTE_KIND,
    VoteError,
    candidate_id,
    check_metrics,
    check_vote_body,
    electorate_hash,
    is_count,
    is_hex64,
    is_id,
)

TAG_KIND = "tag"
TAG_FIELDS = (
    "bump",
    "candidate",
    "digest",
    "electorate",
    "metrics",
    "object_sha256",
    "parent",
    "required",
    "round",
    "run_id",
    "time",
    "version",
    "votes",
)
MAX_TAG_BYTES = MAX_ELECTORATE * MAX_VOTE_BYTES + (256 << 10)
DEFAULT_MAJOR_FRACTION = 0.8
# what every vote in a tag must agree on with the tag itself
_AGREED = ("candidate", "run_id", "round", "digest", "object_sha256", "parent", "version", "bump")


def tag_id(cert: dict) -> str:
    """sha256 hex of what the tag asserts: (version, run_id, digest, parent, round)."""
    return sha256_hex(canonical_pack([cert["version"], cert["run_id"], cert["digest"], cert["parent"], cert["round"]]))


def median_metrics(bodies: list[dict], min_count: int) -> dict[str, float]:
    """Per metric name, the median over the votes reporting it; only names reported by >= ``min_count`` votes
    (so a minority cannot inject a metric)."""
    counts = Counter(name for b in bodies for name in b["metrics"])
    return {
        name: float(statistics.median(b["metrics"][name] for b in bodies if name in b["metrics"]))
        for name in sorted(counts)
        if counts[name] >= min_count
    }


def _parent_of(parent_cert: dict | None) -> tuple[str, frozenset[str]]:
    """(parent version string, parent electorate) of an already trusted parent certificate."""
    if parent_cert is None:
        return "", frozenset()
    return str(Version.parse(parent_cert["version"])), frozenset(parent_cert["electorate"])


def build_tag(
    *,
    votes: list[bytes],
    electorate: list[str],
    parent_cert: dict | None,
    major_fraction: float = DEFAULT_MAJOR_FRACTION,
    allowlist: set[str] | None = None,
) -> dict:
    """Form a certificate from signed votes (e.g. ``VoteBox.accepting(candidate)``); ValueError if no quorum.

    Invalid votes, rejects, outsiders, votes naming another parent or electorate, and repeated voters are
    left out; among the remaining accepting votes, grouped by what they propose, the largest group that
    reaches the required count becomes the tag. The result passes ``verify_tag``.
    """
    members = sorted(set(electorate))
    if not members or len(members) > MAX_ELECTORATE or not all(is_id(m) for m in members):
        raise ValueError(f"electorate must be 1..{MAX_ELECTORATE} PeerID strings")
    member_set, members_hash = set(members), electorate_hash(members)
    parent, parent_members = _parent_of(parent_cert)
    continuity = continuity_votes(len(parent_members))
    groups: dict[tuple, dict[str, tuple[bytes, dict]]] = {}
    for data in votes:
        try:
            body, signer = open_signed(data, VOTE_KIND, MAX_VOTE_BYTES)
            check_vote_body(body)
        except (WireError, IntegrityError):
            continue
        if (
            signer != body["voter"]
            or signer not in member_set
            or (allowlist is not None and signer not in allowlist)
            or body["verdict"] != "accept"
            or body["electorate"] != members_hash
            or body["parent"] != parent
        ):
            continue
        groups.setdefault(tuple(body[k] for k in _AGREED), {}).setdefault(signer, (bytes(data), body))
    best, need = None, 0
    for key, by_voter in groups.items():
        bump = key[_AGREED.index("bump")]
        required = required_votes(len(members), bump, major_fraction)
        enough = len(by_voter) >= required and len(parent_members & set(by_voter)) >= continuity
        if enough and (best is None or len(by_voter) > len(groups[best])):
            best, need = key, required
    if best is None:
        most = max((len(g) for g in groups.values()), default=0)
        raise ValueError(f"votes do not make a quorum: at most {most} agreeing valid accepting votes")
    chosen = [groups[best][v] for v in sorted(groups[best])]
    bodies = [body for _, body in chosen]
    first = bodies[0]
    cert = {k: first[k] for k in _AGREED}
    cert.update(
        electorate=members,
        required=need,
        metrics=median_metrics(bodies, need),
        votes=[data for data, _ in chosen],
        time=max(b["time"] for b in bodies),
    )
    try:
        verify_tag(cert, parent_cert, allowlist=allowlist, major_fraction=major_fraction)
    except IntegrityError as e:
        raise ValueError(f"votes do not make a valid tag: {e}") from None
    return cert


def _bad(msg: str) -> IntegrityError:
    return IntegrityError(f"invalid tag: {msg}")


def check_tag_schema(cert: dict) -> Version:
    """Exact fields, types and sizes of a certificate (no signatures); returns its Version. IntegrityError."""
    if not isinstance(cert, dict) or set(cert) != set(TAG_FIELDS):
        got = sorted(map(str, cert))[:20] if isinstance(cert, dict) else type(cert).__name__
        raise _bad(f"fields {got}, expected {list(TAG_FIELDS)}")
    checks = {
        "run_id": is_id,
        "round": is_count,
        "digest": is_hex64,
        "object_sha256": is_hex64,
        "candidate": is_hex64,
        "bump": lambda v: isinstance(v, str) and v in BUMPS,
        "required": lambda v: is_count(v) and 0 < v <= MAX_ELECTORATE,
        "time": lambda v: isinstance(v, float) and math.isfinite(v) and v >= 0,
        "version": lambda v: isinstance(v, str) and len(v) <= 40,
        "parent": lambda v: isinstance(v, str) and len(v) <= 40,
        "electorate": lambda v: (
            isinstance(v, list)
            and 0 < len(v) <= MAX_ELECTORATE
            and all(is_id(m) for m in v)
            and all(a < b for a, b in zip(v, v[1:], strict=False))
        ),
        "votes": lambda v: (
            isinstance(v, list)
            and 0 < len(v) <= MAX_ELECTORATE
            and all(isinstance(x, bytes) and len(x) <= MAX_VOTE_BYTES for x in v)
        ),
    }
    for field, ok in checks.items():
        if not ok(cert[field]):
            raise _bad(f"field {field!r} is {cert[field]!r:.80}")
    try:
        check_metrics(cert["metrics"])  # the same bounds as in votes
        version = Version.parse(cert["version"])
        parent = Version.parse(cert["parent"]) if cert["parent"] else None
    except (VoteError, ValueError) as e:
        raise _bad(str(e)) from None
    if str(version) != cert["version"] or (parent is not None and str(parent) != cert["parent"]):
        raise _bad("versions must be written vX.Y.Z")
    return version


def verify_tag(
    cert: dict,
    parent_cert: dict | None,
    allowlist: set[str] | None = None,
    major_fraction: float = DEFAULT_MAJOR_FRACTION,
) -> None:
    """Check a certificate against its (already trusted) parent; IntegrityError naming what is wrong."""
    version = check_tag_schema(cert)
    parent, parent_members = _parent_of(parent_cert)
    if cert["parent"] != parent:
        raise _bad(f"parent is {cert['parent'] or 'none (genesis)'}, expected {parent or 'none (genesis)'}")
    if parent_cert is not None:
        if parent_cert.get("run_id") != cert["run_id"]:
            raise _bad("parent belongs to another run")
        if not cert["round"] > parent_cert["round"]:
            raise _bad(f"round {cert['round']} is not after the parent's round {parent_cert['round']}")
    expected = next_version(Version.parse(parent) if parent else None, cert["bump"])
    if version != expected:
        raise _bad(f"version {version} is not {cert['bump']} of {parent or 'genesis'} ({expected})")
    if cert["candidate"] != candidate_id(cert["run_id"], cert["round"], cert["digest"]):
        raise _bad("candidate does not match (run_id, round, digest)")
    required = required_votes(len(cert["electorate"]), cert["bump"], major_fraction)
    if cert["required"] != required:
        raise _bad(f"required is {cert['required']}, expected {required}")
    members, members_hash = set(cert["electorate"]), electorate_hash(cert["electorate"])
    bodies, voters = [], set()
    for i, data in enumerate(cert["votes"]):
        try:
            body, signer = open_signed(data, VOTE_KIND, MAX_VOTE_BYTES)
            check_vote_body(body)
        except (WireError, IntegrityError) as e:
            raise _bad(f"vote {i}: {e}") from None
        voter = body["voter"]
        if signer != voter:
            raise _bad(f"vote {i} is signed by {signer[:16]}, not its voter {voter[:16]}")
        if voter not in members:
            raise _bad(f"vote {i} is by {voter[:16]}, outside the electorate")
        if allowlist is not None and voter not in allowlist:
            raise _bad(f"vote {i} is by {voter[:16]}, outside the allowlist")
        for k in _AGREED:
            if body[k] != cert[k]:
                raise _bad(f"vote {i} by {voter[:16]} has {k} {body[k]!r:.70}, the tag has {cert[k]!r:.70}")
        if body["electorate"] != members_hash:
            raise _bad(f"vote {i} by {voter[:16]} names another electorate")
        if body["verdict"] != "accept":
            raise _bad(f"vote {i} by {voter[:16]} is a {body['verdict']!r}, not an accept")
        if voter in voters:
            raise _bad(f"voter {voter[:16]} appears twice")
        voters.add(voter)
        bodies.append(body)
    if len(bodies) < required:
        raise _bad(f"{len(bodies)} accepting votes, {required} required")
    continuing = len(parent_members & voters)
    if continuing < continuity_votes(len(parent_members)):
        need = continuity_votes(len(parent_members))
        raise _bad(f"{continuing} accepting votes of the parent's {len(parent_members)} voters, {need} required")
    if cert["metrics"] != median_metrics(bodies, required):
        raise _bad("metrics are not the median of the votes")


def contributors(cert: dict) -> tuple[list[list], int]:
    """Who contributed to the rounds since the parent tag, as the tag's votes record it: the [[peer, samples], ...]
    list carried by the most accepting votes (ties: the larger total of samples, then the smaller encoding), and
    how many votes carry exactly that list. ([], 0) when no vote carries one. Each voter signed its own list (the
    rounds it committed itself): a voter that joined late or re-synced in between lists less, and is not counted.
    Call on a verified tag."""
    lists: Counter[bytes] = Counter()
    for data in cert["votes"]:
        body, _ = open_signed(data, VOTE_KIND, MAX_VOTE_BYTES)
        if "contributors" in body:
            lists[canonical_pack(body["contributors"])] += 1
    if not lists:
        return [], 0

    def rank(item: tuple[bytes, int]) -> tuple:
        packed, count = item
        return (-count, -sum(n for _, n in wire.unpack(packed, MAX_VOTE_BYTES)), packed)

    best, count = min(lists.items(), key=rank)
    return [list(e) for e in wire.unpack(best, MAX_VOTE_BYTES)], count


def patch_refs(cert: dict) -> tuple[list[list] | None, str | None]:
    """How to reach this tag's state by patch, as its accepting votes record it: the round objects [[id, bytes], ...]
    from the parent's state, in order, and the outer momentum blob id, each the one most of them carry (ties: the
    smaller encoding); None where no accepting vote carries one (a genesis tag has no rounds). Nothing here is
    trusted yet: a replay checks every object against the parent and child digests, and the end against the tag's
    digest and this momentum. Call on a verified tag."""
    counts: dict[str, Counter[bytes]] = {"rounds": Counter(), "momentum": Counter()}
    for data in cert["votes"]:
        body, _ = open_signed(data, VOTE_KIND, MAX_VOTE_BYTES)
        if body.get("verdict") == "accept":
            for name, counter in counts.items():
                if name in body:
                    counter[canonical_pack(body[name])] += 1
    best = {
        name: wire.unpack(min(c.items(), key=lambda item: (-item[1], item[0]))[0], MAX_VOTE_BYTES) if c else None
        for name, c in counts.items()
    }
    rounds = [list(e) for e in best["rounds"]] if best["rounds"] is not None else None
    return rounds, best["momentum"]


def encode_tag(cert: dict) -> bytes:
    """Canonical msgpack bytes of a certificate."""
    return canonical_pack(cert)


def decode_tag(data: bytes, max_bytes: int = MAX_TAG_BYTES) -> dict:
    """Decode untrusted certificate bytes and check the schema (not the votes: call ``verify_tag``).

    Raises WireError for malformed bytes, IntegrityError for a bad schema.
    """
    cert = wire.unpack(data, max_bytes)
    check_tag_schema(cert)
    return cert
