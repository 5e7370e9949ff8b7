"""benchmarks/inner_step.py runs and prints one JSON line with its keys (the speed itself is not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
