"""Signed messages: the one format for everything a peer vouches for (records, gossip, votes, tags).

Wire form, inside a ``core.wire`` envelope of type ``kind``::

    {"body": <canonical msgpack bytes of the body map>, "signer": <PeerID str>,
     "pubkey": <libp2p public key protobuf>, "sig": <signature>}

The signature covers ``pack(["p2pmodel-signed", PROTOCOL_VERSION, kind, body_bytes])`` so a signature for
one kind or protocol version can never be replayed as another. The body travels as the exact signed bytes
(no re-serialisation on the receiving side); canonical packing (map keys sorted) makes equal bodies give
equal bytes, which gossip uses for de-duplication by content hash.

``open_signed`` trusts nothing: size bound first, then envelope shape, field types, PeerID = hash(pubkey),
signature, and only then decodes the body.
"""

from __future__ import annotations

from typing import Any

from p2pmodel import PROTOCOL_VERSION
from p2pmodel.core import wire
from p2pmodel.core.errors import IntegrityError, WireError
from p2pmodel.swarm.identity import Identity, verify_signature

_DOMAIN = "p2pmodel-signed"
_FIELDS = {"body": bytes, "signer": str, "pubkey": bytes, "sig": bytes}
MAX_SIGNED_BYTES = wire.DEFAULT_MAX_BYTES


def canonical_pack(obj: Any) -> bytes:
    """msgpack bytes with every map's keys sorted, so equal objects give equal bytes."""
    return wire.pack(_sorted(obj))


def _sorted(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [_sorted(x) for x in obj]
    return obj


def _signed_bytes(kind: str, body_bytes: bytes) -> bytes:
    return wire.pack([_DOMAIN, PROTOCOL_VERSION, kind, body_bytes])


def sign_message(identity: Identity, kind: str, body: dict) -> bytes:
    """Serialize and sign ``body`` (a msgpack-able map) as a message of type ``kind``."""
    if not isinstance(body, dict):
        raise TypeError("a signed message body must be a dict")
    body_bytes = canonical_pack(body)
    signature = identity.sign(_signed_bytes(kind, body_bytes))
    pubkey = identity.public_key_bytes
    outer = {"body": body_bytes, "signer": identity.peer_id, "pubkey": pubkey, "sig": signature}
    return wire.envelope(kind, outer)


def open_signed(data: bytes, kind: str, max_bytes: int = MAX_SIGNED_BYTES) -> tuple[dict, str]:
    """Verify a signed message and return ``(body, signer_peer_id)``.

    Raises WireError for anything malformed, oversized, of another kind or protocol version,
    and IntegrityError when the key does not match the signer's PeerID or the signature is wrong.
    """
    outer = wire.open_envelope(data, expected_kind=kind, max_bytes=max_bytes)
    if set(outer) != set(_FIELDS) or not all(isinstance(outer[k], t) for k, t in _FIELDS.items()):
        raise WireError(f"malformed signed {kind!r} message")
    signed = _signed_bytes(kind, outer["body"])
    if not verify_signature(outer["signer"], outer["pubkey"], signed, outer["sig"]):
        raise IntegrityError(f"bad signature on {kind!r} message claimed by {outer['signer'][:64]!r}")
    body = wire.unpack(outer["body"], max_bytes)
    if not isinstance(body, dict):
        raise WireError(f"signed {kind!r} body is not a map")
    return body, outer["signer"]
