"""The state digest: sha256 over sorted names, shapes and float32 little-endian bytes. Two peers hold the same
state exactly when their digests match, whatever device or dtype they train in."""

import hashlib

import torch


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode() + b"\0" + repr(tuple(t.shape)).encode() + b"\0")
        h.update(t.numpy().tobytes())
    return h.hexdigest()
