"""A gossip message: a ``swarm.signed`` envelope whose body carries its signing time; make and verify one.

Verification order for untrusted bytes: size, envelope shape and kind, PeerID = hash(public key), signature,
then the body's ``time`` (not older than ``max_age_s``, not in the future beyond the skew). Only then does
the application's handler see it. The id is sha256 of the exact signed bytes.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

from p2pmodel.core import wire
from p2pmodel.core.errors import IntegrityError, WireError
from p2pmodel.gossip.frames import MAX_KIND_CHARS
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.signed import open_signed, sign_message


@dataclass(frozen=True)
class GossipMessage:
    """A verified message as handed to a subscriber."""

    msg_id: str
    """sha256 hex of the signed bytes."""
    kind: str
    body: dict
    signer: str
    """PeerID whose key signed it (verified)."""
    signed_time: float
    """The body's ``time`` field, unix seconds."""
    source: str | None
    """PeerID of the peer we got it from (None: published here)."""
    data: bytes = field(repr=False)
    """The exact signed bytes (what a tag may embed and anyone can re-verify)."""


class Refused(Exception):
    """Why a message was not accepted; ``reason`` is the stats counter name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def message_id(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def check_kind(kind) -> str:
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_CHARS:
        raise ValueError(f"a gossip kind is a string of 1..{MAX_KIND_CHARS} characters, got {kind!r:.80}")
    return kind


def make_message(identity: Identity, kind: str, body: dict, now: float | None = None) -> bytes:
    """Sign ``body`` as a gossip message of ``kind``; adds ``time`` (now) if the body has none."""
    check_kind(kind)
    if not isinstance(body, dict):
        raise TypeError("a gossip message body must be a dict")
    if "time" not in body:
        body = {**body, "time": time.time() if now is None else now}
    return sign_message(identity, kind, body)


def peek_kind(data: bytes, max_message_bytes: int) -> str:
    """The envelope type of a signed message (cheap pre-check before verifying), else Refused."""
    if len(data) > max_message_bytes:
        raise Refused("oversized", f"{len(data)} bytes")
    try:
        obj = wire.unpack(data, max_message_bytes)
    except WireError as e:
        raise Refused("malformed", str(e)) from None
    kind = obj.get("t") if isinstance(obj, dict) else None
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_CHARS:
        raise Refused("malformed", "no message kind")
    return kind


def open_message(
    data: bytes,
    kind: str,
    max_message_bytes: int,
    max_age_s: float,
    max_clock_skew_s: float,
    source: str | None,
    now: float | None = None,
) -> GossipMessage:
    """Verify signed bytes of ``kind`` and return the message; Refused with the reason otherwise."""
    try:
        body, signer = open_signed(data, kind, max_message_bytes)
    except IntegrityError as e:
        raise Refused("bad_signature", str(e)) from None
    except WireError as e:
        raise Refused("malformed", str(e)) from None
    signed_time = body.get("time")
    if not isinstance(signed_time, (int, float)) or isinstance(signed_time, bool) or not math.isfinite(signed_time):
        raise Refused("malformed", "body has no numeric 'time'")
    now = time.time() if now is None else now
    if signed_time < now - max_age_s:
        raise Refused("expired", f"signed {now - signed_time:.0f} s ago")
    if signed_time > now + max_clock_skew_s:
        raise Refused("future", f"signed {signed_time - now:.0f} s in the future")
    return GossipMessage(message_id(data).hex(), kind, body, signer, float(signed_time), source, bytes(data))
