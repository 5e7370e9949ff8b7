"""Votes on release candidates: their body schema, candidate ids and electorate hashes.

A vote travels as ``sign_message(identity, VOTE_KIND, body)`` (swarm/signed.py); the body is::

    {"candidate": sha256 hex of (run_id, round, digest)    -- what is voted on
     "run_id": str, "round": int, "digest": sha256 hex      -- the candidate state
     "object_sha256": sha256 hex of its checkpoint file
     "parent": "vX.Y.Z" or "" (genesis), "version": "vX.Y.Z" == next_version(parent, bump)
     "metrics": {name: finite float}                        -- the voter's eval of the candidate
     "verdict": "accept" | "reject", "bump": "patch" | "minor" | "major"
     "voter": PeerID (must equal the signer), "electorate": electorate_hash(members of that round)
     "time": unix seconds
     "contributors": [[PeerID, samples], ...]              -- optional: the voter's record of whose updates the
                                                               rounds since the parent used (sorted, unique)
     "rounds": [[sha256 hex, bytes], ...]                   -- optional: the round objects (round_object.py) that
                                                               lead from the parent's state to this one, in order
     "momentum": sha256 hex                                 -- optional: the candidate's outer momentum blob}

``check_vote_body`` is the schema gate every received vote passes before anything looks at it; counting
happens only in ``quorum.VoteBox`` and ``tag.verify_tag``.
"""

from __future__ import annotations

import math

from p2pmodel.core.errors import WireError
from p2pmodel.core.ids import is_hex64, sha256_hex
from p2pmodel.swarm.signed import canonical_pack
from p2pmodel.versioning.semver import Version, next_version

VOTE_KIND = "vote"
BUMPS = ("patch", "minor", "major")
VERDICTS = ("accept", "reject")
MAX_VOTE_BYTES = 24 << 10  # 32 metrics of 64-char names, 256 contributors, 32 round refs, RSA-4096 key: < 23 KiB
MAX_METRICS = 32
MAX_METRIC_NAME = 64
MAX_ID_CHARS = 128  # run ids, PeerIDs
MAX_ELECTORATE = 1024
MAX_CONTRIBUTORS = 256  # per vote; a voter that recorded more lists those with the most samples
MAX_ROUND_REFS = 32  # round objects per vote (~2.6 KB); a longer stretch since the parent is pulled whole
MAX_BLOB_BYTES = 1 << 40

VOTE_FIELDS = (
    "bump",
    "candidate",
    "digest",
    "electorate",
    "metrics",
    "object_sha256",
    "parent",
    "round",
    "run_id",
    "time",
    "verdict",
    "version",
    "voter",
)
OPTIONAL_VOTE_FIELDS = ("contributors", "rounds", "momentum")


class VoteError(WireError, ValueError):
    """A vote body that does not validate: a WireError for the network, a ValueError for local callers."""


def is_id(v: object) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_ID_CHARS


def is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def candidate_id(run_id: str, round: int, digest: str) -> str:
    """Name of the release candidate: every peer holding the same state at that round gets the same id."""
    if not is_id(run_id) or not is_count(round) or not is_hex64(digest):
        raise ValueError(f"bad candidate (run_id, round, digest): {run_id!r:.40}, {round!r:.20}, {digest!r:.70}")
    return sha256_hex(canonical_pack([run_id, round, digest]))


def electorate_hash(members: list[str]) -> str:
    """Order-independent sha256 hex of a set of PeerIDs (duplicates count once)."""
    members = list(members)
    if not all(is_id(m) for m in members):
        raise ValueError("electorate members must be non-empty PeerID strings")
    return sha256_hex(canonical_pack(sorted(set(members))))


def is_contributor_list(v: object) -> bool:
    """[[PeerID, samples], ...] sorted by PeerID without repeats, at most MAX_CONTRIBUTORS."""
    return (
        isinstance(v, list)
        and len(v) <= MAX_CONTRIBUTORS
        and all(isinstance(e, list) and len(e) == 2 and is_id(e[0]) and is_count(e[1]) for e in v)
        and all(a[0] < b[0] for a, b in zip(v, v[1:], strict=False))
    )


def is_round_refs(v: object) -> bool:
    """[[sha256 hex, bytes], ...]: 1 to MAX_ROUND_REFS round objects with their sizes."""
    return (
        isinstance(v, list)
        and 0 < len(v) <= MAX_ROUND_REFS
        and all(
            isinstance(e, list) and len(e) == 2 and is_hex64(e[0]) and is_count(e[1]) and 0 < e[1] <= MAX_BLOB_BYTES
            for e in v
        )
    )


def _fail(field: str, value: object) -> VoteError:
    return VoteError(f"vote field {field!r} is invalid: {value!r:.80}")


def check_metrics(metrics: object) -> None:
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
        raise VoteError(f"vote field 'metrics' must be a map of at most {MAX_METRICS} entries")
    for name, value in metrics.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_METRIC_NAME:
            raise VoteError(f"vote field 'metrics' has a bad name: {name!r:.80}")
        if not isinstance(value, float) or not math.isfinite(value):
            raise VoteError(f"vote field 'metrics' value of {name!r} is not a finite float: {value!r:.40}")


def _canonical_version(body: dict, field: str) -> Version:
    """The field's Version; it must be written canonically (``vX.Y.Z``) so one version has one spelling."""
    try:
        version = Version.parse(body[field])
    except ValueError:
        raise _fail(field, body[field]) from None
    if str(version) != body[field]:
        raise VoteError(f"vote field {field!r} must be written {version}, not {body[field]!r:.40}")
    return version


def check_vote_body(body: dict) -> dict:
    """Return ``body`` if it is exactly a valid vote body; else VoteError (a WireError) naming the field."""
    if not isinstance(body, dict) or not set(VOTE_FIELDS) <= set(body) <= {*VOTE_FIELDS, *OPTIONAL_VOTE_FIELDS}:
        got = sorted(map(str, body))[:20] if isinstance(body, dict) else type(body).__name__
        raise VoteError(f"vote has fields {got}, expected {list(VOTE_FIELDS)} (and optionally {OPTIONAL_VOTE_FIELDS})")
    if "contributors" in body and not is_contributor_list(body["contributors"]):
        raise _fail("contributors", body["contributors"])
    if "rounds" in body and not is_round_refs(body["rounds"]):
        raise _fail("rounds", body["rounds"])
    if "momentum" in body and not is_hex64(body["momentum"]):
        raise _fail("momentum", body["momentum"])
    checks = {
        "run_id": is_id,
        "round": is_count,
        "digest": is_hex64,
        "object_sha256": is_hex64,
        "candidate": is_hex64,
        "electorate": is_hex64,
        "voter": is_id,
        "verdict": lambda v: isinstance(v, str) and v in VERDICTS,
        "bump": lambda v: isinstance(v, str) and v in BUMPS,
        "time": lambda v: isinstance(v, float) and math.isfinite(v) and v >= 0,
        "parent": lambda v: isinstance(v, str) and len(v) <= 40,
        "version": lambda v: isinstance(v, str) and len(v) <= 40,
    }
    for field, ok in checks.items():
        if not ok(body[field]):
            raise _fail(field, body[field])
    check_metrics(body["metrics"])
    version = _canonical_version(body, "version")
    parent = _canonical_version(body, "parent") if body["parent"] else None
    if version != next_version(parent, body["bump"]):
        raise VoteError(
            f"vote field 'version' {body['version']} is not {body['bump']} of parent {body['parent'] or 'none'}"
        )
    if body["candidate"] != candidate_id(body["run_id"], body["round"], body["digest"]):
        raise VoteError("vote field 'candidate' does not match (run_id, round, digest)")
    return body


def _spelled(v: object) -> object:
    """Canonical spelling of a version given as str or Version; anything else is left for the schema to refuse."""
    try:
        return str(Version.parse(v))
    except ValueError:
        return v


def make_vote(
    *,
    run_id: str,
    round: int,
    digest: str,
    object_sha256: str,
    parent: str,
    version: str,
    metrics: dict[str, float],
    verdict: str,
    bump: str,
    voter: str,
    electorate: list[str],
    time: float,
    contributors: list[list] | None = None,
    rounds: list[list] | None = None,
    momentum: str | None = None,
) -> dict:
    """Build and validate a vote body (sign it with ``sign_message(identity, VOTE_KIND, body)``).

    ``parent``/``version`` may be strings or ``Version``; ``parent`` is ``""`` (or None) for the genesis.
    Raises VoteError (a ValueError and a WireError) naming the bad field.
    """
    try:
        cand = candidate_id(run_id, round, digest)
        members = electorate_hash(electorate)
    except ValueError as e:
        raise VoteError(str(e)) from None
    if not isinstance(metrics, dict):
        raise _fail("metrics", metrics)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
        raise _fail("metrics", metrics)
    try:
        floats = {k: float(v) for k, v in metrics.items()}
    except OverflowError:  # an int too large for a float
        raise _fail("metrics", metrics) from None
    body = {
        "candidate": cand,
        "run_id": run_id,
        "round": round,
        "digest": digest,
        "object_sha256": object_sha256,
        "parent": _spelled(parent) if parent else "",
        "version": _spelled(version),
        "metrics": floats,
        "verdict": verdict,
        "bump": bump,
        "voter": voter,
        "electorate": members,
        "time": float(time) if isinstance(time, (int, float)) and not isinstance(time, bool) else time,
    }
    if contributors is not None:
        body["contributors"] = [list(e) for e in contributors]
    if rounds is not None:
        body["rounds"] = [list(e) for e in rounds]
    if momentum is not None:
        body["momentum"] = momentum
    return check_vote_body(body)
