"""Codec figures as JSON lines: bytes and error vs fp32, encode/decode speed vs the fp32 passthrough baseline.

Run: python benchmarks/codecs.py [--numel N] [--block-size B]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from hivemind.compression import CompressionInfo, Float16Compression

from p2pmodel.compress import CODEC_NAMES, make_codec


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--numel", type=int, default=1 << 22)
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args()
    x = torch.randn(args.numel, generator=torch.Generator().manual_seed(0))
    info = CompressionInfo.from_tensor(x)
    base = make_codec("none", args.block_size)
    base_msg = base.compress(x, info)
    base_enc = best_of(lambda: base.compress(x, info))
    base_dec = best_of(lambda: base.extract(base_msg))
    for name in CODEC_NAMES:
        codec = make_codec(name, args.block_size)
        msg = codec.compress(x, info)
        y = codec.extract(msg)
        row = {
            "codec": name,
            "block_size": args.block_size if name in ("int8", "int4") else None,
            "numel": args.numel,
            "bytes_vs_fp32": 4 * args.numel / len(msg.SerializeToString()),
            "rms_err_vs_rms": float((y - x).pow(2).mean().sqrt() / x.pow(2).mean().sqrt()),
            "encode_time_vs_none": best_of(lambda c=codec: c.compress(x, info)) / base_enc,
            "decode_time_vs_none": best_of(lambda c=codec, m=msg: c.extract(m)) / base_dec,
        }
        if name == "fp16":
            stock = Float16Compression()
            ours = best_of(lambda c=codec: c.compress(x, info))
            row["encode_time_vs_hivemind_fp16"] = ours / best_of(lambda s=stock: s.compress(x, info))
        print(json.dumps(row))


if __name__ == "__main__":
    main()
