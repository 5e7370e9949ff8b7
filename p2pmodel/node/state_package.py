"""The downloadable state of a round: θ_global and the outer momentum in one safetensors blob, so a late or
lagging peer gets everything it needs to take part in the next round. Parsing is hostile-input safe."""

import json
import math
import struct

import torch
from safetensors.torch import load, save

from p2pmodel.core.errors import IntegrityError
from p2pmodel.eval import state_digest


def package_limit(shapes: dict[str, tuple]) -> int:
    """The most bytes a package for a model of these shapes can take: fp32 params and momentum, their headers."""
    values = sum(math.prod(shape) for shape in shapes.values())
    return 8 * values + sum(2 * (len(name) + 256) for name in shapes) + 4096


def pack_state(names: list[str], params: list[torch.Tensor], momentum: list[torch.Tensor | None], round_: int) -> bytes:
    tensors = {f"param/{n}": p.contiguous() for n, p in zip(names, params, strict=True)}
    tensors.update({f"momentum/{n}": m.contiguous() for n, m in zip(names, momentum, strict=True) if m is not None})
    return save(tensors, metadata={"round": str(round_)})


def unpack_state(blob: bytes, shapes: dict[str, tuple], expected_digest: str) -> tuple[dict, list, int]:
    """→ (params by name, momentum list in ``shapes``' order, round); IntegrityError if anything is off, shapes
    included (the digest covers them, but only the model knows which ones it can load)."""
    try:
        tensors = load(blob)
        round_ = _round_from_header(blob)
    except IntegrityError:
        raise
    except Exception as e:
        raise IntegrityError(f"state package is not valid safetensors ({type(e).__name__})") from None
    params = {k.removeprefix("param/"): v for k, v in tensors.items() if k.startswith("param/")}
    if set(params) != set(shapes) or any(t.dtype != torch.float32 for t in tensors.values()):
        raise IntegrityError("state package does not match this run's parameters")
    wrong = [n for n in shapes if tuple(params[n].shape) != tuple(shapes[n])]
    if wrong:
        raise IntegrityError(f"state package has the wrong shape for {wrong[0]}")
    digest = state_digest(params)
    if digest != expected_digest:
        raise IntegrityError(f"state package digest {digest[:12]} is not the advertised {expected_digest[:12]}")
    momentum = [tensors.get(f"momentum/{n}") for n in shapes]
    for m, n in zip(momentum, shapes, strict=True):
        if m is not None and m.shape != params[n].shape:
            raise IntegrityError(f"momentum of {n} has the wrong shape")
    return params, momentum, round_


def _round_from_header(blob: bytes) -> int:
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    value = header.get("__metadata__", {}).get("round")
    if not isinstance(value, str) or not value.isdigit():
        raise IntegrityError("state package has no round")
    return int(value)
