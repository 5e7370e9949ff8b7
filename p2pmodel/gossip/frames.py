"""Gossip wire frames: the four requests and their answers, decoded with size and schema checks first.

Every frame is a ``core.wire`` envelope ``{"v": PROTOCOL_VERSION, "t": type, "b": body}`` (msgpack, never
pickle). Requests and their answers::

    push  {"msgs": [signed bytes, ...]}          -> ack   {}
    direct {"msgs": [signed bytes, ...]}         -> ack   {}   (a push its receiver does not pass on)
    ihave {"ids": [32-byte sha256, ...]}         -> ack   {}
    iwant {"ids": [32-byte sha256, ...]}         -> msgs  {"msgs": [signed bytes, ...]}  (what it has, bounded)
    sync  {"kind": str | None, "limit": int}     -> ids   {"ids": [32-byte sha256, ...]} (newest first)
    any request that is refused                  -> error {"reason": str}

A message id is sha256 of the signed message bytes (``swarm.signed`` envelope).
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pmodel import PROTOCOL_VERSION
from p2pmodel.core import wire
from p2pmodel.core.errors import WireError

MAX_IDS = 1024
MAX_MSGS = 256
MAX_KIND_CHARS = 64
ID_BYTES = 32
REQUESTS = ("push", "direct", "ihave", "iwant", "sync")
RESPONSES = ("ack", "msgs", "ids", "error")


@dataclass(frozen=True)
class Frame:
    """A decoded frame: its type and its checked body."""

    type: str
    body: dict


def _ids(value, limit: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= limit
        and all(isinstance(x, bytes) and len(x) == ID_BYTES for x in value)
    )


def _msgs(value) -> bool:  # each message's own size limit is checked (and counted) when it is ingested
    return isinstance(value, list) and len(value) <= MAX_MSGS and all(isinstance(x, bytes) and x for x in value)


def _kind(value) -> bool:
    return value is None or (isinstance(value, str) and 0 < len(value) <= MAX_KIND_CHARS)


def _check(frame_type: str, body: dict) -> bool:
    keys = set(body)
    if frame_type in ("push", "direct", "msgs"):
        return keys == {"msgs"} and _msgs(body["msgs"])
    if frame_type in ("ihave", "iwant", "ids"):
        return keys == {"ids"} and _ids(body["ids"], MAX_IDS) and (frame_type == "ids" or len(body["ids"]) > 0)
    if frame_type == "sync":
        limit = body.get("limit")
        return (
            keys == {"kind", "limit"}
            and _kind(body["kind"])
            and isinstance(limit, int)
            and not isinstance(limit, bool)
            and 0 < limit <= MAX_IDS
        )
    if frame_type == "ack":
        return not keys
    if frame_type == "error":
        return keys == {"reason"} and isinstance(body["reason"], str)
    return False


def decode(data: bytes, max_frame_bytes: int, allowed: tuple[str, ...]) -> Frame:
    """Decode an untrusted frame of one of the ``allowed`` types; WireError for anything else.

    The size is checked before a single byte is decoded.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("frame is not bytes")
    if len(data) > max_frame_bytes:
        raise WireError(f"oversized frame of {len(data)} bytes (limit {max_frame_bytes})")
    obj = wire.unpack(data, max_frame_bytes)
    if not isinstance(obj, dict) or set(obj) != {"v", "t", "b"}:
        raise WireError("not an envelope")
    if obj["v"] != PROTOCOL_VERSION:
        raise WireError(f"protocol version {obj['v']!r:.20} is not {PROTOCOL_VERSION}")
    frame_type, body = obj["t"], obj["b"]
    if not isinstance(frame_type, str) or frame_type not in allowed or not isinstance(body, dict):
        raise WireError(f"unexpected frame type {frame_type!r:.40}")
    if not _check(frame_type, body):
        raise WireError(f"malformed {frame_type} frame")
    return Frame(frame_type, body)


def encode(frame_type: str, body: dict) -> bytes:
    return wire.envelope(frame_type, body)


def pack_msgs(frame_type: str, msgs: list[bytes], max_frame_bytes: int) -> tuple[bytes, int]:
    """The frame carrying as many of ``msgs`` (in order, at least one) as fit; returns (frame, count)."""
    size, count = 64, 0
    for m in msgs[:MAX_MSGS]:
        if count and size + len(m) + 8 > max_frame_bytes:
            break
        size += len(m) + 8
        count += 1
    return encode(frame_type, {"msgs": msgs[:count]}), count
