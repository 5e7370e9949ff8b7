"""benchmarks/inner_step.py runs and prints one JSON line with its keys (the speed itself is not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.swarm
@pytest.mark.timeout(120)
def test_inner_step_benchmark_prints_json():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "inner_step.py"), "--steps", "3", "--warmup", "1"],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    out = json.loads(lines[0])
    keys = {"config", "threads", "steps_per_s", "tokens_per_s", "params", "batch_size", "seq_len", "torch"}
    assert keys <= set(out)
    assert out["config"] == "tiny.toml" and out["threads"] == 1
    assert out["steps_per_s"] > 0 and out["tokens_per_s"] > 0
    assert out["tokens_per_s"] == pytest.approx(out["steps_per_s"] * out["batch_size"] * out["seq_len"], rel=0.01)
    assert 500_000 < out["params"] < 1_200_000 and (out["batch_size"], out["seq_len"]) == (8, 128)


def _sim(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "diloco_sim.py"), "--peers", "1", "--steps", "4", *args],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.swarm
@pytest.mark.timeout(240)
def test_diloco_sim_with_one_worker_and_plain_averaging_is_plain_training():
    """One worker, lossless codec, outer lr 1 without momentum: every round's global state is the worker's
    own weights, so the run must land where uninterrupted training on the same stream lands."""
    plain = ["--set", "sync.outer_lr=1.0", "--set", "sync.outer_momentum=0", "--set", "sync.nesterov=false"]
    ddp = _sim("--method", "ddp")
    diloco = _sim("--method", "diloco", "--inner-steps", "2", "--codec", "none", "--trace", *plain)
    assert len(diloco["val_per_round"]) == 2 and diloco["payload_bytes_per_peer"] == 0  # one peer sends nothing
    assert diloco["val_loss"] == pytest.approx(ddp["val_loss"], rel=1e-4)
    nesterov = _sim("--method", "diloco", "--inner-steps", "2", "--codec", "none")
    assert abs(nesterov["val_loss"] - ddp["val_loss"]) > 1e-3  # the outer momentum does change the result
