"""benchmarks/gpu_step.py skips cleanly without CUDA; a CUDA out-of-memory in the inner loop is one clear line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from p2pmodel.config import load_config
from p2pmodel.core.errors import UsageError
from p2pmodel.train import InnerTrainer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.swarm
@pytest.mark.timeout(120)
def test_gpu_bench_skips_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the benchmark would run, not skip")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["skipped"] is True and out["reason"] == "no CUDA device"


class _OOMModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2, 2))
        self.config = type("C", (), {"seq_len": 16})()

    def forward(self, x, y):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


class _Stream:
    def batch(self, step, n):
        return torch.zeros(n, 16, dtype=torch.long), torch.zeros(n, 16, dtype=torch.long)


@pytest.mark.parametrize(
    "overrides, hint",
    [
        (["train.batch_size=8", "train.grad_accum_steps=1"], "try train.grad_accum_steps=2 or a smaller batch"),
        (["train.batch_size=12", "train.grad_accum_steps=4"], "try train.grad_accum_steps=6 or a smaller batch"),
        (["train.batch_size=3", "train.grad_accum_steps=3"], "try a smaller model"),
    ],
)
def test_out_of_memory_becomes_a_one_line_usage_error(overrides, hint):
    cfg = load_config(None, overrides)
    trainer = InnerTrainer(_OOMModel(), cfg.train, torch.device("cpu"))
    with pytest.raises(UsageError, match="model does not fit") as exc:
        trainer.run(_Stream(), 3)
    assert hint in str(exc.value) and "\n" not in str(exc.value)
    assert trainer.step == 0
