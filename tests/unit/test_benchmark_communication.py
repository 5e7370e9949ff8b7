"""Smoke test of benchmarks/communication.py at a tiny size: every mode reports its figures, and each mode's
measured bytes are positive (a broken netns/counter measurement would read 0)."""

from __future__ import annotations

import json
import os
import shutil
import signal
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


@pytest.mark.swarm
@pytest.mark.timeout(170)
def test_communication_benchmark_tiny_run_reports_every_mode():
    reason = _netns_usable()
    if reason:
        pytest.skip(reason)
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "communication.py"),
        "--peers", "2", "--steps", "4", "--inner-steps", "4",
        "--modes", "ddp,p2pmodel,ideal",  # hivemind's start-up is the slowest; the full benchmark covers it
        "--set", "data.max_corpus_bytes=2000000", "--set", "eval.batches=2",
        "--mode-timeout-s", "70",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the benchmark's finally blocks stop its processes and namespaces
        try:
            stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"benchmark ran past 150 s\n{stdout}\n{stderr[-3000:]}")
    lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    assert proc.returncode == 0, f"rc {proc.returncode}\n{stdout}\n{stderr[-3000:]}"
    rows = {r["mode"]: r for r in lines if "mode" in r}
    assert set(rows) == {"ddp", "p2pmodel", "ideal"}, stdout
    ideal = rows.pop("ideal")
    assert ideal["val_loss"] > 0 and ideal["averaging_payload_per_peer"] > 0 and ideal["bytes_per_peer"] is None
    for mode, row in rows.items():
        assert ROW_KEYS <= set(row), (mode, sorted(ROW_KEYS - set(row)))
        assert row["bytes_per_peer"] > 0, f"{mode}: no bytes measured"
        assert row["val_loss"] > 0 and row["peers"] == 2 and row["steps_per_peer"] == 4
        assert row["method"].startswith("netns")
    assert rows["ddp"]["bytes_ratio_vs_ddp"] == 1.0
    assert rows["p2pmodel"]["digests_agree"] and rows["p2pmodel"]["rounds"] == [1, 1]
    summary = lines[-1]
    assert summary.get("summary") is True and CHECKS <= set(summary)
    assert isinstance(summary["ge_1000x_fewer_bytes_than_ddp"], bool)
    assert isinstance(summary["loss_within_3pct_of_ddp"], bool)
    assert summary["loss_ratio_vs_ideal"] == rows["p2pmodel"]["val_loss"] / ideal["val_loss"]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    leftover = [
        x for x in listed if x.split(" ")[0].startswith("p2pbench_") and x.split(" ")[0].endswith(f"_{proc.pid}")
    ]
    assert not leftover, f"namespaces left behind: {leftover}"
