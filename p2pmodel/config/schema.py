"""Pydantic models for every knob of a peer. Units live in names (``*_s``, ``*_bytes``); bounds live in Field."""

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from p2pmodel import PROTOCOL_VERSION


def _file_sha256(path: str | None) -> str | None:
    """sha256 of a config file (a directory means its config.json); None when unset or unreadable."""
    if not path:
        return None
    p = Path(path)
    p = p / "config.json" if p.is_dir() else p
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return None


def _fork_origin(path: str) -> dict[str, str | None]:
    """What a fork starts from, as its directory's manifest says (Peer checks the weights against the digest)."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    if not isinstance(manifest, dict):
        manifest = {}
    return {k: (str(manifest[m]) if manifest.get(m) is not None else None) for k, m in _FORK_FIELDS.items()}


_FORK_FIELDS = {"digest": "digest", "from_run": "run_id", "from_version": "version"}
SpecValue = str | int | float | bool | None


def _flatten(tree: dict, prefix: str = "") -> dict[str, SpecValue]:
    """Nested dicts to dotted keys; lists (eval.checks) become their canonical JSON text."""
    out: dict[str, SpecValue] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True, separators=(",", ":"))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SwarmConfig(_Section):
    initial_peers: list[str] = Field(
        default_factory=list, description="Multiaddrs of peers to join; empty starts a new swarm."
    )
    host_maddrs: list[str] = Field(
        default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"], description="Multiaddrs to listen on."
    )
    announce_maddrs: list[str] = Field(
        default_factory=list, description="Public multiaddrs to advertise (behind NAT / cloud)."
    )
    client_mode: bool = Field(False, description="Do not accept incoming connections (peer behind NAT).")
    use_relay: bool = Field(
        True, description="libp2p circuit relays: reach peers through a relay, and relay for peers behind NAT."
    )
    use_auto_relay: bool = Field(
        False,
        description="Behind NAT: hold a slot on a relay and announce its /p2p-circuit address so peers reach this one.",
    )
    relays: list[str] = Field(
        default_factory=list, description="Relays for use_auto_relay (multiaddrs with /p2p/); empty = initial_peers."
    )
    record_ttl_s: float = Field(
        300.0,
        gt=1,
        le=3600,
        description="Lifetime of this peer's signed DHT record, refreshed every third of it (a crashed peer stays "
        "listed this long; a refresh is a DHT store, ~30 KB of calls at 4 peers, benchmarks/control_calls.py).",
    )
    join_timeout_s: float = Field(30.0, gt=0, le=600, description="Deadline to reach the initial peers.")


class DataConfig(_Section):
    source: Literal["stdlib", "text", "bin", "hf_disk"] = Field(
        "stdlib",
        description="stdlib: Python's own source (always present); text: files by glob; bin: nanoGPT uint16 .bin dir; "
        "hf_disk: a datasets dataset saved with save_to_disk.",
    )
    paths: list[str] = Field(
        default_factory=list,
        description="Globs (text), one directory with train.bin/val.bin (bin) or one save_to_disk directory (hf_disk).",
    )
    max_corpus_bytes: int = Field(8_000_000, ge=4096, description="Read at most this many bytes of text (stdlib/text).")
    val_fraction: float = Field(
        0.05, gt=0, lt=0.5, description="Share of files (by path hash) held out for validation."
    )
    tokenizer_path: str | None = Field(
        None,
        description="Local tokenizer (tokenizer.json or a transformers tokenizer dir) for stdlib/text/hf_disk; "
        "None = bytes.",
    )
    text_field: str = Field("text", min_length=1, max_length=128, description="Text column of an hf_disk dataset.")


class ModelConfig(_Section):
    kind: Literal["gpt", "hf"] = Field(
        "gpt", description="gpt: the built-in GPT; hf: transformers causal LM from a config."
    )
    vocab_size: int = Field(256, ge=2, le=1_000_000, description="Token vocabulary size (256 = bytes).")
    seq_len: int = Field(128, ge=8, le=65536, description="Context length in tokens (training and eval windows).")
    n_layer: int = Field(4, ge=1, le=128, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, le=128, description="Attention heads per block.")
    n_embd: int = Field(128, ge=8, le=16384, description="Embedding width; multiple of n_head.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout probability (0 keeps training deterministic).")
    hf_config_path: str | None = Field(None, description="Local transformers config.json (kind = 'hf').")
    init_from: str | None = Field(
        None,
        description="A fork: a directory written by `versions pull` or `versions merge` whose state is this lineage's"
        " genesis instead of the seed's random init (peer run --fork DIR).",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class TrainConfig(_Section):
    inner_steps: int = Field(50, ge=1, le=100_000, description="H: local optimizer steps per outer round.")
    batch_size: int = Field(8, ge=1, le=65536, description="Sequences per optimizer step (after accumulation).")
    grad_accum_steps: int = Field(1, ge=1, le=1024, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(1e-3, gt=0, le=1, description="Peak AdamW learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a fraction of lr.")
    warmup_steps: int = Field(50, ge=0, description="Linear warmup steps.")
    total_steps: int = Field(5000, ge=1, description="Inner steps over which the cosine schedule decays.")
    weight_decay: float = Field(0.1, ge=0, le=1, description="AdamW weight decay.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm (0 disables clipping).")
    seed: int = Field(0, ge=0, description="Genesis seed: initial weights and data order derive from it.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA if present, else CPU.")
    torch_threads: int = Field(0, ge=0, le=1024, description="torch intra-op threads (0 = torch default).")

    @model_validator(mode="after")
    def _accum_divides_batch(self):
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of grad_accum_steps ({self.grad_accum_steps})"
            )
        return self


class SyncConfig(_Section):
    outer_lr: float = Field(0.7, gt=0, le=10, description="Outer SGD learning rate (DiLoCo).")
    outer_momentum: float = Field(0.9, ge=0, lt=1, description="Outer Nesterov momentum.")
    nesterov: bool = Field(True, description="Nesterov momentum for the outer step.")
    target_group_size: int = Field(64, ge=1, le=1024, description="Peers per averaging group (the whole swarm).")
    min_group_size: int = Field(2, ge=1, le=1024, description="Fewer peers than this: apply own delta alone.")
    matchmaking_time_s: float = Field(5.0, gt=0, le=600, description="How long to gather peers for a round.")
    allreduce_timeout_s: float = Field(60.0, gt=0, le=3600, description="Deadline for the averaging exchange.")
    request_timeout_s: float = Field(
        3.0, gt=0, le=600, description="Per-request deadline in matchmaking; keep it below matchmaking_time_s."
    )
    chunk_timeout_s: float = Field(
        5.0, gt=0, le=600, description="A peer silent this long in the all-reduce is dropped (a reducer: 2x this)."
    )
    download_timeout_s: float = Field(120.0, gt=0, le=3600, description="Deadline to download state from a peer.")
    overlap: bool = Field(
        False,
        description="Average round r's delta in the background during round r+1's inner steps; apply it one round"
        " late (eager update). Every peer of a run must agree.",
    )
    mode: Literal["allreduce", "broadcast"] = Field(
        "allreduce",
        description="allreduce: hivemind's butterfly all-reduce (trusted swarms); broadcast: every peer fetches every"
        " other's signed update and aggregates them itself (open swarms; with sync.aggregator).",
    )
    aggregator: Literal["mean", "trimmed_mean", "centered_clip"] = Field(
        "centered_clip",
        description="broadcast: how the updates are combined (mean is not robust to a bad peer; trimmed_mean is"
        " coordinate-wise and zeroes most of what sparse updates carry).",
    )
    max_norm_ratio: float = Field(
        4.0,
        ge=0,
        le=1e6,
        description="broadcast: refuse an update whose norm exceeds this many times the round's median (with 3 or"
        " more updates); 0: no norm bound. Malformed and non-finite updates are refused whatever this says.",
    )


_SHARED_SYNC = {"outer_lr", "outer_momentum", "nesterov", "overlap"}
_BROADCAST_SYNC = {"mode", "aggregator", "max_norm_ratio"}


class CompressConfig(_Section):
    codec: Literal["none", "fp16", "int8", "int4", "sparse"] = Field(
        "int4", description="Codec for pseudo-gradients on the wire (sparse: top 2 %, 2-bit; broadcast mode only)."
    )
    block_size: int = Field(64, ge=8, le=1 << 20, description="Elements per quantization block.")
    error_feedback: bool = Field(True, description="Keep the quantization residual and add it next round.")


class MetricCheck(_Section):
    name: str = Field(..., min_length=1, max_length=64, description="Name of the check, shown in votes.")
    metric: Literal["val_loss", "perplexity"] = Field(..., description="Metric of the eval report to check.")
    max: float = Field(..., gt=0, description="A candidate whose metric exceeds this fails the check.")


# a field name of run records (node/run_registry.py): the spec names each set's fields eval.sets.NAME.FIELD
_SET_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)
MAX_EVAL_SETS = 16  # votes carry at most 32 metrics: val_loss, perplexity and one per set


class EvalSet(_Section):
    """A named eval set, a test of the model: the validation split of its own corpus, computed by every peer on
    the same fixed batches, with its own regression rule (a release candidate that regresses on it is rejected)."""

    name: str = Field(..., description="Short identifier (a-z 0-9 _, at most 32); its metric is val_loss/NAME.")
    data: DataConfig = Field(..., description="Its corpus, as the data section says; its validation split is used.")
    batches: int = Field(8, ge=1, le=10_000, description="Fixed validation batches of this set per evaluation.")
    tolerance: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Relative val-loss increase on this set still counted as no regression against the parent"
        " version; None = versioning.regression_tolerance.",
    )

    @field_validator("name")
    @classmethod
    def _short_identifier(cls, name: str) -> str:
        if not _SET_NAME.fullmatch(name):
            raise ValueError(f"eval set name {name!r} must be 1-32 of a-z 0-9 _, starting with a letter")
        return name


class EvalConfig(_Section):
    batches: int = Field(8, ge=1, le=10_000, description="Fixed validation batches per evaluation.")
    batch_size: int = Field(16, ge=1, le=65536, description="Sequences per validation batch (named sets too).")
    every_rounds: int = Field(
        1,
        ge=1,
        le=10_000,
        description="Evaluate the committed state every N rounds (release candidates always): at configs/tiny.toml"
        " (H = 50) one evaluation costs ~10 % of an inner phase. Local: peers may differ.",
    )
    checks: list[MetricCheck] = Field(default_factory=list, description="Named thresholds a release must pass.")
    sets: list[EvalSet] = Field(
        default_factory=list,
        max_length=MAX_EVAL_SETS,
        description="Named eval sets: each release candidate is also evaluated on these, and rejected if any"
        " regresses beyond its tolerance (docs/versions.md, Tests for a model).",
    )

    @field_validator("sets")
    @classmethod
    def _set_names_unique(cls, sets: list[EvalSet]) -> list[EvalSet]:
        names = [s.name for s in sets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate name {dup[0]!r} (each eval set needs its own name: its metric's)")
        return sets


class VersioningConfig(_Section):
    release_every: int = Field(2, ge=1, description="Committed rounds between release candidates.")
    keep_checkpoints: int = Field(3, ge=1, le=10_000, description="Untagged round checkpoints kept on disk.")
    regression_tolerance: float = Field(
        0.01, ge=0, le=1, description="Relative val-loss increase still counted as no regression."
    )
    keep_tagged: int = Field(0, ge=0, description="Tagged states kept on disk and served (0 = all).")
    keep_rounds: int = Field(
        32, ge=0, le=100_000, description="Rounds whose patch objects (aggregate, momentum) are kept and served."
    )
    allowlist: list[str] = Field(
        default_factory=list, description="Only these PeerIDs may vote (empty = the round's members)."
    )
    major_fraction: float = Field(0.8, gt=2 / 3, le=1, description="Share of the electorate a MAJOR bump needs.")


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["text", "json"] = Field("text", description="Log line format.")


class ObservabilityConfig(_Section):
    status_port: int = Field(0, ge=0, le=65535, description="HTTP /status and /metrics port (0 = off).")
    status_host: str = Field("127.0.0.1", description="Address the status endpoint binds (0.0.0.0 to scrape).")


class Config(_Section):
    run_name: str = Field("default", min_length=1, max_length=128, description="Human label of the lineage.")
    swarm: SwarmConfig = Field(default_factory=SwarmConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    versioning: VersioningConfig = Field(default_factory=VersioningConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)

    @model_validator(mode="after")
    def _exchange_fits(self):
        if self.compress.codec == "sparse" and self.sync.mode != "broadcast":
            raise ValueError("compress.codec = 'sparse' needs sync.mode = 'broadcast' (an all-reduce sums dense parts)")
        if self.sync.overlap and self.sync.mode != "allreduce":
            raise ValueError("sync.overlap works with sync.mode = 'allreduce' only (for now)")
        return self

    def lineage_spec(self) -> dict:
        """What defines a run: peers that differ here must not average or vote together.

        Shared: the model, the data and eval spec, the genesis seed, H (the lr schedule follows the swarm's
        position, (round - 1) * H + step), the codec (peers decode each other's bytes) and the outer optimizer
        (every peer applies the same outer step to the same mean, so all commit the same bits) and whether the
        exchange overlaps the next inner phase (a blocking peer would wait a whole inner phase for an overlapped
        one's commit every round), and with ``sync.mode = "broadcast"`` the mode and aggregator (every peer
        computes the aggregate itself; an all-reduce run's spec, and id, stay what they were), and the named eval
        sets with their effective tolerances when there are any (every peer must judge a candidate alike; a run
        without them keeps its id). Local, free to
        differ: inner optimizer and batch (weighted by samples), group sizes and timings, device, logging."""
        # local paths differ between machines: the content they point at is what defines the run (the
        # validation sets' fingerprints cover data and tokenizer; the HF config file is hashed here)
        spec = {
            "run_name": self.run_name,
            "model": {
                **self.model.model_dump(exclude={"hf_config_path", "init_from"}),
                "hf_config": _file_sha256(self.model.hf_config_path),
            },
            "data": self.data.model_dump(exclude={"paths", "tokenizer_path"}),
            "eval": self.eval.model_dump(exclude={"sets", "every_rounds"}),
            "train": {"seed": self.train.seed, "inner_steps": self.train.inner_steps},
            "sync": self.sync.model_dump(
                include=_SHARED_SYNC | (_BROADCAST_SYNC if self.sync.mode != "allreduce" else set())
            ),
            "compress": self.compress.model_dump(),
        }
        if self.eval.sets:  # only when set: a run without named sets keeps the id it always had
            spec["eval"]["sets"] = {  # eval.sets.NAME.FIELD: run records allow 4 levels (its data as JSON text)
                s.name: {
                    "data": json.dumps(
                        s.data.model_dump(exclude={"paths", "tokenizer_path"}), sort_keys=True, separators=(",", ":")
                    ),
                    "batches": s.batches,
                    "tolerance": self.set_tolerances()[s.name],
                }
                for s in self.eval.sets
            }
        if self.model.init_from:  # a fork: its genesis state, and where it came from (run records carry it)
            spec["fork"] = _fork_origin(self.model.init_from)
        return spec

    def set_tolerances(self) -> dict[str, float]:
        """{eval set name: its regression tolerance}, the versioning default filled in (every peer judges alike)."""
        default = self.versioning.regression_tolerance
        return {s.name: default if s.tolerance is None else s.tolerance for s in self.eval.sets}

    def shared_spec(
        self, val_fingerprint: str, set_fingerprints: Mapping[str, str] | None = None
    ) -> dict[str, SpecValue]:
        """The lineage spec as flat ``{"section.field": scalar}`` plus the validation sets and protocol: the run id
        hashes it and run records carry it, so a peer of another run can be told which field differs.
        ``set_fingerprints``: {name: fingerprint} of every named eval set's validation tokens (eval/sets.py)."""
        spec = _flatten(self.lineage_spec())
        got, want = set(set_fingerprints or {}), {s.name for s in self.eval.sets}
        if got != want:
            raise ValueError(f"eval set fingerprints for {sorted(got)}, the config names {sorted(want)}")
        for name in sorted(want):
            spec[f"eval.sets.{name}.val_fingerprint"] = set_fingerprints[name]
        return {**spec, "data.val_fingerprint": val_fingerprint, "protocol": PROTOCOL_VERSION}
