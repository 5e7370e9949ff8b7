"""Pseudo-gradient codecs (hivemind CompressionBase, pure torch) with error feedback; no network.

base.py      Codec base, CodecError (a ValueError), wire limits and hostile-input checks, encode/decode bytes
floating.py  NoCodec (raw passthrough) and Float16Codec, in hivemind's NONE / FLOAT16 wire layouts
blockwise.py Int8BlockwiseCodec and Int4BlockwiseCodec: absmax per block, deterministic decode
sparse.py    SparseTopKCodec: top 2 % magnitudes per chunk as 2-bit values (SparseLoCo), for broadcast exchanges
feedback.py  ErrorFeedback: per-tensor fp32 residuals, checkpointable
registry.py  make_codec(name, block_size) for "none", "fp16", "int8", "int4", "sparse"

Decode with `codec.extract(msg)` of the run's codec, not hivemind's `deserialize_torch_tensor`
(the int codecs use compression values outside hivemind's enum).
"""

from p2pmodel.compress.base import Codec, CodecError
from p2pmodel.compress.blockwise import Int4BlockwiseCodec, Int8BlockwiseCodec
from p2pmodel.compress.feedback import ErrorFeedback
from p2pmodel.compress.floating import Float16Codec, NoCodec
from p2pmodel.compress.registry import CODEC_NAMES, make_codec
from p2pmodel.compress.sparse import SparseTopKCodec

__all__ = [
    "CODEC_NAMES",
    "Codec",
    "CodecError",
    "ErrorFeedback",
    "Float16Codec",
    "Int4BlockwiseCodec",
    "Int8BlockwiseCodec",
    "NoCodec",
    "SparseTopKCodec",
    "make_codec",
]
