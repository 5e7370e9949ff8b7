"""Gossip figures as JSON lines: time for one message to reach all N local peers, and a 200-message burst.

Method: N real hivemind DHT peers on 127.0.0.1 in this process (each its own p2pd daemon), each with a Gossip
whose ``peers()`` names every other peer (full membership, as the node passes live DHT records), default
GossipConfig except anti-entropy off (so only push / announce+pull are measured). A subscriber records
``perf_counter()`` at delivery; "spread" = last peer's delivery time minus the publish call's start, median over
a few messages from rotating publishers. Baseline in the same run: one unary request/answer between two peers
over the same transport (what one hop costs). Burst: one peer publishes 200 small messages back to back; the
ratio is delivered / (200 x N) after at most ``--burst-wait-s``.

Run: python benchmarks/gossip.py [--peers 4 8] [--messages 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

from p2pmodel.gossip import Gossip, GossipConfig, frames
from p2pmodel.swarm.aio import run_sync
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.node import start_dht, stop_dht, visible_maddrs


class Recorder:
    def __init__(self):
        self.at: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, msg) -> bool:
        with self.lock:
            self.at.setdefault(msg.msg_id, time.perf_counter())
        return True

    def count(self, ids) -> int:
        with self.lock:
            return sum(i in self.at for i in ids)


def _wait_all(recorders, ids, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(r.count(ids) == len(ids) for r in recorders):
            return True
        time.sleep(0.002)
    return False


def spread_ms(gossips, recorders, payload_bytes: int, messages: int) -> tuple[float, int]:
    times, lost = [], 0
    for k in range(messages):
        g = gossips[k % len(gossips)]
        start = time.perf_counter()
        mid = g.publish("bench", {"k": k, "pad": os.urandom(payload_bytes)})
        if not _wait_all(recorders, [mid], 10):
            lost += 1
            continue
        times.append(max(r.at[mid] for r in recorders) - start)
        time.sleep(0.05)
    return (statistics.median(times) * 1e3 if times else float("nan")), lost


def rtt_ms(a: Gossip, b: Gossip, repeats: int = 20) -> float:
    frame = frames.encode("sync", {"kind": "none-such", "limit": 1})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_sync(a._transport.call(b.peer_id, frame, 5), 10)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def run(n: int, messages: int, burst: int, burst_wait_s: float) -> None:
    folder = tempfile.mkdtemp(prefix="gossip-bench-")
    dhts, gossips = [], []
    try:
        idents = []
        for i in range(n):
            path = os.path.join(folder, f"peer{i}.key")
            idents.append(Identity.load_or_create(path))
            initial = visible_maddrs(dhts[0]) if dhts else []
            dhts.append(start_dht(path, initial, ["/ip4/127.0.0.1/tcp/0"], wait_timeout_s=3))
        pids = [i.peer_id for i in idents]
        cfg = GossipConfig(anti_entropy_interval_s=0)
        recorders = [Recorder() for _ in range(n)]
        for i in range(n):
            g = Gossip(dhts[i], idents[i], peers=lambda i=i: [p for j, p in enumerate(pids) if j != i], config=cfg)
            g.subscribe("bench", recorders[i])
            gossips.append(g)
        spread_ms(gossips, recorders, 100, 2)  # warm-up: connections between daemons
        rtt = rtt_ms(gossips[0], gossips[1])
        for label, size in (("small_200B", 200), ("large_200KiB", 200 << 10)):
            median, lost = spread_ms(gossips, recorders, size, messages)
            print(
                json.dumps(
                    {
                        "bench": "gossip_spread",
                        "peers": n,
                        "message": label,
                        "path": "push" if size <= cfg.eager_push_max_bytes else "announce+pull",
                        "median_ms_to_all": round(median, 2),
                        "baseline_one_rpc_ms": round(rtt, 2),
                        "ratio_vs_one_rpc": round(median / rtt, 2),
                        "messages": messages,
                        "not_reaching_all_in_10s": lost,
                    }
                ),
                flush=True,
            )
        start = time.perf_counter()
        ids = [gossips[0].publish("bench", {"burst": k}) for k in range(burst)]
        publish_s = time.perf_counter() - start
        complete = _wait_all(recorders, ids, burst_wait_s)
        elapsed = time.perf_counter() - start
        per_peer = [r.count(ids) / burst for r in recorders]
        drops: dict[str, int] = {}
        for g in gossips:
            for reason, count in g.stats()["drops"].items():
                drops[reason] = drops.get(reason, 0) + count
        print(
            json.dumps(
                {
                    "bench": "gossip_burst",
                    "peers": n,
                    "messages": burst,
                    "delivery_ratio_all_peers": round(sum(per_peer) / n, 4),
                    "min_peer_ratio": round(min(per_peer), 4),
                    "complete": complete,
                    "seconds_to_complete_or_deadline": round(elapsed, 3),
                    "publish_seconds": round(publish_s, 3),
                    "drops_by_reason": drops,
                }
            ),
            flush=True,
        )
    finally:
        for g in gossips:
            g.close()
        for d in dhts:
            stop_dht(d)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--messages", type=int, default=7)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--burst-wait-s", type=float, default=15.0)
    args = parser.parse_args()
    for n in args.peers:
        run(n, args.messages, args.burst, args.burst_wait_s)


if __name__ == "__main__":
    main()
