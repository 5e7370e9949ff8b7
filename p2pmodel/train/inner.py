"""DiLoCo's inner phase: H AdamW steps on this peer's stream. The optimizer state and step counter persist
across rounds (and checkpoints), as in DiLoCo.

In a swarm the learning rate follows the swarm's position, not this counter: step i of round r runs at
``lr_at((r - 1) * H + i)``, which every peer of the round shares. A peer joining at round 500 does not re-run
warmup, and a round that closed before this peer did its H steps does not shift its next rounds. The data
stream keeps following the counter: each peer's data order is its own, and the counter reads it without gaps
or repeats whatever the rounds did."""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from p2pmodel.core.errors import UsageError

# CUDA out-of-memory (torch.OutOfMemoryError since 2.5; torch.cuda's alias before)
_OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


@dataclass
class InnerStats:
    steps: int
    samples: int
    tokens: int
    loss: float  # mean training loss over the steps
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup then cosine decay to ``min_ratio * peak`` at ``total``; flat after."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def schedule_position(round_: int, inner_steps: int) -> int:
    """The swarm's schedule step at the start of outer round ``round_`` (1-based) of ``inner_steps`` (H) steps."""
    return max(round_ - 1, 0) * inner_steps


class InnerTrainer:
    def __init__(self, model: torch.nn.Module, cfg, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
        )
        self.step = 0  # inner steps this peer did over the whole run: its data position
        self.autocast = device.type == "cuda"

    def run(
        self,
        stream,
        n_steps: int,
        should_stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[int, float], None] | None = None,
        round_: int | None = None,
    ) -> InnerStats:
        """Up to ``n_steps`` optimizer steps; stops early (between steps) when ``should_stop()``. With ``round_``
        (1-based outer round) the lr schedule starts at ``schedule_position(round_, H)``, else at ``self.step``."""
        cfg, model = self.cfg, self.model
        micro = cfg.batch_size // cfg.grad_accum_steps
        start = self.step if round_ is None else schedule_position(round_, cfg.inner_steps)
        model.train()
        t0, losses = time.perf_counter(), []
        for i in range(n_steps):
            if should_stop():
                break
            lr = lr_at(start + i, cfg.lr, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
            for group in self.opt.param_groups:
                group["lr"] = lr
            try:
                total = self._one_step(stream, micro)
            except _OOM as e:
                self.opt.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise UsageError(self._oom_message(micro)) from e
            self.step += 1
            losses.append(total)
            if on_step is not None:
                on_step(self.step, total)
        steps = len(losses)
        return InnerStats(
            steps=steps,
            samples=steps * cfg.batch_size,
            tokens=steps * cfg.batch_size * model.config.seq_len if hasattr(model, "config") else 0,
            loss=sum(losses) / steps if steps else float("nan"),
            seconds=time.perf_counter() - t0,
        )

    def _one_step(self, stream, micro: int) -> float:
        """One optimizer step over ``grad_accum_steps`` micro-batches (bf16 autocast on CUDA); its mean loss."""
        cfg, model = self.cfg, self.model
        total = 0.0
        for m in range(cfg.grad_accum_steps):
            x, y = stream.batch(self.step * cfg.grad_accum_steps + m, micro)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                _, loss = model(x, y)
            (loss / cfg.grad_accum_steps).backward()
            total += loss.item() / cfg.grad_accum_steps
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return total

    def _oom_message(self, micro: int) -> str:
        cfg = self.cfg
        seq = getattr(getattr(self.model, "config", None), "seq_len", "?")
        where = f"{self.device} memory at a micro-batch of {micro} x {seq} tokens"
        more = next((n for n in range(cfg.grad_accum_steps + 1, cfg.batch_size + 1) if cfg.batch_size % n == 0), None)
        if more is not None:
            return f"model does not fit in {where}: try train.grad_accum_steps={more} or a smaller batch"
        return f"model does not fit in {where}: try a smaller model, model.seq_len or device=cpu"

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """AdamW state as flat tensors + JSON metadata (safetensors-friendly, no pickle)."""
        tensors, meta = {}, {"step": self.step, "adam_steps": {}}
        for i, p in enumerate(self._params()):
            st = self.opt.state.get(p)
            if st:
                # copies: on the CPU .cpu() would alias the live moments, which the next step mutates
                tensors[f"inner.{i}.exp_avg"] = st["exp_avg"].detach().to("cpu", copy=True)
                tensors[f"inner.{i}.exp_avg_sq"] = st["exp_avg_sq"].detach().to("cpu", copy=True)
                meta["adam_steps"][str(i)] = float(st["step"])
        return tensors, meta

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.step = int(meta["step"])
        for i, p in enumerate(self._params()):
            if str(i) in meta["adam_steps"]:
                self.opt.state[p] = {
                    "step": torch.tensor(meta["adam_steps"][str(i)]),
                    "exp_avg": tensors[f"inner.{i}.exp_avg"].to(p.device),
                    "exp_avg_sq": tensors[f"inner.{i}.exp_avg_sq"].to(p.device),
                }

    def _params(self):
        return [p for g in self.opt.param_groups for p in g["params"]]
