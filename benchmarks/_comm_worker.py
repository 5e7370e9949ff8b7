"""One training process of benchmarks/communication.py's baselines; prints one JSON line on stdout.

Modes (same model, data, inner AdamW and eval as ``p2pmodel peer run`` on configs/tiny.toml):
  ddp       torch.distributed gloo, gradients all-reduced every step (DistributedDataParallel); rank 0 evaluates
  hivemind  stock hivemind.Optimizer(use_local_updates=True), parameters averaged once per target_batch_size
  local     no communication at all (each process trains alone and evaluates its own weights)

Run by the benchmark, not by hand: python benchmarks/_comm_worker.py MODE --rank R --peers N --steps S ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch

from p2pmodel.config import load_config
from p2pmodel.data import TrainStream, load_corpus
from p2pmodel.eval import evaluate
from p2pmodel.models import build_model
from p2pmodel.train import InnerTrainer


def barrier(workdir: Path, name: str, rank: int, peers: int, timeout_s: float = 300.0) -> None:
    """A file barrier: every rank touches ``name.<rank>`` and waits until all ``peers`` files exist."""
    (workdir / f"{name}.{rank}").touch()
    deadline = time.monotonic() + timeout_s
    while sum((workdir / f"{name}.{r}").exists() for r in range(peers)) < peers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {name}: not every peer arrived in {timeout_s:.0f} s")
        time.sleep(0.05)


class _HivemindOpt:
    """What InnerTrainer needs of ``opt``: the real AdamW param groups (hivemind.Optimizer.param_groups returns
    copies, so setting the learning rate on them would be lost), step() and zero_grad() through hivemind."""

    def __init__(self, opt):
        self.hm = opt
        self.param_groups = opt.opt.param_groups

    def step(self):
        self.hm.step()

    def zero_grad(self, set_to_none: bool = True):
        self.hm.zero_grad(set_to_none=set_to_none)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["ddp", "hivemind", "local"])
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--peers", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--inner-steps", type=int, required=True, help="H: steps between averaging (hivemind)")
    ap.add_argument("--config", default="configs/tiny.toml")
    ap.add_argument("--workdir", required=True, help="shared scratch dir (barriers, DHT address)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (dotted)")
    ap.add_argument("--port", type=int, default=29500, help="gloo rendezvous port on 127.0.0.1 (ddp)")
    args = ap.parse_args()
    workdir = Path(args.workdir)

    cfg = load_config(args.config, [f"train.inner_steps={args.inner_steps}", *args.overrides])
    torch.set_num_threads(cfg.train.torch_threads or 1)
    corpus = load_corpus(
        cfg.data.source, cfg.data.paths, cfg.data.max_corpus_bytes, cfg.data.val_fraction, cfg.model.seq_len + 2
    )
    model = build_model(cfg.model, cfg.train.seed)
    stream = TrainStream(corpus.train, cfg.model.seq_len, cfg.train.seed, f"{args.mode}-rank{args.rank}")
    device = torch.device("cpu")
    out: dict = {"mode": args.mode, "rank": args.rank}
    evaluate_here = True

    if args.mode == "ddp":
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank, world_size=args.peers
        )
        trainer = InnerTrainer(DistributedDataParallel(model), cfg.train, device)
        t0 = time.perf_counter()
        stats = trainer.run(stream, args.steps)
        out["train_s"] = time.perf_counter() - t0
        dist.barrier()
        dist.destroy_process_group()
        evaluate_here = args.rank == 0  # every rank holds the same weights
    elif args.mode == "hivemind":
        import hivemind
        from hivemind.compression import NoCompression

        addr_file = workdir / "dht0.json"
        if args.rank == 0:
            dht = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
            tmp = addr_file.with_suffix(".tmp")
            tmp.write_text(json.dumps([str(a) for a in dht.get_visible_maddrs()]))
            os.replace(tmp, addr_file)
        else:
            deadline = time.monotonic() + 120
            while not addr_file.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("rank 0 never published its DHT address")
                time.sleep(0.05)
            dht = hivemind.DHT(
                host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=json.loads(addr_file.read_text()), start=True
            )
        trainer = InnerTrainer(model, cfg.train, device)  # its AdamW settings, handed to hivemind below
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in trainer.opt.param_groups]
        opt = hivemind.Optimizer(
            dht=dht,
            run_id="p2pbench_hivemind",
            target_batch_size=args.inner_steps * cfg.train.batch_size * args.peers,
            batch_size_per_step=cfg.train.batch_size,
            params=groups,
            optimizer=partial(torch.optim.AdamW, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2)),
            use_local_updates=True,
            matchmaking_time=cfg.sync.matchmaking_time_s,
            averaging_timeout=cfg.sync.allreduce_timeout_s,
            grad_compression=NoCompression(),
            state_averaging_compression=NoCompression(),
            verbose=False,
        )
        trainer.opt = _HivemindOpt(opt)
        barrier(workdir, "start", args.rank, args.peers)  # nobody trains alone before the swarm is up
        t0 = time.perf_counter()
        stats = trainer.run(stream, args.steps)
        out["train_s"] = time.perf_counter() - t0
        out["local_epoch"] = opt.local_epoch
        barrier(workdir, "end", args.rank, args.peers, timeout_s=600)  # nobody leaves while others still average
        opt.shutdown()  # applies a delayed (background) averaging result if one is pending
        dht.shutdown()
    else:
        trainer = InnerTrainer(model, cfg.train, device)
        t0 = time.perf_counter()
        stats = trainer.run(stream, args.steps)
        out["train_s"] = time.perf_counter() - t0

    out.update(steps=stats.steps, samples=stats.samples, train_loss=stats.loss)
    if evaluate_here:
        rep = evaluate(model, corpus.val, cfg.model.seq_len, cfg.eval.batches, cfg.eval.batch_size)
        out["val_loss"] = rep.val_loss
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
