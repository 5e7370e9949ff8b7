"""Helpers for tests that run a real local swarm (``p2pmodel.node.launch.LocalSwarm``): fast overrides of the
tiny config, waiting on round events and log lines, and per-round digests across peers."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from p2pmodel.node.launch import PeerProcess

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.toml"

# Small rounds that still train: ~0.7 s of inner steps, two eval batches, a quick matchmaking window.
FAST = [
    "train.inner_steps=10",
    "eval.batches=2",
    "data.max_corpus_bytes=2000000",
    "sync.matchmaking_time_s=2.0",
    "sync.request_timeout_s=1.5",
    "sync.chunk_timeout_s=1.5",
    "versioning.release_every=2",  # tests expect v0.1.0 at round 2 (configs/tiny.toml releases every 10)
]
# The same without the lineage fields (eval, data, train.inner_steps): a peer with these keeps configs/tiny.toml's
# run_id.
FAST_SAME_RUN = [
    "sync.matchmaking_time_s=2.0",
    "sync.request_timeout_s=1.5",
    "sync.chunk_timeout_s=1.5",
    "versioning.release_every=2",
]


def round_event(p: PeerProcess, round_: int) -> dict | None:
    """The round event ``p`` emitted for ``round_`` so far, if any."""
    return next((e for e in p.rounds() if e["round"] == round_), None)


def wait_round(peers: Iterable[PeerProcess], round_: int, timeout_s: float) -> dict[str, dict]:
    """Wait until every peer committed ``round_`` (or a later round); AssertionError naming the laggard."""
    deadline = time.monotonic() + timeout_s
    out = {}
    for p in peers:
        ev = p.wait_for(lambda e: e.get("event") == "round" and e["round"] >= round_, deadline - time.monotonic())
        assert ev is not None, f"{p.name} did not commit round {round_} (exit {p.proc.poll()}):\n{p.stderr_tail()}"
        out[p.name] = ev
    return out


def digests_by_round(peers: Iterable[PeerProcess]) -> dict[int, dict[str, str]]:
    """{round: {peer name: digest}} over every round event each peer emitted."""
    table: dict[int, dict[str, str]] = {}
    for p in peers:
        for e in p.rounds():
            table.setdefault(e["round"], {})[p.name] = e["digest"]
    return table


def wait_log(path: Path, pattern: str, timeout_s: float, poll_s: float = 0.02) -> re.Match | None:
    """Poll a log file until a line matches ``pattern`` (a regex); the match, or None on timeout."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            m = rx.search(path.read_text(errors="replace"))
        except OSError:
            m = None
        if m:
            return m
        time.sleep(poll_s)
    return None


def stop_all(peers: Iterable[PeerProcess], grace_s: float = 20.0) -> None:
    """SIGTERM every running peer at once (each finishes its step and exits), then reap them (SIGKILL laggards)."""
    peers = list(peers)
    for p in peers:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in peers:
        try:
            p.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        p.stop(grace_s=0.1)
