"""Inner-step throughput of a config's model on one CPU core: prints ONE JSON line.

    python benchmarks/inner_step.py [--config configs/tiny.toml] [--steps 50] [--warmup 5]

Times ``InnerTrainer.run`` (AdamW, clipping, the real data stream) on the stdlib corpus, torch pinned to 1
thread, after a warm-up; reports inner steps/s and training tokens/s.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny.toml"), help="TOML config file.")
    ap.add_argument("--steps", type=int, default=50, help="Timed inner steps.")
    ap.add_argument("--warmup", type=int, default=5, help="Untimed inner steps first.")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Config override (repeatable).")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")

    import torch

    torch.set_num_threads(1)
    from p2pmodel.config import load_config
    from p2pmodel.data import TrainStream, load_corpus
    from p2pmodel.models import build_model
    from p2pmodel.train import InnerTrainer

    cfg = load_config(args.config, ["train.device=cpu", *args.overrides])
    c = cfg.model
    corpus = load_corpus(
        cfg.data.source, cfg.data.paths, min(cfg.data.max_corpus_bytes, 2_000_000), cfg.data.val_fraction, c.seq_len + 2
    )
    model = build_model(c, cfg.train.seed)
    trainer = InnerTrainer(model, cfg.train, torch.device("cpu"))
    stream = TrainStream(corpus.train, c.seq_len, cfg.train.seed, "benchmark")
    if args.warmup:
        trainer.run(stream, args.warmup)
    t0 = time.perf_counter()
    stats = trainer.run(stream, args.steps)
    seconds = time.perf_counter() - t0
    out = {
        "config": Path(args.config).name,
        "threads": torch.get_num_threads(),
        "steps": stats.steps,
        "steps_per_s": round(stats.steps / seconds, 3),
        "tokens_per_s": round(stats.steps * cfg.train.batch_size * c.seq_len / seconds, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": cfg.train.batch_size,
        "seq_len": c.seq_len,
        "torch": torch.__version__,
    }
    sys.stdout.write(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    main()
