"""The ideal algorithm in one process, no network: where the daemon's loss should land, and which H, outer
optimizer and schedule to pick before spending a real-swarm run (benchmarks/communication.py) on them.

  ddp     one model at batch peers x b: the same gradients as gloo all-reduce of peers batches of b
  diloco  peers workers, each with its own AdamW and stream, H inner steps, then the weighted mean of their
          codec-decoded deltas (sender-side error feedback, as DeterministicAverager), encoded and decoded once
          more (the reducers send the mean in the codec; --exact-mean skips that) and the outer step

Same parts as the daemon (configs/tiny.toml model/data/eval, InnerTrainer, codecs, OuterOptimizer). Prints
one JSON line: val loss at the end (and after every round with --trace) and the averaging payload per peer
(encoded bytes x 2(n-1)/n per round, the all-reduce's share; the wire adds framing and control traffic).

  python benchmarks/diloco_sim.py --method ddp --steps 1500
  python benchmarks/diloco_sim.py --method diloco --steps 1500 --inner-steps 100 --codec int4 \
      --set sync.outer_lr=1.0 --set sync.outer_momentum=0 --set sync.nesterov=false
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hivemind.compression import CompressionInfo

from p2pmodel.compress import ErrorFeedback, make_codec
from p2pmodel.config import load_config
from p2pmodel.data import TrainStream, load_corpus
from p2pmodel.eval import evaluate
from p2pmodel.models import build_model
from p2pmodel.sync.outer import OuterOptimizer
from p2pmodel.train import InnerTrainer

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=["ddp", "diloco"], required=True)
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300, help="inner steps per peer")
    ap.add_argument("--inner-steps", type=int, default=50, help="H (diloco)")
    ap.add_argument("--codec", default="int4", choices=["none", "fp16", "int8", "int4", "sparse"])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.toml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (dotted)")
    ap.add_argument("--trace", action="store_true", help="also report the val loss after every round")
    ap.add_argument(
        "--exact-mean",
        dest="encode_mean",
        action="store_false",
        help="skip the codec round trip of the averaged delta (the daemon's reducers send it encoded)",
    )
    ap.add_argument(
        "--overlap",
        choices=["none", "eager", "local", "naive"],
        default="none",
        help="diloco: average each phase's deltas during the next phase and apply the mean one phase late; the next"
        " phase starts from the outer step peeked with a proxy of the mean in flight: eager = own delta / peers +"
        " the last mean for the others' share; local = own delta; naive = no proxy (the last committed state)",
    )
    ap.add_argument(
        "--land-after",
        type=int,
        default=None,
        help="overlap: the mean in flight lands after this many inner steps of the next phase, and the worker moves"
        " onto the real state (θ_local += θ_real - start) [H: it lands at the end of the phase]",
    )
    ap.add_argument(
        "--stand-in-scale",
        type=float,
        default=1.0,
        help="overlap local: the next phase starts from the outer step peeked with this multiple of the own delta",
    )
    args = ap.parse_args()
    if args.land_after is None:
        args.land_after = args.inner_steps
    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(cfg.train.torch_threads or 1)
    corpus = load_corpus(
        cfg.data.source, cfg.data.paths, cfg.data.max_corpus_bytes, cfg.data.val_fraction, cfg.model.seq_len + 2
    )

    def val(model) -> float:
        return evaluate(model, corpus.val, cfg.model.seq_len, cfg.eval.batches, cfg.eval.batch_size).val_loss

    t0 = time.perf_counter()
    out = {"method": args.method, "peers": args.peers, "steps_per_peer": args.steps, "overrides": args.overrides}
    if args.method == "ddp":
        model = build_model(cfg.model, cfg.train.seed)
        tcfg = cfg.train.model_copy(update={"batch_size": cfg.train.batch_size * args.peers})
        InnerTrainer(model, tcfg, torch.device("cpu")).run(
            TrainStream(corpus.train, cfg.model.seq_len, cfg.train.seed, "sim-0"), args.steps
        )
        out["val_loss"] = val(model)
    else:
        out.update(diloco(cfg, corpus, args, val))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out), flush=True)


def diloco(cfg, corpus, args, val) -> dict:
    if args.steps % args.inner_steps:
        raise SystemExit("error: --steps must be a multiple of --inner-steps")
    n, codec = args.peers, make_codec(args.codec, cfg.compress.block_size)
    global_model = build_model(cfg.model, cfg.train.seed)
    params = [p.detach() for p in global_model.parameters()]
    outer = OuterOptimizer(params, cfg.sync.outer_lr, cfg.sync.outer_momentum, cfg.sync.nesterov)
    workers = []
    for r in range(n):
        m = build_model(cfg.model, cfg.train.seed)
        stream = TrainStream(corpus.train, cfg.model.seq_len, cfg.train.seed, f"sim-{r}")
        workers.append((m, InnerTrainer(m, cfg.train, torch.device("cpu")), stream))
    feedback = [ErrorFeedback() for _ in range(n)]
    rounds, trace = args.steps // args.inner_steps, []
    starts = [[p.clone() for p in params] for _ in range(n)]  # where each worker's next inner phase starts
    pending, last_mean = None, None  # overlap: the mean in flight (applied after the next inner phase)
    for r in range(rounds + (args.overlap != "none")):  # overlap: one more inner phase, still `rounds` commits
        mean = [torch.zeros_like(p) for p in params]
        deltas = []
        for (m, trainer, stream), ef, start in zip(workers, feedback, starts, strict=True):
            with torch.no_grad():
                for p, s in zip(m.parameters(), start, strict=True):
                    p.copy_(s)
            base = start
            if pending is not None and args.land_after < args.inner_steps:  # the mean in flight lands mid-phase
                trainer.run(stream, args.land_after)
                base = outer.peek(pending)  # the real θ of the last round: move the local trajectory onto it
                with torch.no_grad():
                    for p, s, b in zip(m.parameters(), start, base, strict=True):
                        p.add_(b - s)
                trainer.run(stream, args.inner_steps - args.land_after)
            else:
                trainer.run(stream, args.inner_steps)
            with torch.no_grad():
                delta = [s - p for p, s in zip(m.parameters(), base, strict=True)]
                deltas.append(delta)
                for i, (d, acc) in enumerate(zip(delta, mean, strict=True)):
                    sent = ef.compensate(i, d) if cfg.compress.error_feedback else d
                    decoded = codec.extract(codec.compress(sent, CompressionInfo.from_tensor(sent))).reshape(sent.shape)
                    if cfg.compress.error_feedback:
                        ef.update(i, sent, decoded)
                    acc.add_(decoded / n)
        if args.encode_mean:  # as the daemon: each reducer encodes the averaged part once and everyone decodes it
            mean = [codec.extract(codec.compress(t, CompressionInfo.from_tensor(t))).reshape(t.shape) for t in mean]
        if args.overlap == "none":
            outer.step(mean)
            starts = [params] * n
        else:  # the mean of this phase lands after the next phase; the previous one lands now
            if pending is not None:
                outer.step(pending)
            pending, last_mean = mean, pending
            starts = [outer.peek(eager_proxy(d, last_mean, n, args.overlap, args.stand_in_scale)) for d in deltas]
        if args.trace and (args.overlap == "none" or r > 0):
            trace.append(round(val(global_model), 4))
    out_overlap = args.overlap
    encoded = sum(len(codec.compress(p, CompressionInfo.from_tensor(p)).SerializeToString()) for p in params)
    out = {"val_loss": val(global_model), "inner_steps_H": args.inner_steps, "codec": args.codec}
    out["mean_encoded"] = args.encode_mean
    out["overlap"] = out_overlap
    out["land_after"] = args.land_after if out_overlap != "none" else None
    out["stand_in_scale"] = args.stand_in_scale if out_overlap == "local" else None
    out["payload_bytes_per_peer"] = int(rounds * 2 * (n - 1) / n * encoded)  # the all-reduce's share, as the daemon
    if args.trace:
        out["val_per_round"] = trace
    return out


def eager_proxy(own, last_mean, n, how, scale=1.0):
    """What a worker takes for the mean still in flight (see --overlap)."""
    if how == "naive":
        return [torch.zeros_like(d) for d in own]
    if how == "local" or last_mean is None:
        return [d * scale for d in own] if scale != 1.0 else own
    return [d / n + m * (1 - 1 / n) for d, m in zip(own, last_mean, strict=True)]


if __name__ == "__main__":
    main()
