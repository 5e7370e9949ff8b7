"""Codec by config name, so every peer of a run builds the same codec from the same config."""

from __future__ import annotations

from p2pmodel.compress.base import Codec
from p2pmodel.compress.blockwise import DEFAULT_BLOCK_SIZE, Int4BlockwiseCodec, Int8BlockwiseCodec
from p2pmodel.compress.floating import Float16Codec, NoCodec
from p2pmodel.compress.sparse import SparseTopKCodec

CODEC_NAMES = ("none", "fp16", "int8", "int4")  # dense: every element decodes close to its value


def make_codec(name: str, block_size: int = DEFAULT_BLOCK_SIZE) -> Codec:
    """Build the codec called `name`; `block_size` is used by the blockwise ones (int8, int4). "sparse" (top-k with
    2-bit values, for broadcast exchanges: not a config choice until that mode exists) has its own chunking."""
    if name == "none":
        return NoCodec()
    if name == "fp16":
        return Float16Codec()
    if name == "int8":
        return Int8BlockwiseCodec(block_size=block_size)
    if name == "int4":
        return Int4BlockwiseCodec(block_size=block_size)
    if name == "sparse":
        return SparseTopKCodec()
    raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(CODEC_NAMES)}, sparse")
