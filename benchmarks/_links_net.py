"""The network and CPU plumbing of benchmarks/links.py: one network namespace per node (bootstrap, solo, peers)
joined by a veth pair to a Linux bridge in a dedicated hub namespace, ``tc tbf`` egress caps on both ends of each
veth, one cgroup-v1 ``cpu`` (+ ``cpuacct``, ``memory`` when mounted) group per node, a wrapper that puts a process
into its node's cgroups and namespace before it starts, byte counters read on the hub side, and a teardown that
removes everything it created (also after an exception or a signal).

Names carry the creating process's PID in hex (``p2plinks-<pid>-<node>`` for namespaces and cgroups,
``lk<pid>[hn]<k>`` for veth ends), so parallel runs never clash and what an aborted run left behind can be told
from a live run's (``stale_suffixes``, ``links.py --cleanup-stale``).

Nothing here reads a peer's state: counters come from ``ip -s -j link`` in the hub namespace (one process per
sample), CPU from ``cpuacct.usage``, memory from ``memory.max_usage_in_bytes`` / ``memory.stat``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CGROOT = Path("/sys/fs/cgroup")
PREFIX = "p2plinks"
SUBNET = "10.213.0"  # /24; hub-internal, never routed: every run has its own hub namespace
PERIOD_US = 100_000
TOOLS = ("ip", "tc", "sh")


# --- pure helpers (unit-tested) -------------------------------------------------------------------------------


def suffix(pid: int | None = None) -> str:
    return f"{os.getpid() if pid is None else pid:x}"


def ns_name(sfx: str, node: str) -> str:
    return f"{PREFIX}-{sfx}-{node}"


def veth_names(sfx: str, k: int) -> tuple[str, str]:
    """(hub end, node end) of node k's veth pair; at most 15 characters (IFNAMSIZ - 1)."""
    hub, node = f"lk{sfx}h{k}", f"lk{sfx}n{k}"
    if len(hub) > 15:
        raise ValueError(f"interface name {hub!r} is longer than 15 characters")
    return hub, node


def node_ip(k: int) -> str:
    if not 0 <= k < 250:
        raise ValueError("at most 250 nodes on the /24")
    return f"{SUBNET}.{k + 2}"


def tbf_args(rate_mbit: float, burst_kb: float, latency_ms: float) -> list[str]:
    """``tc qdisc replace ... root`` arguments of a token bucket at ``rate_mbit`` (burst in KiB, queue in ms);
    the burst is at least 2 full frames so no MTU-sized packet is stuck."""
    burst = max(int(burst_kb * 1024), 3200)
    return ["tbf", "rate", f"{int(round(rate_mbit * 1000))}kbit", "burst", str(burst), "latency", f"{latency_ms:g}ms"]


def cfs_quota_us(cpu: float, slow: float = 1.0, period_us: int = PERIOD_US) -> int:
    """cpu.cfs_quota_us giving ``cpu`` cores divided by ``slow``; -1 (no limit) for cpu <= 0."""
    if cpu <= 0:
        return -1
    return max(1000, int(round(cpu / slow * period_us)))


def parse_link_stats(text: str) -> dict[str, tuple[int, int, int, int]]:
    """{ifname: (rx_bytes, tx_bytes, rx_packets, tx_packets)} from ``ip -s -j link show``."""
    out = {}
    for link in json.loads(text or "[]"):
        s = link.get("stats64") or link.get("stats") or {}
        rx, tx = s["rx"], s["tx"]
        out[link["ifname"]] = (int(rx["bytes"]), int(tx["bytes"]), int(rx.get("packets", 0)), int(tx.get("packets", 0)))
    return out


def parse_tcp_snmp(text: str) -> dict[str, int]:
    """{"OutSegs", "RetransSegs"} from a namespace's ``/proc/net/snmp`` (its "Tcp:" header and value lines)."""
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Tcp:")]
    if len(rows) < 2:
        return {}
    values = dict(zip(rows[0], rows[1], strict=False))
    return {k: int(values[k]) for k in ("OutSegs", "RetransSegs") if k in values}


def stale_suffixes(netns_names: list[str], alive) -> list[str]:
    """Suffixes of ``p2plinks-<hexpid>-*`` namespaces whose creating PID no longer runs (``alive(pid) -> bool``)."""
    rx = re.compile(rf"^{PREFIX}-([0-9a-f]+)-")
    out = set()
    for name in netns_names:
        m = rx.match(name)
        if m and not alive(int(m.group(1), 16)):
            out.add(m.group(1))
    return sorted(out)


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


# --- the topology ---------------------------------------------------------------------------------------------


def _run(cmd: list[str], check: bool = True) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}: {res.stderr.strip() or res.returncode}")
    return res.stdout


@dataclass
class Node:
    name: str
    k: int
    ns: str
    hub_if: str
    node_if: str
    ip: str
    cgroups: dict[str, Path] = field(default_factory=dict)  # controller -> dir
    up_mbit: float = 0.0
    down_mbit: float = 0.0
    cpu: float = 0.0
    slow: float = 1.0


class Topology:
    """A hub namespace with a bridge, and one namespace + veth + cgroups per node. Use as a context manager (or
    call ``close``): everything is removed at the end, processes left in a node's namespace or cgroups are
    SIGKILLed by PID."""

    def __init__(self, sfx: str | None = None, burst_kb: float = 16.0, latency_ms: float = 200.0):
        self.sfx = sfx or suffix()
        self.hub = ns_name(self.sfx, "hub")
        self.bridge = f"lk{self.sfx}br"
        self.nodes: dict[str, Node] = {}
        self.burst_kb, self.latency_ms = burst_kb, latency_ms
        self.controllers = [c for c in ("cpu", "cpuacct", "memory") if (CGROOT / c / "cgroup.procs").exists()]
        self._closed = False
        self._made_ns: list[str] = []

    def __enter__(self) -> Topology:
        try:
            self._add_ns(self.hub)
            _run(["ip", "-n", self.hub, "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "-n", self.hub, "link", "set", self.bridge, "up"])
            _run(["ip", "-n", self.hub, "link", "set", "lo", "up"])
            for c in self.controllers:
                (CGROOT / c / f"{PREFIX}-{self.sfx}").mkdir(exist_ok=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._made_ns.append(name)

    def add_node(self, name: str) -> Node:
        k = len(self.nodes)
        hub_if, node_if = veth_names(self.sfx, k)
        node = Node(name, k, ns_name(self.sfx, name), hub_if, node_if, node_ip(k))
        self.nodes[name] = node
        self._add_ns(node.ns)
        _run(["ip", "link", "add", hub_if, "type", "veth", "peer", "name", node_if])
        _run(["ip", "link", "set", node_if, "netns", node.ns])
        _run(["ip", "link", "set", hub_if, "netns", self.hub])
        _run(["ip", "-n", self.hub, "link", "set", hub_if, "master", self.bridge, "up"])
        _run(["ip", "-n", node.ns, "addr", "add", f"{node.ip}/24", "dev", node_if])
        _run(["ip", "-n", node.ns, "link", "set", node_if, "up"])
        _run(["ip", "-n", node.ns, "link", "set", "lo", "up"])
        for c in self.controllers:
            d = CGROOT / c / f"{PREFIX}-{self.sfx}" / name
            d.mkdir(exist_ok=True)
            node.cgroups[c] = d
        if "cpu" in self.controllers:
            # the run's group competes with every other task of the machine as ONE entity of weight cpu.shares:
            # give it the weight of as many tasks as it has nodes, so that our peers are not starved (against
            # the same processes outside any cgroup) when other jobs share the cores
            (CGROOT / "cpu" / f"{PREFIX}-{self.sfx}" / "cpu.shares").write_text(str(1024 * len(self.nodes)))
        return node

    def shape(self, name: str, up_mbit: float, down_mbit: float) -> None:
        """Uplink cap on the node's end (its egress), downlink cap on the hub's end (egress towards the node);
        0 removes the cap."""
        node = self.nodes[name]
        for ns, dev, rate in ((node.ns, node.node_if, up_mbit), (self.hub, node.hub_if, down_mbit)):
            if rate and rate > 0:
                _run(
                    [
                        "tc",
                        "-n",
                        ns,
                        "qdisc",
                        "replace",
                        "dev",
                        dev,
                        "root",
                        *tbf_args(rate, self.burst_kb, self.latency_ms),
                    ]
                )
            else:
                _run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
        node.up_mbit, node.down_mbit = up_mbit, down_mbit

    def limit_cpu(self, name: str, cpu: float, slow: float = 1.0) -> None:
        node = self.nodes[name]
        d = node.cgroups.get("cpu")
        if d is None:
            raise RuntimeError("the cgroup-v1 cpu controller is not mounted at /sys/fs/cgroup/cpu")
        (d / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (d / "cpu.cfs_quota_us").write_text(str(cfs_quota_us(cpu, slow)))
        node.cpu, node.slow = cpu, slow

    def wrap(self, name: str, argv: list[str]) -> list[str]:
        """argv run inside the node: a shell joins the node's cgroups, then execs ``ip netns exec NS argv`` (same
        PID throughout, so the caller's Popen PID is the program's)."""
        node = self.nodes[name]
        joins = " && ".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in node.cgroups.values())
        script = (joins + " && " if joins else "") + f'exec ip netns exec {shlex.quote(node.ns)} "$@"'
        return ["sh", "-c", script, "sh", *argv]

    # --- measurements ---

    def counters(self) -> dict[str, tuple[int, int, int, int]]:
        """{node: (sent, received, sent packets, received packets)} bytes, read on the hub end (hub rx = what the
        node sent, after its uplink cap; hub tx = what it received, after its downlink cap)."""
        stats = parse_link_stats(_run(["ip", "-n", self.hub, "-s", "-j", "link", "show"]))
        return {n.name: stats[n.hub_if] for n in self.nodes.values() if n.hub_if in stats}

    def tcp_segments(self) -> dict[str, dict[str, int]]:
        """{node: {"OutSegs", "RetransSegs"}}: TCP segments each node's namespace sent and sent again (its own SNMP
        counters; a retransmission crosses the capped link again, so it is in the wire bytes)."""
        out = {}
        for n in self.nodes.values():
            try:
                out[n.name] = parse_tcp_snmp(_run(["ip", "netns", "exec", n.ns, "cat", "/proc/net/snmp"]))
            except Exception:  # a namespace gone: no figure
                continue
        return out

    def cpu_ns(self) -> dict[str, int]:
        out = {}
        for n in self.nodes.values():
            d = n.cgroups.get("cpuacct")
            if d is not None:
                try:
                    out[n.name] = int((d / "cpuacct.usage").read_text())
                except (OSError, ValueError):
                    pass
        return out

    def reset_mem_peak(self) -> None:
        for n in self.nodes.values():
            d = n.cgroups.get("memory")
            if d is not None:
                try:
                    (d / "memory.max_usage_in_bytes").write_text("0")
                except OSError:
                    pass

    def mem(self) -> dict[str, dict[str, int]]:
        """{node: {peak: max usage (page cache charged to it included), rss: anonymous memory now}} in bytes."""
        out = {}
        for n in self.nodes.values():
            d = n.cgroups.get("memory")
            if d is None:
                continue
            try:
                peak = int((d / "memory.max_usage_in_bytes").read_text())
                stat = dict(line.split() for line in (d / "memory.stat").read_text().splitlines())
                out[n.name] = {"peak": peak, "rss": int(stat.get("total_rss", stat.get("rss", 0)))}
            except (OSError, ValueError):
                pass
        return out

    def cgroup_pids(self) -> list[int]:
        pids = set()
        for n in self.nodes.values():
            for d in n.cgroups.values():
                try:
                    pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
                except (OSError, ValueError):
                    pass
        return sorted(pids)

    # --- teardown ---

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        cleanup(self.sfx)


def _ns_pids(ns: str) -> list[int]:
    try:
        return [int(x) for x in _run(["ip", "netns", "pids", ns], check=False).split()]
    except ValueError:
        return []


def cleanup(sfx: str) -> dict:
    """Remove every namespace, veth, bridge and cgroup named with ``sfx``; SIGKILL (by PID) the processes still in
    those namespaces or cgroups first. Returns what it found."""
    found: dict = {"killed": [], "netns": [], "cgroups": [], "links": []}
    prefix = f"{PREFIX}-{sfx}-"
    names = [line.split()[0] for line in _run(["ip", "netns", "list"], check=False).splitlines() if line.strip()]
    mine = [n for n in names if n.startswith(prefix)]
    groups = []
    for c in ("cpu", "cpuacct", "memory"):
        top = CGROOT / c / f"{PREFIX}-{sfx}"
        if top.is_dir():
            groups += [d for d in top.iterdir() if d.is_dir()] + [top]
    for attempt in range(20):
        pids = set()
        for ns in mine:
            pids.update(_ns_pids(ns))
        for d in groups:
            try:
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        pids.discard(os.getpid())
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                if attempt == 0:
                    found["killed"].append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.25)
    for ns in mine:  # deleting a namespace destroys the veth ends in it, and so their pairs, and the bridge
        _run(["ip", "netns", "del", ns], check=False)
        found["netns"].append(ns)
    for d in groups:
        for _ in range(20):
            try:
                d.rmdir()
                found["cgroups"].append(str(d))
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
    # a veth pair still in the root namespace (an abort between "add" and "set netns")
    try:
        links = json.loads(_run(["ip", "-j", "link", "show"], check=False) or "[]")
    except ValueError:
        links = []
    for link in links:
        name = link.get("ifname", "")
        if re.fullmatch(rf"lk{sfx}[hn]\d+|lk{sfx}br", name):
            _run(["ip", "link", "del", name], check=False)
            found["links"].append(name)
    return found


def list_netns() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"], check=False).splitlines() if line.strip()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Sampler:
    """Every ``every`` seconds: (time.monotonic(), {node: (sent, received)}), per-node anonymous memory, and the
    machine's MemAvailable, until ``stop``."""

    def __init__(self, topo: Topology, every: float = 1.0):
        self.topo, self.every = topo, every
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self.rss_peak: dict[str, int] = {}
        self.mem_available_min: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        try:
            c = self.topo.counters()
        except (RuntimeError, ValueError, KeyError):
            return
        self.samples.append((time.monotonic(), c))
        for name, m in self.topo.mem().items():
            self.rss_peak[name] = max(self.rss_peak.get(name, 0), m["rss"])
        avail = mem_available()
        if avail is not None:
            self.mem_available_min = avail if self.mem_available_min is None else min(self.mem_available_min, avail)

    def _loop(self) -> None:
        while not self._done.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(10)
        self.sample()


def mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None
