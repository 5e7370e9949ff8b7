"""How long after the last vote of a release is its tag visible to a user: one JSON object on stdout.

Method: a real local swarm (``LocalSwarm``: a bootstrap node and ``--peers`` peer processes on 127.0.0.1,
configs/tiny.toml with fast overrides, release_every = 2), and a poller that runs ``p2pmodel versions list
--json`` as a separate process back to back (a light client: joins the DHT, reads the tag index, downloads
and verifies every certificate). For each tag, the reference point is the last vote: with 3 peers a tag
needs all 3 votes, and the certificate's ``time`` is the latest vote's signing time (stamped just before the
vote is published). ``visible_by_s`` = end of the first poll that listed the tag - that time (what a polling
user sees); ``not_visible_at_s`` = end of the last poll that did not list it - that time (a lower bound).
``tagged_in_peers_s`` = when each peer logged "tagged" (gossip of votes + quorum), from the peer logs' clock
(whole seconds in the text log format, so it can read slightly negative).

Baseline in the same run: the wall time of a ``versions list`` call when the tag is already there (process
start, DHT join, index read, certificate download and verification). ``ratio`` = visible_by_s / baseline, so
a ratio near 1-2 means the tag is visible about as soon as one CLI call can see anything, i.e. propagation
itself costs little next to the call.

Run: python benchmarks/tag_visibility.py [--peers 3] [--tags 2] [--plot docs/versions-plot.png]
(about 3-4 minutes on 2 busy cores)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from p2pmodel.node.launch import LocalSwarm
from p2pmodel.testing.swarm import FAST, TINY

TAGGED = re.compile(r"(\d\d):(\d\d):(\d\d)(?:[.,](\d+))? .*?tagged (v\d+\.\d+\.\d+) ")


def list_call(maddr: str) -> tuple[float, float, dict | None]:
    start = time.time()
    res = subprocess.run(
        [sys.executable, "-m", "p2pmodel", "versions", "list", "--initial-peers", maddr, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    end = time.time()
    return start, end, (json.loads(res.stdout) if res.returncode == 0 else None)


class Poller(threading.Thread):
    def __init__(self, maddr: str):
        super().__init__(daemon=True)
        self.maddr, self.calls, self.stop = maddr, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.calls.append(list_call(self.maddr))

    def versions_at(self) -> list[tuple[float, float, dict[str, dict]]]:
        return [(s, e, {v["version"]: v for v in out["versions"]}) for s, e, out in self.calls if out is not None]


def tagged_times(log: Path, day: datetime) -> dict[str, float]:
    """{version: unix time} of the peer's "tagged vX" log lines (text format, UTC %H:%M:%S)."""
    out = {}
    for h, m, s, frac, version in TAGGED.findall(log.read_text(errors="replace")):
        at = day.replace(hour=int(h), minute=int(m), second=int(s)).timestamp() + float(f"0.{frac or 0}")
        out.setdefault(version, at)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=3)
    ap.add_argument("--tags", type=int, default=2, help="Tags to time (v0.1.0, v0.1.1, ...).")
    ap.add_argument("--baseline-calls", type=int, default=3)
    ap.add_argument("--timeout-s", type=float, default=240.0)
    ap.add_argument("--plot", type=Path, help="Also write `versions plot` of the run to this PNG.")
    args = ap.parse_args()
    want = [f"v0.1.{i}" for i in range(args.tags)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="p2pmodel-tagvis-") as tmp, LocalSwarm(tmp, TINY, FAST) as swarm:
        maddr = swarm.start_bootstrap()
        day = datetime.now(UTC).replace(microsecond=0)
        peers = [swarm.start_peer(f"peer{i + 1}", max_rounds=100) for i in range(args.peers)]
        # poll from the first committed round on, so the first release is already being watched
        for p in peers:
            assert p.wait_for(lambda e: e.get("event") == "round", args.timeout_s), p.stderr_tail()
        poller = Poller(maddr)
        poller.start()
        deadline = time.monotonic() + args.timeout_s
        while time.monotonic() < deadline:
            seen = poller.versions_at()
            if seen and all(v in seen[-1][2] for v in want):
                break
            time.sleep(0.5)
        poller.stop.set()
        poller.join(130)
        baseline = []
        for _ in range(args.baseline_calls):  # the tags are there now: the cost of one call
            s, e, out = list_call(maddr)
            assert out is not None and all(v in {x["version"] for x in out["versions"]} for v in want), out
            baseline.append(e - s)
        peer_tagged = {p.name: tagged_times(p.log_path, day) for p in peers}
        if args.plot:
            cmd = [sys.executable, "-m", "p2pmodel", "versions", "plot", "--initial-peers", maddr, "-o", str(args.plot)]
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    seen = poller.versions_at()
    base = statistics.median(baseline)
    tags = {}
    for v in want:
        first = next((i for i, (_, _, vs) in enumerate(seen) if v in vs), None)
        if first is None:
            tags[v] = {"error": "never listed"}
            continue
        cert = seen[first][2][v]
        last_vote = cert["time"]
        visible_by = seen[first][1] - last_vote
        before = [e for _, e, vs in seen[:first] if v not in vs]
        in_peers = [t[v] - last_vote for t in peer_tagged.values() if v in t]
        tags[v] = {
            "round": cert["round"],
            "votes": f"{cert['votes']}/{cert['electorate']}",
            "visible_by_s": round(visible_by, 2),
            "not_visible_at_s": round(before[-1] - last_vote, 2) if before else None,
            "tagged_in_peers_s": [round(x, 2) for x in sorted(in_peers)],  # log clock: 1 s or 1 ms resolution
            "ratio": round(visible_by / base, 2),
        }
    result = {
        "benchmark": "tag_visibility",
        "peers": args.peers,
        "overrides": FAST,
        "polls": len(poller.calls),
        "baseline_list_call_s": round(base, 2),
        "baseline_calls_s": [round(b, 2) for b in baseline],
        "tags": tags,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
