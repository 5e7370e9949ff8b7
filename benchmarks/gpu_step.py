"""Inner-step throughput and peak memory of a config's model on one CUDA GPU: prints ONE JSON line.

    python benchmarks/gpu_step.py [--config configs/gpt2-small.toml] [--steps 20] [--warmup 3]

Runs ``InnerTrainer`` (AdamW, clipping, gradient accumulation as configured, the real data stream) on the
GPU twice from the same initial weights: with bf16 autocast (what a peer does on CUDA) and in fp32 without
autocast, the baseline measured in the same run; reports tokens/s, seconds per optimizer step, peak
allocated memory and the bf16/fp32 throughput ratio. Without a CUDA device it prints
``{"skipped": true, ...}`` and exits 0. Needs no network.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _emit(out: dict) -> dict:
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return out


def _phase(cfg, corpus, steps: int, warmup: int, bf16: bool) -> dict:
    """Build the model on CUDA, warm up, time ``steps`` optimizer steps; free everything after."""
    import torch

    from p2pmodel.data import TrainStream
    from p2pmodel.models import build_model
    from p2pmodel.train import InnerTrainer

    dev = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    model = build_model(cfg.model, cfg.train.seed).to(dev)
    trainer = InnerTrainer(model, cfg.train, dev)
    trainer.autocast = bf16
    stream = TrainStream(corpus.train, cfg.model.seq_len, cfg.train.seed, "benchmark")
    if warmup:
        trainer.run(stream, warmup)
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    stats = trainer.run(stream, steps)
    torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    out = {
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_s": stats.steps * cfg.train.batch_size * cfg.model.seq_len / seconds,
        "step_s": seconds / stats.steps,
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(dev)),
        "loss": stats.loss,
    }
    del trainer, model
    torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "gpt2-small.toml"), help="TOML config file.")
    ap.add_argument("--steps", type=int, default=20, help="Timed optimizer steps per precision.")
    ap.add_argument("--warmup", type=int, default=3, help="Untimed optimizer steps first.")
    ap.add_argument("--no-fp32", action="store_true", help="Skip the fp32 baseline (no ratio reported).")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Config override (repeatable).")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")

    import torch

    if not torch.cuda.is_available():
        return _emit({"skipped": True, "reason": "no CUDA device", "torch": torch.__version__})

    from p2pmodel.config import load_config
    from p2pmodel.core.errors import P2PModelError
    from p2pmodel.data import load_corpus

    cfg = load_config(args.config, ["train.device=cuda", *args.overrides])
    c, t = cfg.model, cfg.train
    base = {
        "config": Path(args.config).name,
        "device": torch.cuda.get_device_name(0),
        "batch": t.batch_size,
        "grad_accum": t.grad_accum_steps,
        "micro_batch": t.batch_size // t.grad_accum_steps,
        "seq_len": c.seq_len,
        "steps": args.steps,
        "torch": torch.__version__,
    }
    try:
        # any tokens do for timing: the first 8 MB of the configured text are enough windows
        d = cfg.data
        corpus = load_corpus(d.source, d.paths, min(d.max_corpus_bytes, 8_000_000), d.val_fraction, c.seq_len + 2)
        bf16 = _phase(cfg, corpus, args.steps, args.warmup, bf16=True)
        fp32 = None if args.no_fp32 else _phase(cfg, corpus, args.steps, args.warmup, bf16=False)
    except P2PModelError as e:  # e.g. "model does not fit ...": one line, exit 1
        _emit({**base, "error": str(e)})
        sys.exit(1)
    out = {
        **base,
        "params": bf16["params"],
        "bf16": True,
        "tokens_per_s": round(bf16["tokens_per_s"], 1),
        "step_s": round(bf16["step_s"], 4),
        "peak_memory_bytes": bf16["peak_memory_bytes"],
        "train_loss": round(bf16["loss"], 4),
    }
    if fp32 is not None:
        out.update(
            {
                "fp32_tokens_per_s": round(fp32["tokens_per_s"], 1),
                "fp32_step_s": round(fp32["step_s"], 4),
                "fp32_peak_memory_bytes": fp32["peak_memory_bytes"],
                "bf16_over_fp32": round(bf16["tokens_per_s"] / fp32["tokens_per_s"], 3),
            }
        )
    return _emit(out)


if __name__ == "__main__":
    main()
