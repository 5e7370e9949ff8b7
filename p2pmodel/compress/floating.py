"""Float codecs (raw passthrough, fp16) in hivemind's own layouts, so its stock deserializer reads them."""

from __future__ import annotations

import torch
from hivemind.compression.base import CompressionInfo
from hivemind.compression.floating import get_num_bits
from hivemind.proto import runtime_pb2

from p2pmodel.compress.base import (
    Codec,
    check_finite,
    check_input,
    check_length,
    check_message,
    from_bytes,
    to_bytes,
)


class NoCodec(Codec):
    """Raw values in their own dtype (hivemind's NONE layout). For fp32 deltas this is fp32 passthrough."""

    name = "none"
    compression_type = runtime_pb2.CompressionType.NONE

    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        tensor, dtype_name = check_input(self, tensor)
        return runtime_pb2.Tensor(
            compression=self.compression_type, buffer=to_bytes(tensor), size=tensor.shape, dtype=dtype_name
        )

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        shape, numel, dtype = check_message(self, serialized_tensor)
        check_length(self, serialized_tensor.buffer, numel * dtype.itemsize)
        values = from_bytes(serialized_tensor.buffer, dtype)
        check_finite(self, values)
        return values.reshape(shape)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return 1.0


class Float16Codec(Codec):
    """IEEE fp16 values, clamped to the fp16 range; the message records the original dtype.

    Byte-compatible with hivemind's Float16Compression for float16/32/64 inputs (a bfloat16 input is
    accepted too, but hivemind's stock deserializer cannot read that message: use `extract`).
    """

    name = "fp16"
    compression_type = runtime_pb2.CompressionType.FLOAT16
    FP16_MAX = torch.finfo(torch.float16).max

    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        tensor, dtype_name = check_input(self, tensor)
        half = tensor.to(torch.float32).clamp(-self.FP16_MAX, self.FP16_MAX).to(torch.float16)
        return runtime_pb2.Tensor(
            compression=self.compression_type, buffer=to_bytes(half), size=tensor.shape, dtype=dtype_name
        )

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        shape, numel, dtype = check_message(self, serialized_tensor)
        check_length(self, serialized_tensor.buffer, numel * 2)
        half = from_bytes(serialized_tensor.buffer, torch.float16)
        check_finite(self, half)
        return half.to(dtype).reshape(shape)  # exact to fp32/fp64; to bf16 rounds (deterministically)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return 16.0 / get_num_bits(info.descriptor.dtype)
