"""Smoke test of benchmarks/communication.py at a tiny size: every mode reports its figures, and each mode's
measured bytes are positive (a broken netns/counter measurement would read 0)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = {
    "mode",
    "peers",
    "steps_per_peer",
    "inner_steps_H",
    "codec",
    "bytes_per_peer",
    "val_loss",
    "wall_s",
    "bytes_ratio_vs_ddp",
    "loss_ratio_vs_ddp",
    "method",
}
CHECKS = {
    "beats_hivemind_loss",
    "fewer_bytes_than_hivemind",
    "ge_1000x_fewer_bytes_than_ddp",
    "loss_within_3pct_of_ddp",
}


def _netns_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces (ip netns)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip netns)"
    name = f"p2pbench_probe_{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None if r.returncode == 0 else f"cannot create a network namespace: {r.stderr.strip()}"


@pytest.mark.timeout(170)
def test_communication_benchmark_tiny_run_reports_every_mode():
    reason = _netns_usable()
    if reason:
        pytest.skip(reason)
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "communication.py"),
        "--peers", "2", "--steps", "4", "--inner-steps", "2",
        "--modes", "ddp,hivemind,p2pmodel",
        "--mode-timeout-s", "100",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    rows = {r["mode"]: r for r in lines if "mode" in r}
    assert set(rows) == {"ddp", "hivemind", "p2pmodel"}, proc.stdout
    for mode, row in rows.items():
        assert ROW_KEYS <= set(row), (mode, sorted(ROW_KEYS - set(row)))
        assert row["bytes_per_peer"] > 0, f"{mode}: no bytes measured"
        assert row["val_loss"] > 0 and row["peers"] == 2 and row["steps_per_peer"] == 4
        assert row["method"].startswith("netns")
    assert rows["ddp"]["bytes_ratio_vs_ddp"] == 1.0
    assert rows["p2pmodel"]["digests_agree"] and rows["p2pmodel"]["rounds"] == [2, 2]
    summary = lines[-1]
    assert summary.get("summary") is True and CHECKS <= set(summary)
    assert all(isinstance(summary[k], bool) for k in CHECKS)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    leftover = [
        x for x in listed if x.split(" ")[0].startswith("p2pbench_") and x.split(" ")[0].endswith(f"_{proc.pid}")
    ]
    assert not leftover, f"namespaces left behind: {leftover}"
