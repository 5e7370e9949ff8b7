"""Signed, expiring records in the DHT: who is in a run (peer records) and which state each peer committed.

DHT layout (one key per topic, one subkey per peer; the subkey must equal the record's signer)::

    p2pmodel/{run_id}/peers              subkey peer_id -> signed "peer_record"  (see PEER_RECORD_FIELDS)
    p2pmodel/{run_id}/digest/{round}     subkey peer_id -> signed "digest_record" {peer_id, run_id, round,
                                                                                   digest, time}

Anyone can write any value under any key, so readers validate everything: size bound, signature, signer ==
subkey == body peer_id, schema and types, run id, protocol version, age. Invalid or expired entries are
dropped with a debug line; a well-signed record of another run or protocol version is refused with a
warning naming the peer (once per peer and reason).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import hivemind
from hivemind.utils.timed_storage import ValueWithExpiration, get_dht_time

from p2pmodel import PROTOCOL_VERSION, __version__
from p2pmodel.core import wire
from p2pmodel.core.errors import IntegrityError, WireError
from p2pmodel.core.ids import is_hex64
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.keys import DIGEST_RECORD_KIND, PEER_RECORD_KIND, digest_key, peers_key
from p2pmodel.swarm.signed import open_signed, sign_message

logger = logging.getLogger(__name__)

MAX_RECORD_BYTES = 16 << 10
MAX_CLOCK_SKEW_S = 60.0


def _short_str(v) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 128


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _digest(v) -> bool:
    return v == "" or is_hex64(v)


def _addrs(v) -> bool:
    return isinstance(v, list) and len(v) <= 32 and all(isinstance(a, str) and 0 < len(a) <= 256 for a in v)


PEER_RECORD_FIELDS: dict[str, Callable[[object], bool]] = {
    "peer_id": _short_str,  # signer's PeerID
    "run_id": _short_str,
    "protocol": _count,  # PROTOCOL_VERSION the peer speaks
    "software": _short_str,  # p2pmodel version string
    "round": _count,  # last committed outer round
    "samples_per_s": _number,  # recent training throughput
    "digest": _digest,  # sha256 hex of its committed state, "" before the first one
    "addrs": _addrs,  # multiaddr strings it can be reached at
    "time": _number,  # publication time, unix seconds
}
DIGEST_RECORD_FIELDS: dict[str, Callable[[object], bool]] = {
    "peer_id": _short_str,
    "run_id": _short_str,
    "round": _count,
    "digest": _digest,
    "time": _number,
}


def check_schema(body: dict, fields: dict[str, Callable[[object], bool]], what: str) -> dict:
    """Return ``body`` if it has exactly ``fields``, all valid; else WireError naming the field."""
    if not isinstance(body, dict) or set(body) != set(fields):
        got = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise WireError(f"{what} has fields {got}, expected {sorted(fields)}")
    for name, ok in fields.items():
        if not ok(body[name]):
            raise WireError(f"{what} field {name!r} is invalid: {body[name]!r:.80}")
    return body


def make_peer_record(
    identity: Identity, run_id: str, round: int, samples_per_s: float, digest: str, addrs: list[str]
) -> dict:
    """A peer record for this peer, stamped now, with this software's protocol version."""
    record = {
        "peer_id": identity.peer_id,
        "run_id": run_id,
        "protocol": PROTOCOL_VERSION,
        "software": f"p2pmodel/{__version__}",
        "round": int(round),
        "samples_per_s": float(samples_per_s),
        "digest": digest,
        "addrs": list(addrs),
        "time": get_dht_time(),
    }
    return check_schema(record, PEER_RECORD_FIELDS, "peer record")


def publish_signed(dht: hivemind.DHT, identity: Identity, key: str, kind: str, payload: dict, ttl_s: float) -> bool:
    """Sign ``payload`` and store it under ``key`` / subkey = our PeerID until now + ``ttl_s``.

    Returns the DHT's answer (False: no peer accepted it). ValueError for an oversized payload.
    """
    value = sign_message(identity, kind, payload)
    if len(value) > MAX_RECORD_BYTES:
        raise ValueError(f"signed {kind} of {len(value)} bytes exceeds the limit of {MAX_RECORD_BYTES}")
    if not ttl_s > 0:
        raise ValueError("ttl_s must be positive")
    return bool(dht.store(key, value, get_dht_time() + ttl_s, subkey=identity.peer_id))


def get_signed(dht: hivemind.DHT, key: str, kind: str, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, dict]:
    """Every unexpired, validly signed ``kind`` message under ``key``, as {signer PeerID: body}."""
    found = dht.get(key, latest=True)
    if found is None or not isinstance(found.value, dict):
        return {}
    now, out = get_dht_time(), {}
    for subkey, item in found.value.items():
        if not isinstance(item, ValueWithExpiration) or item.expiration_time < now:
            continue
        try:
            body, signer = open_signed(item.value, kind, max_bytes)
        except (WireError, IntegrityError) as e:
            _log_refusal(subkey, e, item.value)
            continue
        if signer != subkey or body.get("peer_id", signer) != signer:
            logger.debug(f"dropping {kind} under {key}: signer {signer} does not match subkey {subkey!r:.80}")
            continue
        out[signer] = body
    return out


def _log_refusal(subkey, error: Exception, value) -> None:
    try:  # a peer of another protocol version gets a clear line, whatever the envelope's inner layout
        version = wire.unpack(value, MAX_RECORD_BYTES).get("v")
    except Exception:
        version = None
    if isinstance(version, int) and version != PROTOCOL_VERSION:
        _warn_once(subkey, f"speaks protocol {version}, this peer speaks {PROTOCOL_VERSION}")
    else:
        logger.debug(f"dropping DHT entry of {subkey!r:.80}: {error}")


_warned: set[tuple[str, str]] = set()


def _warn_once(peer, reason: str) -> None:
    if (str(peer), reason) not in _warned and len(_warned) < 10_000:
        _warned.add((str(peer), reason))
        logger.warning(f"refusing peer {str(peer)[:80]}: it {reason}")


def _fresh(body: dict, max_age_s: float | None, now: float) -> bool:
    if body["time"] > now + MAX_CLOCK_SKEW_S:
        return False
    return max_age_s is None or body["time"] >= now - max_age_s


def publish_peer_record(dht: hivemind.DHT, identity: Identity, record: dict, ttl_s: float) -> bool:
    """Validate, sign and store our peer record under ``peers_key(record["run_id"])``."""
    check_schema(record, PEER_RECORD_FIELDS, "peer record")
    if record["peer_id"] != identity.peer_id:
        raise ValueError("a peer record must carry the publishing identity's peer_id")
    return publish_signed(dht, identity, peers_key(record["run_id"]), PEER_RECORD_KIND, record, ttl_s)


def list_peer_records(
    dht: hivemind.DHT, run_id: str, protocol_version: int = PROTOCOL_VERSION, max_age_s: float | None = None
) -> list[dict]:
    """Valid peer records of ``run_id`` speaking ``protocol_version``, sorted by peer_id.

    ``max_age_s`` also drops records signed longer ago (a replayed old record can carry a fresh DHT expiry).
    """
    now, out = get_dht_time(), []
    for peer, body in get_signed(dht, peers_key(run_id), PEER_RECORD_KIND).items():
        try:
            check_schema(body, PEER_RECORD_FIELDS, "peer record")
        except WireError as e:
            logger.debug(f"dropping peer record of {peer}: {e}")
            continue
        if body["run_id"] != run_id:
            _warn_once(peer, f"belongs to run {body['run_id'][:80]!r}, not {run_id!r}")
        elif body["protocol"] != protocol_version:
            _warn_once(peer, f"speaks protocol {body['protocol']}, this peer speaks {protocol_version}")
        elif not _fresh(body, max_age_s, now):
            logger.debug(f"dropping stale peer record of {peer} (time {body['time']:.0f}, now {now:.0f})")
        else:
            out.append(body)
    return sorted(out, key=lambda r: r["peer_id"])


def publish_digest(dht: hivemind.DHT, identity: Identity, run_id: str, round: int, digest: str, ttl_s: float) -> bool:
    """Announce the state digest this peer holds after committing ``round`` (the commit step's vote)."""
    body = {
        "peer_id": identity.peer_id,
        "run_id": run_id,
        "round": round,
        "digest": digest,
        "time": get_dht_time(),
    }
    check_schema(body, DIGEST_RECORD_FIELDS, "digest record")
    return publish_signed(dht, identity, digest_key(run_id, round), DIGEST_RECORD_KIND, body, ttl_s)


def get_digests(dht: hivemind.DHT, run_id: str, round: int) -> dict[str, str]:
    """{peer_id: digest} of the valid digest records of ``run_id`` / ``round``."""
    out = {}
    for peer, body in get_signed(dht, digest_key(run_id, round), DIGEST_RECORD_KIND).items():
        try:
            check_schema(body, DIGEST_RECORD_FIELDS, "digest record")
        except WireError as e:
            logger.debug(f"dropping digest record of {peer}: {e}")
            continue
        if body["run_id"] == run_id and body["round"] == round:
            out[peer] = body["digest"]
    return out
