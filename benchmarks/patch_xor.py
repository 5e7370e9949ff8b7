"""The alternative to replaying round objects: a lossless delta between two pulled versions, the XOR of their
float32 bit patterns compressed with zstandard (as git-theta-like tools do); one JSON object on stdout.

Needs ``zstandard`` (not a dependency of p2pmodel: ``pip install zstandard``). Run on two pulled directories,
e.g. those ``benchmarks/patches.py --keep`` leaves (A = v0.1.2, B_full = v0.1.3):

    python benchmarks/patch_xor.py DIR_A DIR_B

Measured 2026-12-07 on patches.py's v0.1.2 → v0.1.3 (tiny, 3 peers, int4, 2 rounds apart): state 3,371,496 bytes;
XOR + zstd level 3: 3,042,321 (0.90, 5 ms), level 19: 3,044,076 (0.90, 0.57 s), byte planes split then level 19:
2,767,580 (0.82). The two rounds' objects came to 953,608 (0.283): every parameter moves a little each round, so
its low mantissa bits are noise to a compressor, while a round object stores the int4 codes the round applied.
Replay it is; zstandard stays out of the dependencies.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from p2pmodel.eval.digest import canonical_bytes
from p2pmodel.versioning.pulled import read_pulled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args()
    try:
        import zstandard
    except ImportError:
        raise SystemExit("error: this measurement needs zstandard (pip install zstandard)") from None
    (_, a), (_, b) = read_pulled(args.a), read_pulled(args.b)
    names = sorted(b)
    bits = [torch.cat([s[n].reshape(-1).view(torch.int32) for n in names]) for s in (a, b)]
    xor = (bits[0] ^ bits[1]).numpy().tobytes()
    out: dict = {"state_bytes": len(canonical_bytes(b))}
    for level in (3, 19):
        started = time.perf_counter()
        out[f"xor_zstd{level}_bytes"] = len(zstandard.ZstdCompressor(level=level).compress(xor))
        out[f"xor_zstd{level}_s"] = round(time.perf_counter() - started, 3)
    planes = torch.frombuffer(bytearray(xor), dtype=torch.uint8).view(-1, 4).t().contiguous().numpy().tobytes()
    out["xor_byte_planes_zstd19_bytes"] = len(zstandard.ZstdCompressor(level=19).compress(planes))
    out.update(
        {
            k.replace("_bytes", "_ratio"): round(v / out["state_bytes"], 3)
            for k, v in out.items()
            if k.endswith("_bytes") and k != "state_bytes"
        }
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
