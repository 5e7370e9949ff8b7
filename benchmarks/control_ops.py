"""Control-plane cost per operation: the bytes on the wire of one DHT store or get of a signed record and of one
gossip message, among 4 peers and a bootstrap (real hivemind DHTs and p2pd, the peers' own gossip), and the
idle noise per second (p2pd keepalive/identify, hivemind's DHT upkeep, gossip anti-entropy). One JSON object
on stdout. Run as root: everything runs in a throw-away network namespace whose loopback tx counter is the
measure (each byte is counted once: sent by one node, received by another).

``benchmarks/links.py`` gives the end-to-end figure (control bytes per peer per round, with the averaging
payload subtracted); this script says what each kind of call costs, so that a round's calls can be priced.

Measured here (2 shared cores; bytes on the wire in all, sent by one node and received by another, so a peer's
sent + received share of an operation it starts is about twice this divided by the 5 nodes, more for its own):
  one unary call through p2pd (gossip, any RPC)      ~0.95 KB + its payload (a bare 10-byte call: 955 bytes)
  gossip message (744 bytes signed) flooded           16.6 KB  (fanout 4: 3 pushes + 6 passed-on duplicates)
  the same pushed "direct" (one push per peer)        5.6 KB
  DHT store of a signed record into a key holding 4   22-31 KB (hivemind's store looks the key up first, and
    (peer records, digests, ready, offers)                     every node it asks answers with its whole value)
  DHT store into a new key                            9.5 KB
  DHT store / get of a matchmaking group key          10.4 KB / 6.0 KB
  DHT get of a key holding 4 signed records           20-23 KB
  DHT get of a missing key                            4.9 KB
  idle, all 5 nodes: p2pd and DHT upkeep              ~0.2 KB/s; gossip anti-entropy every 10 s: +0.5 KB/s,
                                                      every 60 s (what a peer uses now): ~0

  python benchmarks/control_ops.py                    # idle 20 s, each operation 8 times
  python benchmarks/control_ops.py --anti-entropy-s 0 --idle-s 60   # the idle noise of p2pd and the DHT alone
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lo_tx_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[8])
    raise RuntimeError("no lo")


def inside(args: argparse.Namespace) -> dict:
    """Runs in the namespace: start the nodes, price each operation."""
    sys.path.insert(0, str(ROOT))
    from hivemind.utils.timed_storage import get_dht_time

    from p2pmodel.gossip import Gossip, GossipConfig
    from p2pmodel.swarm.identity import Identity
    from p2pmodel.swarm.keys import DIGEST_KIND, READY_KIND, ready_key
    from p2pmodel.swarm.node import start_dht, stop_dht, visible_maddrs
    from p2pmodel.swarm.records import (
        get_digests,
        get_signed,
        list_peer_records,
        make_peer_record,
        publish_digest,
        publish_peer_record,
        publish_signed,
    )
    from p2pmodel.swarm.serial_dht import serialize_calls

    run_id = "c" * 64
    local = ["/ip4/127.0.0.1/tcp/0"]
    out: dict = {"peers": args.peers, "repeat": args.repeat, "anti_entropy_s": args.anti_entropy_s}
    gossip_cfg = GossipConfig(anti_entropy_interval_s=args.anti_entropy_s, anti_entropy_max_ids=64)
    dhts, idents, gossips = [], [], []
    with tempfile.TemporaryDirectory(prefix="control-ops-") as tmp:
        try:
            boot = start_dht(Path(tmp) / "boot.key", [], local)
            dhts.append(boot)
            for i in range(args.peers):
                path = Path(tmp) / f"p{i}.key"
                idents.append(Identity.load_or_create(path))
                dhts.append(serialize_calls(start_dht(path, visible_maddrs(boot), local, wait_timeout_s=5)))
            peers = dhts[1:]
            ids = [i.peer_id for i in idents]
            got: dict[int, set] = {i: set() for i in range(args.peers)}
            lock = threading.Lock()
            for i, (dht, ident) in enumerate(zip(peers, idents, strict=True)):
                g = Gossip(dht, ident, peers=lambda me=ident.peer_id: [p for p in ids if p != me], config=gossip_cfg)

                def on_ready(msg, i=i):
                    with lock:
                        got[i].add(msg.msg_id)
                    return True

                g.subscribe(READY_KIND, on_ready)  # flooded (fanout 4: every receiver passes it on)
                g.subscribe(DIGEST_KIND, on_ready, direct=True)  # one push to each peer, not passed on
                gossips.append(g)
            time.sleep(args.settle_s)

            t0, b0 = time.monotonic(), lo_tx_bytes()
            time.sleep(args.idle_s)
            idle = (lo_tx_bytes() - b0) / (time.monotonic() - t0)
            out["idle_bytes_per_s"] = round(idle)

            def price(name: str, op) -> None:
                each = []
                for k in range(args.repeat):
                    t0, b0 = time.monotonic(), lo_tx_bytes()
                    op(k)
                    each.append(lo_tx_bytes() - b0 - idle * (time.monotonic() - t0))
                out[name] = round(sum(each) / len(each))
                if args.each:
                    out[name + "_each"] = [round(x) for x in each]

            def record(k: int) -> dict:
                i = k % args.peers
                return make_peer_record(idents[i], run_id, k + 1, 1.0, "d" * 64, visible_maddrs(peers[i]))

            price(
                "dht_store_peer_record",
                lambda k: publish_peer_record(peers[k % args.peers], idents[k % args.peers], record(k), 60),
            )
            price(
                "dht_store_digest",
                lambda k: publish_digest(peers[k % args.peers], idents[k % args.peers], run_id, 1, "d" * 64, 600),
            )
            price(
                "dht_store_new_key", lambda k: peers[k % args.peers].store(f"small{k}", b"x" * 40, get_dht_time() + 60)
            )

            def declare(k: int) -> None:  # what hivemind's matchmaking stores: {peer: looking_for_group}, short-lived
                dht = peers[k % args.peers]
                dht.store(f"group.0b{k // args.peers}", True, get_dht_time() + 30, subkey=dht.peer_id.to_bytes())

            price("dht_store_group_key", declare)
            price("dht_get_group_key", lambda k: peers[k % args.peers].get(f"group.0b{k // args.peers}", latest=True))
            price("dht_get_peer_records", lambda k: list_peer_records(peers[k % args.peers], run_id))
            price("dht_get_digests", lambda k: get_digests(peers[k % args.peers], run_id, 1))
            price(
                "dht_get_missing_key", lambda k: get_signed(peers[k % args.peers], ready_key(run_id, 999), READY_KIND)
            )
            body = {"peer_id": ids[0], "round": 1, "time": time.time()}
            price(
                "dht_store_ready",
                lambda k: publish_signed(
                    peers[k % args.peers], idents[k % args.peers], ready_key(run_id, 1), READY_KIND, body, 90
                ),
            )

            def gossip_one(k: int, kind: str = READY_KIND) -> None:
                mid = gossips[k % args.peers].publish(kind, {"run_id": run_id, "round": 1000 + k})
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    with lock:
                        if all(mid in s for s in got.values()):
                            break
                    time.sleep(0.02)
                time.sleep(args.gossip_settle_s)  # forwards and duplicates still in flight

            price("gossip_message_flooded", gossip_one)
            price("gossip_message_direct", lambda k: gossip_one(k, DIGEST_KIND))
            out["gossip_message_bytes"] = len(gossips[0]._prepare_local(READY_KIND, {"run_id": run_id, "round": 1})[0])
        finally:
            for g in gossips:
                g.close()
            for d in reversed(dhts):
                stop_dht(d)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--settle-s", type=float, default=5.0)
    ap.add_argument(
        "--anti-entropy-s", type=float, default=60.0, help="gossip anti-entropy period (a peer: 60; 0: off)"
    )
    ap.add_argument("--gossip-settle-s", type=float, default=1.0)
    ap.add_argument("--each", action="store_true", help="also list every repetition's bytes")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inside:
        print(json.dumps({"benchmark": "control_ops", "method": "netns loopback tx bytes", **inside(args)}))
        return 0
    if os.geteuid() != 0:
        print("error: control_ops.py needs root (a network namespace)", file=sys.stderr)
        return 2
    ns = f"p2pctl_{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        argv = [a for a in (argv if argv is not None else sys.argv[1:])]
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside", *argv])
        return p.returncode
    finally:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns])


if __name__ == "__main__":
    sys.exit(main())
