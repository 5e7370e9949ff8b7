"""A Hugging Face transformers causal LM built from a local config file, behind the project's model interface.

Nothing is downloaded: the config is read from disk (``model.hf_config_path``: a config.json or the directory
holding one) and the weights are initialized from the genesis seed by ``AutoModelForCausalLM.from_config``.
The adapter gives the rest of the code what the built-in GPT gives: ``model(x, y) -> (logits, loss)`` and
``model.config.seq_len``. Needs the optional ``hf`` extra (``pip install 'p2pmodel[hf]'``).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from p2pmodel.core.errors import ConfigError


@dataclass
class HFAdapterConfig:
    seq_len: int
    vocab_size: int
    model_type: str


class HFCausalLM(nn.Module):
    """Wraps a transformers ``*ForCausalLM``; ``forward(idx, targets)`` returns (logits, loss) like GPT.

    The loss is computed here on already-shifted targets (the data stream yields x and x shifted by one), in
    fp32 as the built-in GPT does. Tied weights (GPT-2's lm_head = wte) appear once in ``named_parameters()``.
    """

    def __init__(self, lm: nn.Module, seq_len: int):
        super().__init__()
        self.lm = lm
        self.config = HFAdapterConfig(
            seq_len=seq_len, vocab_size=int(lm.config.vocab_size), model_type=str(lm.config.model_type)
        )

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.shape[1]
        if T > self.config.seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds the model's seq_len {self.config.seq_len}")
        logits = self.lm(input_ids=idx, use_cache=False).logits
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss


def _import_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub, even if something asks it to
    try:
        import transformers
    except ImportError:
        raise ConfigError("model.kind = 'hf' needs the transformers package: pip install 'p2pmodel[hf]'") from None
    return transformers


def _max_positions(hf_config) -> int | None:
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        v = getattr(hf_config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def load_hf_config(path: str | None):
    """The transformers config at ``path`` (config.json or its directory), read from disk only."""
    if not path:
        raise ConfigError("model.kind = 'hf' needs model.hf_config_path (a local config.json or its directory)")
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"model.hf_config_path: {p} does not exist (a local config.json or its directory)")
    if p.is_dir() and not (p / "config.json").is_file():
        raise ConfigError(f"model.hf_config_path: no config.json in {p}")
    transformers = _import_transformers()
    try:
        return transformers.AutoConfig.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model.hf_config_path: cannot load {p}: {first}") from None


def build_hf_model(model_cfg) -> HFCausalLM:
    """Config → HFCausalLM in fp32 on the CPU. The caller seeds torch (build_model), so weights depend only on
    (config, seed). model.vocab_size must equal the config's vocab_size (the data check uses it) and
    model.seq_len must fit the config's position table."""
    hf_config = load_hf_config(model_cfg.hf_config_path)
    vocab = getattr(hf_config, "vocab_size", None)
    if vocab != model_cfg.vocab_size:
        raise ConfigError(
            f"model.vocab_size ({model_cfg.vocab_size}) must equal vocab_size in {model_cfg.hf_config_path} ({vocab})"
        )
    positions = _max_positions(hf_config)
    if positions is not None and model_cfg.seq_len > positions:
        raise ConfigError(
            f"model.seq_len ({model_cfg.seq_len}) exceeds the {positions} positions of {model_cfg.hf_config_path}"
        )
    transformers = _import_transformers()
    try:
        lm = transformers.AutoModelForCausalLM.from_config(hf_config)
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model.hf_config_path: no causal LM for {model_cfg.hf_config_path}: {first}") from None
    return HFCausalLM(lm.float(), model_cfg.seq_len)


PREFIX = "lm."  # HFCausalLM's parameter names are the transformers model's, under its ``lm`` attribute


def export_pretrained(config_json: bytes, state: dict[str, torch.Tensor], seq_len: int, out: Path) -> list[str]:
    """Write ``state`` (this project's parameter names) into ``out`` as transformers writes a model
    (config.json + model.safetensors, tied weights once), so ``AutoModelForCausalLM.from_pretrained(out)`` loads
    it; returns the files written. ``config_json``: the run's config file, as its sha256 in the run record says."""
    import tempfile

    transformers = _import_transformers()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        (Path(tmp) / "config.json").write_bytes(config_json)
        hf_config = transformers.AutoConfig.from_pretrained(tmp, local_files_only=True)
        model = HFCausalLM(transformers.AutoModelForCausalLM.from_config(hf_config).float(), seq_len)
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {n for n in missing if n not in dict(model.named_parameters())}  # a tied duplicate's second name
        if unexpected or set(missing) - tied:
            raise ValueError(f"the state does not fit the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
        saved = Path(tmp) / "saved"
        model.lm.save_pretrained(saved, safe_serialization=True)
        files = sorted(p.name for p in saved.iterdir())
        for name in files:
            os.replace(saved / name, out / name)
    return files


def pretrained_state(directory: Path) -> dict[str, torch.Tensor]:
    """The model.safetensors ``export_pretrained`` wrote, under this project's parameter names."""
    from safetensors.torch import load_file

    return {PREFIX + name: t for name, t in load_file(str(directory / "model.safetensors")).items()}
