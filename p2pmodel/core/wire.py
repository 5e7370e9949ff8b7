"""Versioned msgpack envelopes: the only way bytes from the network become Python objects.

Every message is ``{"v": PROTOCOL_VERSION, "t": type, "b": body}``. Decoding is size-bounded, refuses
extension types (never pickle) and checks the envelope shape before anyone looks at the body.
"""

from typing import Any

import msgpack

from p2pmodel import PROTOCOL_VERSION
from p2pmodel.core.errors import WireError

DEFAULT_MAX_BYTES = 1 << 20


def pack(obj: Any) -> bytes:
    """Canonical msgpack bytes (bin type for bytes, str for text)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Decode untrusted msgpack with a hard size bound and no extension types."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
        )
    except WireError:
        raise
    except Exception as e:  # msgpack raises many types for malformed input
        raise WireError(f"malformed message: {type(e).__name__}") from None


def _refuse_ext(code: int, data: bytes):
    raise WireError(f"msgpack extension type {code} is not accepted")


def envelope(kind: str, body: dict) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "t": kind, "b": body})


def open_envelope(data: bytes, expected_kind: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Return the body of a well-formed envelope of our protocol version, else raise WireError."""
    obj = unpack(data, max_bytes)
    if not isinstance(obj, dict) or set(obj) != {"v", "t", "b"}:
        raise WireError("not an envelope")
    if obj["v"] != PROTOCOL_VERSION:
        raise WireError(f"protocol version {obj['v']!r} is not {PROTOCOL_VERSION}")
    if not isinstance(obj["t"], str) or (expected_kind is not None and obj["t"] != expected_kind):
        raise WireError(f"unexpected message type {obj['t']!r}")
    if not isinstance(obj["b"], dict):
        raise WireError("envelope body is not a map")
    return obj["b"]
