"""Content hashes and short ids used across the project (sha256 hex everywhere)."""

import hashlib
import json
import re

_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_hex64(v: object) -> bool:
    """A sha256 digest as this project writes it: 64 lowercase hex characters."""
    return isinstance(v, str) and _HEX64.fullmatch(v) is not None


def stable_hash(obj) -> str:
    """sha256 of a JSON-serialisable object in canonical form (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return sha256_hex(blob)
