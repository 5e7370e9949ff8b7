"""Round objects: one committed round as a content-addressed object, like a git commit. It holds the parent state's
digest, the exact aggregate the round applied, the outer-step settings, the contributors and the child digest, so
anyone holding the parent state and its outer momentum can replay the round and get the child bit for bit
(``replay``), and a chain of them is a patch from one version to another (``versions pull --from``).

Why the aggregate is small: in all-reduce mode every peer applies the decoded bytes the reducers sent (sync/
allreduce.py), i.e. values on the codec's grid (int4: a code times a block scale). Encoding the aggregate again
with the same codec, over the same parts hivemind cut the tensors into (``part_sizes``), gives back exactly the
same values, so the object stores those codec bytes (int4 with 64-element blocks: 0.14 of float32). Every part is
checked bit for bit after encoding; a part that does not come back identical (a broadcast aggregate, another
layout) is stored as raw float32. The object is never lossy, only larger. A peer that averages alone applies its
own delta moved onto the same grid (``on_grid``), so its round's object is as small.

Layout (msgpack, hostile-input safe: size-bounded, no extension types, every field checked)::

    {"format": "p2pmodel-round/1", "run_id", "round", "parent", "child",       -- digests: sha256 hex
     "outer": {"lr", "momentum", "nesterov"}, "codec": {"name", "block_size"},
     "contributors": [[peer, samples], ...],
     "tensors": [[name, [shape...], [[kind, numel, bytes], ...]], ...]}        -- kind "q" (codec) or "raw"

Its id is the sha256 of these bytes; a fetcher checks the id, then ``replay`` checks the parent digest before and
the child digest after, so a damaged or forged object is refused before its child state is used."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from hivemind.compression.base import CompressionInfo
from hivemind.proto import runtime_pb2

from p2pmodel.compress import make_codec
from p2pmodel.compress.base import Codec
from p2pmodel.core import wire
from p2pmodel.core.errors import IntegrityError, P2PModelError
from p2pmodel.core.ids import is_hex64
from p2pmodel.eval.digest import state_digest
from p2pmodel.swarm.signed import canonical_pack
from p2pmodel.sync.outer import OuterOptimizer

FORMAT = "p2pmodel-round/1"
# hivemind.averaging.partition.DEFAULT_PART_SIZE_BYTES, the part size DeterministicAverager leaves at its default:
# tests/unit/test_round_object.py fails loudly if an upgrade changes it
PART_SIZE_BYTES = 1 << 19
GRID_CODECS = ("int8", "int4", "fp16")  # all-reduce aggregates of these lie on the codec's grid
MAX_CONTRIBUTORS = 1024
MAX_TENSORS = 100_000


@dataclass(frozen=True)
class RoundObject:
    run_id: str
    round: int
    parent: str
    child: str
    outer: dict  # {"lr": float, "momentum": float, "nesterov": bool}
    contributors: list[list]
    aggregate: dict[str, torch.Tensor] = field(repr=False)


def part_sizes(numel: int, codec: Codec, index: int = 0) -> list[int]:
    """How hivemind's TensorPartContainer cuts a float32 tensor of ``numel`` elements into parts (each part is
    encoded on its own, so the codec's blocks restart at every part)."""
    info = CompressionInfo.from_tensor(torch.zeros(1), key=index)
    per_part = max(1, int(PART_SIZE_BYTES / (4 * codec.estimate_compression_ratio(info))))
    sizes = [per_part] * (numel // per_part)
    return sizes + [numel % per_part] if numel % per_part else sizes or [0]


def _cut(flat: torch.Tensor, codec: Codec | None, index: int) -> list[torch.Tensor]:
    """``flat`` in the parts hivemind would cut it into (one part without a codec)."""
    sizes = part_sizes(flat.numel(), codec, index) if codec else [flat.numel()]
    return list(torch.split(flat, sizes)) if flat.numel() else [flat]


def on_grid(aggregate: Mapping[str, torch.Tensor], codec_name: str, block_size: int) -> dict[str, torch.Tensor]:
    """``aggregate`` moved to the nearest values its round object stores as codec bytes: each part (as
    ``encode_round`` cuts it) encoded and decoded once; unchanged for a codec without a grid. A peer that averages
    alone applies these, so its round's object is as small as an averaged round's (0.14 of float32 at int4), not
    raw float32: a peer that lost to it replays ~0.5 MB instead of downloading a 6.7 MB state (configs/tiny.toml)."""
    if codec_name not in GRID_CODECS:
        return dict(aggregate)
    codec, out = make_codec(codec_name, block_size), {}
    for index, name in enumerate(sorted(aggregate)):
        t = aggregate[name]
        parts = []
        for part in _cut(t.detach().to("cpu", torch.float32).reshape(-1), codec, index):
            part = part.contiguous()
            if part.numel() and bool(torch.isfinite(part).all()):
                part = codec.extract(codec.compress(part, CompressionInfo.from_tensor(part))).reshape(-1)
            parts.append(part)
        out[name] = torch.cat(parts).reshape(t.shape).to(t.dtype)
    return out


def encode_round(
    *,
    run_id: str,
    round_: int,
    parent: str,
    child: str,
    outer: Mapping,
    codec_name: str,
    block_size: int,
    contributors: Mapping[str, int],
    aggregate: Mapping[str, torch.Tensor],
) -> bytes:
    """The object's bytes (its id is their sha256); ``aggregate`` by parameter name, float32 on the CPU."""
    codec = make_codec(codec_name, block_size) if codec_name in GRID_CODECS else None
    tensors = []
    for index, name in enumerate(sorted(aggregate)):
        t = aggregate[name].detach().to("cpu", torch.float32).contiguous()
        tensors.append([name, list(t.shape), [_encode_part(part, codec) for part in _cut(t.reshape(-1), codec, index)]])
    body = {
        "format": FORMAT,
        "run_id": run_id,
        "round": int(round_),
        "parent": parent,
        "child": child,
        "outer": {"lr": float(outer["lr"]), "momentum": float(outer["momentum"]), "nesterov": bool(outer["nesterov"])},
        "codec": {"name": codec_name, "block_size": int(block_size)},
        "contributors": [[p, int(n)] for p, n in sorted(contributors.items())],
        "tensors": tensors,
    }
    return canonical_pack(body)


def _encode_part(part: torch.Tensor, codec: Codec | None) -> list:
    raw = ["raw", part.numel(), part.numpy().tobytes()]
    if codec is None or part.numel() == 0:
        return raw
    try:
        message = codec.compress(part, CompressionInfo.from_tensor(part))
        back = codec.extract(message).reshape(-1)
    except (ValueError, P2PModelError):  # e.g. a non-finite value: keep it raw
        return raw
    if torch.equal(back.view(torch.int32), part.view(torch.int32)):
        return ["q", part.numel(), message.buffer]
    return raw


def decode_round(blob: bytes, shapes: Mapping[str, tuple], max_bytes: int) -> RoundObject:
    """Parse an untrusted object for a model of ``shapes`` (name → shape); IntegrityError naming what is wrong."""
    try:
        body = wire.unpack(blob, max_bytes)
    except P2PModelError as e:
        raise IntegrityError(f"round object: {e}") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise IntegrityError("round object: not a p2pmodel round object")
    run_id, round_, parent, child = (body.get(k) for k in ("run_id", "round", "parent", "child"))
    if not isinstance(run_id, str) or type(round_) is not int or round_ < 1:
        raise IntegrityError("round object: bad run id or round")
    if not (is_hex64(parent) and is_hex64(child)):
        raise IntegrityError("round object: parent and child must be sha256 digests")
    outer, codec_spec = body.get("outer"), body.get("codec")
    if not (
        isinstance(outer, dict)
        and type(outer.get("lr")) is float
        and type(outer.get("momentum")) is float
        and type(outer.get("nesterov")) is bool
        and math.isfinite(outer["lr"])
        and outer["lr"] > 0
        and 0 <= outer["momentum"] < 1
        and (outer["momentum"] > 0 or not outer["nesterov"])  # what OuterOptimizer accepts (else a ValueError)
    ):
        raise IntegrityError("round object: bad outer-step settings")
    codec = _codec(codec_spec)
    contributors = body.get("contributors")
    if not (
        isinstance(contributors, list)
        and len(contributors) <= MAX_CONTRIBUTORS
        and all(
            isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and type(c[1]) is int for c in contributors
        )
    ):
        raise IntegrityError("round object: bad contributors")
    tensors = body.get("tensors")
    if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
        raise IntegrityError("round object: bad tensor list")
    aggregate = {}
    for item in tensors:
        name, shape, t = _tensor(item, codec)
        if name in aggregate or tuple(shapes.get(name, ())) != shape or name not in shapes:
            raise IntegrityError(f"round object: tensor {name[:64]!r} does not fit this model")
        aggregate[name] = t
    if set(aggregate) != set(shapes):
        raise IntegrityError("round object: tensors do not match the model's parameters")
    outer = {"lr": outer["lr"], "momentum": outer["momentum"], "nesterov": outer["nesterov"]}
    return RoundObject(run_id, round_, parent, child, outer, [list(c) for c in contributors], aggregate)


def _codec(spec) -> Codec | None:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or type(spec.get("block_size")) is not int:
        raise IntegrityError("round object: bad codec")
    if spec["name"] not in GRID_CODECS:
        return None
    try:
        return make_codec(spec["name"], spec["block_size"])
    except ValueError as e:
        raise IntegrityError(f"round object: {e}") from None


def _tensor(item, codec: Codec | None) -> tuple[str, tuple, torch.Tensor]:
    if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[1], list)):
        raise IntegrityError("round object: bad tensor entry")
    name, shape, parts = item
    if not all(type(d) is int and d >= 0 for d in shape) or not isinstance(parts, list):
        raise IntegrityError(f"round object: bad shape or parts for {name[:64]!r}")
    numel, values = math.prod(shape), []
    for part in parts:
        if not (isinstance(part, list) and len(part) == 3 and type(part[1]) is int and isinstance(part[2], bytes)):
            raise IntegrityError(f"round object: bad part of {name[:64]!r}")
        kind, count, data = part
        if kind == "raw" and len(data) == 4 * count:
            values.append(torch.frombuffer(bytearray(data), dtype=torch.float32) if count else torch.zeros(0))
        elif kind == "q" and codec is not None and count > 0:
            message = runtime_pb2.Tensor(compression=codec.compression_type, buffer=data, size=[count], dtype="float32")
            try:
                values.append(codec.extract(message).reshape(-1))
            except (ValueError, P2PModelError) as e:
                raise IntegrityError(f"round object: part of {name[:64]!r}: {e}") from None
        else:
            raise IntegrityError(f"round object: bad part of {name[:64]!r}")
    flat = torch.cat(values) if values else torch.zeros(0)
    if flat.numel() != numel or not bool(torch.isfinite(flat).all()):
        raise IntegrityError(f"round object: {name[:64]!r} has the wrong size or non-finite values")
    return name, tuple(shape), flat.reshape(shape)


def replay(
    state: dict[str, torch.Tensor], momentum: dict[str, torch.Tensor], obj: RoundObject
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The round's child (state, outer momentum) from its parent's, by the same outer step the peers ran
    (sync/outer.py: element-wise, the same bits on any CPU). IntegrityError if ``state`` is not the object's parent
    or the result is not its child. Momentum by parameter name; a name without one starts its buffer here."""
    if state_digest(state) != obj.parent:
        raise IntegrityError(f"round object of round {obj.round} does not start from this state")
    names = sorted(state)
    params = [state[n].detach().to("cpu", torch.float32).clone() for n in names]
    outer = OuterOptimizer(params, lr=obj.outer["lr"], momentum=obj.outer["momentum"], nesterov=obj.outer["nesterov"])
    buffers = [momentum[n].detach().to("cpu", torch.float32).clone() if n in momentum else None for n in names]
    for b, p, n in zip(buffers, params, names, strict=True):
        if b is not None and b.shape != p.shape:
            raise IntegrityError(f"momentum of {n[:64]!r} has the wrong shape")
    outer.momentum_buffers = buffers
    outer.step([obj.aggregate[n] for n in names])
    child = dict(zip(names, params, strict=True))
    if state_digest(child) != obj.child:
        raise IntegrityError(f"replaying round {obj.round} gave another state than its child {obj.child[:12]}")
    moved = {n: b for n, b in zip(names, outer.momentum_buffers, strict=True) if b is not None}
    return child, moved
