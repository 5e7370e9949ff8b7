"""A directory written by ``versions pull`` (or ``versions merge``): manifest.json + the weights, read back and
checked against the manifest's digest. The CLI diffs and merges them; ``peer run --fork`` starts a lineage from
one."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def read_pulled(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(manifest, state under this project's parameter names); ValueError naming what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from p2pmodel.eval.digest import state_digest

    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        digest = manifest["digest"]
        if manifest.get("format") == "hf":  # transformers' layout and names (a pull of a model.kind = "hf" run)
            from p2pmodel.models.hf import pretrained_state

            state = pretrained_state(path)
        else:
            state = load_file(path / "model.safetensors")
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise ValueError(f"{path} is not a readable `versions pull` directory ({type(e).__name__}: {e})") from None
    if state_digest(state) != digest:
        raise ValueError(f"{path}: weights do not match the manifest's digest")
    return manifest, state
