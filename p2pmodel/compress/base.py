"""Shared codec base: wire limits, dtype table, hostile-input checks and bytes helpers for every codec."""

from __future__ import annotations

import math
import struct

import torch
from hivemind.compression.base import CompressionBase, CompressionInfo
from hivemind.proto import runtime_pb2

from p2pmodel.core.errors import WireError

MAX_NUMEL = 2**31 - 1  # elements in one message; a bigger part is a bug or an attack
MAX_NDIM = 16
MAX_MESSAGE_BYTES = 2**31  # bound on encoded bytes accepted by decode()
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 2, 2**20

# dtype names as they appear in runtime_pb2.Tensor.dtype (numpy spelling, as hivemind writes them)
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# header of our own (non-hivemind) formats: magic, format version, codec id, reserved, block size
HEADER = struct.Struct("<4sBBHI")
MAGIC, FORMAT_VERSION = b"P2PC", 1


class CodecError(WireError, ValueError):
    """A compressed tensor message that is malformed, truncated, oversized or of another codec."""


class Codec(CompressionBase):
    """Base of p2pmodel codecs: `extract` treats the message as hostile, decoding is deterministic."""

    name: str = "?"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # --- plain bytes helpers --------------------------------------------------------------
    def encode(self, tensor: torch.Tensor) -> bytes:
        """Compress to the serialized protobuf bytes (what goes on the wire)."""
        return self.compress(tensor, CompressionInfo.from_tensor(tensor)).SerializeToString()

    def decode(self, data: bytes) -> torch.Tensor:
        """Inverse of `encode`; raises CodecError (a ValueError) on anything malformed."""
        if len(data) > MAX_MESSAGE_BYTES:
            raise CodecError(f"{self.name}: message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
        try:
            msg = runtime_pb2.Tensor.FromString(bytes(data))
        except Exception as e:  # protobuf raises its own DecodeError
            raise CodecError(f"{self.name}: not a runtime_pb2.Tensor: {e}") from e
        return self.extract(msg)


def check_input(codec: Codec, tensor: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Validate a tensor to compress; return it detached on CPU and its dtype name."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{codec.name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in DTYPE_NAMES:
        raise ValueError(f"{codec.name}: unsupported dtype {tensor.dtype}; expected one of {sorted(DTYPES)}")
    if tensor.dim() > MAX_NDIM or tensor.numel() > MAX_NUMEL:
        raise ValueError(f"{codec.name}: tensor of shape {tuple(tensor.shape)} exceeds the wire limits")
    tensor = tensor.detach().cpu()
    if not all_finite(tensor):
        raise ValueError(f"{codec.name}: tensor has NaN/Inf values; refusing to compress")
    return tensor, DTYPE_NAMES[tensor.dtype]


def check_message(codec: Codec, msg: runtime_pb2.Tensor) -> tuple[tuple[int, ...], int, torch.dtype]:
    """Validate the common fields of a message; return (shape, numel, original dtype)."""
    if not isinstance(msg, runtime_pb2.Tensor):
        raise CodecError(f"{codec.name}: expected runtime_pb2.Tensor, got {type(msg).__name__}")
    if msg.compression != codec.compression_type:
        raise CodecError(
            f"{codec.name}: message compression type {msg.compression} != expected {codec.compression_type}"
        )
    if msg.dtype not in DTYPES:
        raise CodecError(f"{codec.name}: unknown dtype {msg.dtype!r}; expected one of {sorted(DTYPES)}")
    if len(msg.size) > MAX_NDIM:
        raise CodecError(f"{codec.name}: {len(msg.size)} dimensions exceed {MAX_NDIM}")
    shape = tuple(int(s) for s in msg.size)
    numel = math.prod(shape)
    if numel > MAX_NUMEL:
        raise CodecError(f"{codec.name}: {numel} elements exceed {MAX_NUMEL}")
    return shape, numel, DTYPES[msg.dtype]


def check_length(codec: Codec, buffer: bytes, expected: int) -> None:
    if len(buffer) != expected:
        raise CodecError(f"{codec.name}: buffer has {len(buffer)} bytes, expected {expected} for this shape")


def all_finite(values: torch.Tensor) -> bool:
    """No NaN/Inf? A finite sum proves it cheaply; an overflowing sum falls back to the full check."""
    return bool(torch.isfinite(values.sum())) or bool(torch.isfinite(values).all())


def check_finite(codec: Codec, values: torch.Tensor, what: str = "values") -> None:
    if not all_finite(values):
        raise CodecError(f"{codec.name}: message carries NaN/Inf {what}")


def from_bytes(buffer: bytes, dtype: torch.dtype, offset: int = 0, nbytes: int | None = None) -> torch.Tensor:
    """Copy `nbytes` little-endian bytes at `offset` into a fresh tensor (never aliases the message)."""
    view = memoryview(buffer)[offset : None if nbytes is None else offset + nbytes]
    if len(view) == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(view), dtype=dtype)


def to_bytes(tensor: torch.Tensor) -> bytes:
    """Raw bytes of a CPU tensor in row-major order."""
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()
