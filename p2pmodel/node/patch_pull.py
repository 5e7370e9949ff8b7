"""``versions pull VERSION --from DIR``: reach a tag's state from an earlier pulled version by fetching only the
round objects between them (versioning/round_object.py) and replaying them, instead of the whole state.

What is trusted: the certificates (verified by the ledger) and DIR's weights (checked against its manifest's
digest). The round objects and the momentum ids come from the votes inside the certificates, but any peer could
have signed a vote: every object is checked by its sha256 when fetched, against its parent and child digests when
replayed, and the last state against the tag's digest (and the momentum against the id most votes carry). Anything
that does not hold raises, and the caller pulls the version whole."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from p2pmodel.core.errors import IntegrityError, P2PModelError
from p2pmodel.core.ids import sha256_hex
from p2pmodel.eval.digest import canonical_bytes, parse_canonical, state_digest
from p2pmodel.versioning.round_object import decode_round, replay
from p2pmodel.versioning.tag import patch_refs

Fetch = Callable[[str, int], bytes]  # (blob id, max bytes) → the blob, its sha256 checked


class PatchUnavailable(P2PModelError):
    """No patch leads to the version (not recorded, too old, or DIR cannot start one): pull it whole."""


@dataclass
class Patched:
    state: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]
    momentum_id: str
    rounds: int
    fetched_bytes: int


def object_limit(shapes: dict[str, tuple]) -> int:
    """The most bytes a round object of a model of these shapes can take (every part raw, plus framing)."""
    values = sum(math.prod(s) for s in shapes.values())
    return 4 * values + 64 * values // 4096 + sum(len(n) + 64 for n in shapes) * 16 + (64 << 10)


def momentum_of(blob: bytes, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Parse an untrusted momentum blob (canonical bytes of {name: buffer}) for a model of ``shapes``."""
    try:
        momentum = parse_canonical(blob)
    except ValueError as e:
        raise IntegrityError(f"momentum blob: {e}") from None
    wrong = [n for n, t in momentum.items() if tuple(shapes.get(n, ())) != tuple(t.shape) or n not in shapes]
    if wrong:
        raise IntegrityError(f"momentum blob: {wrong[0][:64]!r} does not fit this model")
    return momentum


def path_between(certs: list[dict], from_version: str, from_digest: str, to_version: str) -> list[dict]:
    """The verified tags after ``from_version`` up to ``to_version``, each the parent of the next."""
    by_version = {c["version"]: c for c in certs}
    start = by_version.get(from_version)
    if start is None or start["digest"] != from_digest:
        raise PatchUnavailable(f"{from_version} ({from_digest[:12]}) is not a tag of this run")
    path, cert = [], by_version[to_version]
    while cert["version"] != from_version:
        path.append(cert)
        cert = by_version.get(cert["parent"]) if cert["parent"] else None
        if cert is None:
            raise PatchUnavailable(f"{to_version} does not descend from {from_version}")
    return path[::-1]


def patch(
    path: list[dict],
    state: dict[str, torch.Tensor],
    momentum: dict[str, torch.Tensor],
    fetch: Fetch,
    full_bytes: int,
    on_round: Callable[[int, int], None] | None = None,
) -> Patched:
    """Replay the round objects the tags of ``path`` name, from (``state``, ``momentum``) on. PatchUnavailable when a
    tag names none or the patch would not be smaller than ``full_bytes`` (the whole state); IntegrityError (or the
    fetcher's SwarmError) when an object is missing, damaged or forged."""
    shapes = {n: tuple(t.shape) for n, t in state.items()}
    plan = []
    for cert in path:
        rounds, momentum_id = patch_refs(cert)
        if rounds is None or momentum_id is None:
            raise PatchUnavailable(f"the votes of {cert['version']} record no patch")
        plan.append((cert, rounds, momentum_id))
    total = sum(size for _, rounds, _ in plan for _, size in rounds)
    if total >= full_bytes:
        raise PatchUnavailable(f"the patch ({total} bytes) is not smaller than the state ({full_bytes} bytes)")
    limit, fetched, done = object_limit(shapes), 0, 0
    momentum_id = ""
    for cert, rounds, momentum_id in plan:
        for blob_id, size in rounds:
            blob = fetch(blob_id, min(size, limit))
            fetched += len(blob)
            state, momentum = replay(state, momentum, decode_round(blob, shapes, limit))
            done += 1
            if on_round:
                on_round(done, sum(len(r) for _, r, _ in plan))
        if state_digest(state) != cert["digest"]:
            raise IntegrityError(f"the patch to {cert['version']} did not reach its digest")
        if sha256_hex(canonical_bytes(momentum)) != momentum_id:
            raise IntegrityError(f"the patch to {cert['version']} did not reach the momentum its votes name")
    return Patched(state, momentum, momentum_id, done, fetched)
