"""The state digest: sha256 of the state's canonical bytes — for each parameter in sorted name order,
``name \\0 shape \\0 float32 little-endian values``. Two peers hold the same state exactly when their digests
match, whatever device or dtype they train in. The canonical bytes double as a transfer format: a download
is verified by hashing what arrived, and parsed back without trusting anything else."""

import hashlib
import re

import torch

_SHAPE = re.compile(rb"\((?:\d{1,10}(?:, \d{1,10})*,?)?\)")
MAX_NAME_BYTES = 1024


def _chunks(state: dict[str, torch.Tensor]):
    for name in sorted(state):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        yield name.encode() + b"\0" + repr(tuple(t.shape)).encode() + b"\0"
        yield t.numpy().tobytes()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for chunk in _chunks(state):
        h.update(chunk)
    return h.hexdigest()


def canonical_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """The exact bytes ``state_digest`` hashes (so ``sha256(canonical_bytes(s)) == state_digest(s)``)."""
    return b"".join(_chunks(state))


def parse_canonical(blob: bytes, max_tensors: int = 100_000) -> dict[str, torch.Tensor]:
    """Inverse of canonical_bytes for untrusted input; ValueError on anything malformed."""
    state, pos, view = {}, 0, memoryview(blob)
    while pos < len(blob):
        if len(state) >= max_tensors:
            raise ValueError("too many tensors")
        end = blob.find(b"\0", pos, pos + MAX_NAME_BYTES + 1)
        if end < 0:
            raise ValueError("tensor name missing or too long")
        name = blob[pos:end].decode("utf-8", errors="strict")
        shape_end = blob.find(b"\0", end + 1, end + 200)
        if shape_end < 0 or not _SHAPE.fullmatch(blob[end + 1 : shape_end]):
            raise ValueError(f"bad shape for tensor {name[:64]!r}")
        shape = tuple(int(x) for x in blob[end + 2 : shape_end - 1].replace(b",", b" ").split())
        numel = 1
        for d in shape:
            numel *= d
        start, stop = shape_end + 1, shape_end + 1 + 4 * numel
        if stop > len(blob) or name in state or (state and name <= max(state)):
            raise ValueError(f"truncated, duplicate or unsorted tensor {name[:64]!r}")
        values = torch.frombuffer(bytearray(view[start:stop]), dtype=torch.float32) if numel else torch.zeros(0)
        state[name] = values.reshape(shape)
        pos = stop
    return state
