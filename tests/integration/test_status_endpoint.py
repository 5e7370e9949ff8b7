"""The peer's HTTP status endpoint and Prometheus /metrics answer during a real 2-peer swarm run, and
`p2pmodel peer status` reads them (exit 0), or fails with one line when nobody answers (exit 1)."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from p2pmodel.node.launch import LocalSwarm
from p2pmodel.testing.swarm import FAST, TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.headers.get("Content-Type", ""), r.read()


@pytest.mark.timeout(180)
def test_status_and_metrics_during_a_swarm_run(tmp_path):
    ports = [_free_port(), _free_port()]
    with LocalSwarm(tmp_path, TINY, FAST) as swarm:
        swarm.start_bootstrap()
        peers = [
            swarm.start_peer(f"p{i}", max_rounds=30, extra=[f"observability.status_port={port}"])
            for i, port in enumerate(ports)
        ]
        for p in peers:
            assert p.wait_for(lambda e: e.get("event") == "round" and e["round"] >= 2, 120), p.stderr_tail()
        ctype, body = _get(f"http://127.0.0.1:{ports[0]}/status")
        status = json.loads(body)
        assert ctype.startswith("application/json")
        for key in (
            "peer_id",
            "run_id",
            "round",
            "val_loss",
            "train_loss",
            "digest",
            "version",
            "peers_online",
            "bytes_sent",
            "bytes_received",
            "last_averaging",
            "uptime_s",
            "state",
        ):
            assert key in status, key
        assert status["peer_id"] == peers[0].rounds()[0]["peer_id"]
        assert status["round"] >= 2 and status["state"] == "training"
        assert status["peers_online"] >= 1 and status["last_averaging"]["group_size"] >= 1
        assert status["bytes_sent"] > 0

        _, metrics = _get(f"http://127.0.0.1:{ports[1]}/metrics")
        text = metrics.decode()
        for name in (
            "p2pmodel_round",
            "p2pmodel_val_loss",
            "p2pmodel_peers_online",
            "p2pmodel_bytes_sent_total",
            "p2pmodel_rounds_total",
            "p2pmodel_group_size",
        ):
            assert f"\n{name}" in "\n" + text, name
        rnd = next(float(line.split()[1]) for line in text.splitlines() if line.startswith("p2pmodel_round "))
        assert rnd >= 2

        cli = subprocess.run(
            [sys.executable, "-m", "p2pmodel", "peer", "status", "--url", f"http://127.0.0.1:{ports[0]}", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout.strip().splitlines()[-1])["run_id"] == status["run_id"]

    t0 = time.monotonic()
    dead = subprocess.run(
        [sys.executable, "-m", "p2pmodel", "peer", "status", "--url", f"http://127.0.0.1:{ports[0]}", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dead.returncode == 1
    lines = [x for x in dead.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in dead.stderr
    assert time.monotonic() - t0 < 30
