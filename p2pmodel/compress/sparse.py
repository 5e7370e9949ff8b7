"""Top-k sparse codec with 2-bit values (SparseLoCo, 2508.15706): for broadcast exchanges, where every peer
downloads every other peer's update, so bytes per update matter n − 1 times over.

Each chunk of ``chunk`` consecutive elements (row-major) keeps its k = ⌈density × chunk length⌉ largest
magnitudes; a kept value is sent as 2 bits, one of (−1.5, −0.5, 0.5, 1.5) × the chunk's scale (absmax / 1.5), and
everything else is zero. Use it with error feedback (compress/feedback.py): what a round does not send is added
to the next round's delta, so nothing is lost, only delayed. At density 2 % a value costs 2 bytes of index and
2 bits of value: ~0.045 bytes per parameter plus 4 bytes of scale per chunk, against 0.56 for int4.

Wire layout of ``runtime_pb2.Tensor.buffer`` (little-endian), for n_chunks = ⌈numel / chunk⌉ and K the sum of
the chunks' k (both follow from the shape, ``chunk`` and ``density``, so a message cannot claim others):
    header (12 bytes: b"P2PC", format version, codec id 2, density in 1/65536 : u16, chunk : u32)
    | scales: float32 × n_chunks | offsets within the chunk: uint16 × K, strictly increasing in each chunk
    | codes: 2 bits × K, four to a byte, element 4i in the low bits (padding codes are 0)
A value decodes as (code − 1.5) × scale: exact in float32 then one multiply, the same on every machine.
"""

from __future__ import annotations

import math

import torch
from hivemind.compression.base import CompressionInfo
from hivemind.proto import runtime_pb2

from p2pmodel.compress.base import (
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    Codec,
    CodecError,
    check_finite,
    check_input,
    check_length,
    check_message,
    from_bytes,
    to_bytes,
)

DEFAULT_CHUNK = 4096
DEFAULT_DENSITY = 0.02
MAX_CHUNK = 1 << 16  # offsets are uint16
_LEVEL = 1.5  # codes 0..3 stand for (code - 1.5) x scale


class SparseTopKCodec(Codec):
    """Keep the top ``density`` share of magnitudes in every chunk, as 2-bit values (module doc)."""

    name, codec_id = "sparse", 2
    compression_type = 103  # not in hivemind's CompressionType enum (0..5): its deserializer fails loudly

    def __init__(self, density: float = DEFAULT_DENSITY, chunk: int = DEFAULT_CHUNK):
        if not isinstance(chunk, int) or not 2 <= chunk <= MAX_CHUNK:
            raise ValueError(f"chunk must be an int in [2, {MAX_CHUNK}], got {chunk!r}")
        units = round(density * 65536) if isinstance(density, float | int) else 0
        if not 1 <= units <= 65535:
            raise ValueError(f"density must be in (0, 1), got {density!r}")
        self.density_units, self.chunk = units, chunk

    @property
    def density(self) -> float:
        return self.density_units / 65536

    def __repr__(self) -> str:
        return f"{type(self).__name__}(density={self.density:g}, chunk={self.chunk})"

    def _ks(self, numel: int) -> list[int]:
        """k of each chunk: the full chunks', then the last (shorter) one's."""
        full, rest = divmod(numel, self.chunk)
        k = min(self.chunk, math.ceil(self.density_units * self.chunk / 65536))
        ks = [k] * full
        if rest:
            ks.append(min(rest, math.ceil(self.density_units * rest / 65536)))
        return ks

    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        tensor, dtype_name = check_input(self, tensor)
        flat = tensor.reshape(-1).to(torch.float32)
        ks = self._ks(flat.numel())
        n_full = flat.numel() // self.chunk
        batches = []  # the full chunks as one (n_full, chunk) batch, then the shorter last one: no per-chunk loop
        if n_full:
            batches.append(_select(flat[: n_full * self.chunk].view(n_full, self.chunk), ks[0]))
        if len(ks) > n_full:
            batches.append(_select(flat[n_full * self.chunk :].view(1, -1), ks[-1]))
        scales = [b[0] for b in batches]
        offsets = [b[1].reshape(-1) for b in batches]
        codes = [b[2].reshape(-1) for b in batches]
        header = HEADER.pack(MAGIC, FORMAT_VERSION, self.codec_id, self.density_units, self.chunk)
        parts = [header]
        if scales:
            parts += [to_bytes(torch.cat(scales)), to_bytes(torch.cat(offsets).to(torch.uint16)), _pack2(codes)]
        return runtime_pb2.Tensor(
            compression=self.compression_type, buffer=b"".join(parts), size=tensor.shape, dtype=dtype_name
        )

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        shape, numel, dtype = check_message(self, serialized_tensor)
        buffer = serialized_tensor.buffer
        if len(buffer) < HEADER.size:
            raise CodecError(f"{self.name}: buffer of {len(buffer)} bytes is shorter than the header")
        magic, version, codec_id, units, chunk = HEADER.unpack_from(buffer)
        if magic != MAGIC or version != FORMAT_VERSION or codec_id != self.codec_id:
            raise CodecError(f"{self.name}: bad header (magic={magic!r}, version={version}, codec={codec_id})")
        if (units, chunk) != (self.density_units, self.chunk):
            raise CodecError(f"{self.name}: density/chunk {units}/{chunk} differ from this run's")
        ks = self._ks(numel)
        n, total = len(ks), sum(ks)
        scales_end = HEADER.size + 4 * n
        offsets_end = scales_end + 2 * total
        check_length(self, buffer, offsets_end + (total + 3) // 4)
        out = torch.zeros(numel, dtype=torch.float32)
        if not n:
            return out.to(dtype).reshape(shape)
        scales = from_bytes(buffer, torch.float32, HEADER.size, 4 * n)
        check_finite(self, scales, "scales")
        if bool((scales < 0).any()):
            raise CodecError(f"{self.name}: negative chunk scale")
        offsets = from_bytes(buffer, torch.uint16, scales_end, 2 * total).to(torch.int64)
        codes = _unpack2(buffer[offsets_end:], total)
        starts = torch.tensor([i * chunk for i in range(n)], dtype=torch.int64)
        lengths = torch.tensor([min(chunk, numel - i * chunk) for i in range(n)], dtype=torch.int64)
        owner = torch.repeat_interleave(torch.arange(n), torch.tensor(ks))
        if bool((offsets >= lengths[owner]).any()):
            raise CodecError(f"{self.name}: an offset outside its chunk")
        same_chunk = owner[1:] == owner[:-1]
        if bool((same_chunk & (offsets[1:] <= offsets[:-1])).any()):
            raise CodecError(f"{self.name}: offsets not strictly increasing within a chunk")
        values = (codes.to(torch.float32) - _LEVEL) * scales[owner]
        out[starts[owner] + offsets] = values
        out = out.to(dtype)
        check_finite(self, out, "values (a scale near the float range's end)")  # code x scale overflowed
        return out.reshape(shape)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return (self.density * (16 + 2) + 32.0 / self.chunk) / 32.0


def _select(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row (a chunk): its k largest magnitudes → (scale = absmax / 1.5, sorted offsets, 2-bit codes)."""
    idx = torch.sort(torch.topk(rows.abs(), k, dim=1, sorted=False).indices, dim=1).values
    kept = torch.gather(rows, 1, idx)
    scales = kept.abs().amax(dim=1) / _LEVEL
    divisor = torch.where(scales > 0, scales, torch.ones_like(scales)).unsqueeze(1)
    return scales, idx.to(torch.int32), torch.round(kept / divisor + _LEVEL).clamp_(0, 3).to(torch.uint8)


def _pack2(codes: list[torch.Tensor]) -> bytes:
    flat = torch.cat(codes)
    pad = (-flat.numel()) % 4
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8)])
    q = flat.view(-1, 4)
    return to_bytes(q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6))


def _unpack2(data: bytes, total: int) -> torch.Tensor:
    packed = from_bytes(data, torch.uint8)
    codes = torch.stack([(packed >> s) & 3 for s in (0, 2, 4, 6)], dim=1).reshape(-1)
    if bool((codes[total:] != 0).any()):
        raise CodecError("sparse: non-zero padding codes")
    return codes[:total]
