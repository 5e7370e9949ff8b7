"""Blockwise absmax int8 / int4 codecs in pure torch (hivemind's 8-bit codecs need bitsandbytes or old numpy).

Wire layout of `runtime_pb2.Tensor.buffer` (little-endian):
    header (12 bytes: b"P2PC", format version, codec id, 0, block_size:u32)
    | scales: float32 x n_blocks | codes: int8 x numel (int8) or ceil(numel/2) bytes, 2 nibbles each (int4)
`size` holds the shape and `dtype` the original dtype. A value decodes as `code * scale[block]`: one fp32
multiply, so the same bytes give the same tensor on every machine. `compression` is a value outside
hivemind's enum, so hivemind's stock deserializer fails loudly instead of misreading these bytes.
"""

from __future__ import annotations

import torch
from hivemind.compression.base import CompressionInfo
from hivemind.compression.floating import get_num_bits
from hivemind.proto import runtime_pb2

from p2pmodel.compress.base import (
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    Codec,
    CodecError,
    all_finite,
    check_finite,
    check_input,
    check_length,
    check_message,
    from_bytes,
    to_bytes,
)

DEFAULT_BLOCK_SIZE = 128


class BlockwiseCodec(Codec):
    """Symmetric absmax quantization per block of `block_size` consecutive elements (row-major)."""

    levels: int  # codes are integers in [-levels, levels]
    bits: int
    codec_id: int

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE):
        if not isinstance(block_size, int) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be an int in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}], got {block_size!r}")
        self.block_size = block_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(block_size={self.block_size})"

    # --- codes <-> bytes, per bit width ------------------------------------------------------------
    def _pack(self, codes: torch.Tensor) -> bytes:
        raise NotImplementedError

    def _code_bytes(self, numel: int) -> int:
        raise NotImplementedError

    def _unpack(self, data: bytes, numel: int) -> torch.Tensor:
        """Bytes -> int codes (numel,), raising CodecError on an out-of-range or non-canonical code."""
        raise NotImplementedError

    # --- CompressionBase ---------------------------------------------------------------------------
    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        tensor, dtype_name = check_input(self, tensor)
        flat = tensor.reshape(-1).to(torch.float32)
        if not all_finite(flat):
            raise ValueError(f"{self.name}: tensor has values outside the float32 range")
        numel, bs = flat.numel(), self.block_size
        n_blocks = -(-numel // bs)
        blocks = torch.zeros(n_blocks * bs, dtype=torch.float32)
        blocks[:numel] = flat
        blocks = blocks.view(n_blocks, bs)
        scales = blocks.abs().amax(dim=1) / self.levels
        divisor = torch.where(scales > 0, scales, torch.ones_like(scales)).unsqueeze(1)
        codes = torch.round(blocks / divisor).clamp_(-self.levels, self.levels).to(torch.int8)
        header = HEADER.pack(MAGIC, FORMAT_VERSION, self.codec_id, 0, bs)
        buffer = b"".join((header, to_bytes(scales), self._pack(codes.reshape(-1)[:numel])))
        return runtime_pb2.Tensor(compression=self.compression_type, buffer=buffer, size=tensor.shape, dtype=dtype_name)

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        shape, numel, dtype = check_message(self, serialized_tensor)
        buffer = serialized_tensor.buffer
        if len(buffer) < HEADER.size:
            raise CodecError(f"{self.name}: buffer of {len(buffer)} bytes is shorter than the header")
        magic, version, codec_id, reserved, bs = HEADER.unpack_from(buffer)
        if magic != MAGIC or version != FORMAT_VERSION or codec_id != self.codec_id or reserved != 0:
            raise CodecError(
                f"{self.name}: bad header (magic={magic!r}, version={version}, codec={codec_id}); "
                f"expected {MAGIC!r} v{FORMAT_VERSION} codec {self.codec_id}"
            )
        if not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE:
            raise CodecError(f"{self.name}: block size {bs} outside [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]")
        n_blocks = -(-numel // bs)
        scales_end = HEADER.size + 4 * n_blocks
        check_length(self, buffer, scales_end + self._code_bytes(numel))
        scales = from_bytes(buffer, torch.float32, HEADER.size, 4 * n_blocks)
        check_finite(self, scales, "scales")
        if bool((scales < 0).any()):
            raise CodecError(f"{self.name}: negative block scale")
        codes = self._unpack(buffer[scales_end:], numel)
        padded = torch.zeros(n_blocks * bs, dtype=torch.float32)
        padded[:numel] = codes.to(torch.float32)
        values = (padded.view(n_blocks, bs) * scales.unsqueeze(1)).reshape(-1)[:numel].to(dtype)
        check_finite(self, values, "values (a scale near the float range's end)")  # code x scale overflowed
        return values.reshape(shape)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return (self.bits + 32.0 / self.block_size) / get_num_bits(info.descriptor.dtype)


class Int8BlockwiseCodec(BlockwiseCodec):
    """int8 codes in [-127, 127] (-128 is rejected), one fp32 scale per block."""

    name, levels, bits, codec_id = "int8", 127, 8, 8
    compression_type = 101  # not in hivemind's CompressionType enum (0..5), see module docstring

    def _pack(self, codes: torch.Tensor) -> bytes:
        return to_bytes(codes)

    def _code_bytes(self, numel: int) -> int:
        return numel

    def _unpack(self, data: bytes, numel: int) -> torch.Tensor:
        codes = from_bytes(data, torch.int8)
        if numel and int(codes.min()) == -128:
            raise CodecError(f"{self.name}: code -128 is outside the symmetric range [-127, 127]")
        return codes


class Int4BlockwiseCodec(BlockwiseCodec):
    """4-bit codes in [-7, 7] stored as nibble code+8 (nibble 0 is invalid), element 2i in the low nibble."""

    name, levels, bits, codec_id = "int4", 7, 4, 4
    compression_type = 102  # not in hivemind's CompressionType enum (0..5), see module docstring

    def _pack(self, codes: torch.Tensor) -> bytes:
        nibbles = (codes.to(torch.int16) + 8).to(torch.uint8)
        if nibbles.numel() % 2:
            nibbles = torch.cat([nibbles, torch.full((1,), 8, dtype=torch.uint8)])  # pad with code 0
        return to_bytes(nibbles[0::2] | (nibbles[1::2] << 4))

    def _code_bytes(self, numel: int) -> int:
        return (numel + 1) // 2

    def _unpack(self, data: bytes, numel: int) -> torch.Tensor:
        packed = from_bytes(data, torch.uint8)
        if numel == 0:
            return torch.empty(0, dtype=torch.int8)
        low, high = packed & 15, packed >> 4
        if numel % 2 and int(high[-1]) != 8:
            raise CodecError(f"{self.name}: non-zero padding nibble")
        if int(low.min()) == 0 or int(high.min()) == 0:  # the padding nibble is 8, so this covers all
            raise CodecError(f"{self.name}: nibble 0 is outside the symmetric range [-7, 7]")
        return (torch.stack([low, high], dim=1).reshape(-1)[:numel]).to(torch.int8) - 8
