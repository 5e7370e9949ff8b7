"""benchmarks/links.py and benchmarks/_links_net.py without starting any process: argument parsing, arm
definitions, names and tc/cgroup values, and the metrics on synthetic round events and byte samples."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


links = _load("links")
net = links.net  # the module links.py imported (a dataclass needs its module in sys.modules)


def test_defaults():
    a = links.parse_args([])
    assert (a.peers, a.rounds, a.rates, a.down_mbit, a.cpu) == (4, 6, [2.0], None, 0.4)
    assert a.arm_names == ["blocking", "overlap"] and a.arm_defs == {"blocking": [], "overlap": ["sync.overlap=true"]}
    assert a.seed_list == [None] and a.slow_cpu == {} and a.slow_net == {} and not a.no_solo and not a.keep
    assert links.down_rate(a, 2.0) == 8.0
    assert links.run_overrides(a, "overlap", None) == ["train.torch_threads=1", "sync.overlap=true"]


def test_options():
    a = links.parse_args(
        [
            "--peers", "8", "--rounds", "5", "--rate-mbit", "1,2.5", "--down-mbit", "10", "--cpu", "0",
            "--slow", "3=2", "--slow-link", "1=10", "--arm", "fat=compress.codec=int8,sync.matchmaking_time_s=2",
            "--arms", "blocking,fat", "--seeds", "0,1,2", "--fast-rounds", "--set", "train.lr=1e-3",
            "--peer-set", "1=swarm.client_mode=true", "--peer-set", "1=train.lr=2e-3",
        ]
    )  # fmt: skip
    assert a.rates == [1.0, 2.5] and links.down_rate(a, 1.0) == 10.0 and a.cpu == 0
    assert a.slow_cpu == {3: 2.0} and a.slow_net == {1: 10.0} and a.seed_list == [0, 1, 2]
    assert a.arm_defs == {"blocking": [], "fat": ["compress.codec=int8", "sync.matchmaking_time_s=2"]}
    ov = links.run_overrides(a, "fat", 1)
    assert ov[0] == "train.torch_threads=1" and "train.inner_steps=20" in ov
    assert ov[-3:] == ["compress.codec=int8", "sync.matchmaking_time_s=2", "train.seed=1"]
    assert ov.index("train.lr=1e-3") < ov.index("compress.codec=int8")  # the arm's overrides win over --set
    assert a.peer_sets == {1: ["swarm.client_mode=true", "train.lr=2e-3"]}  # after those, for peer 1 only


@pytest.mark.parametrize(
    "argv",
    [
        ["--rounds", "2"],
        ["--peers", "0"],
        ["--peers", "65"],
        ["--arms", "nope"],
        ["--arms", "blocking,blocking"],
        ["--slow", "4=2"],  # 4 peers: indexes 0..3
        ["--slow", "1=0.5"],
        ["--arm", "solo=a.b=1"],
        ["--arm", "x=notakey"],
        ["--rate-mbit", "-1"],
        ["--cpu", "-0.1"],
        ["--peer-set", "4=a.b=1"],
        ["--peer-set", "1=notakey"],
    ],
)
def test_bad_arguments(argv):
    with pytest.raises(SystemExit):
        links.parse_args(argv)


def test_parse_arm_keeps_commas_inside_values():
    assert links.parse_arm("blocking") == ("blocking", [])
    assert links.parse_arm("b=") == ("b", [])
    name, ov = links.parse_arm('x=swarm.host_maddrs=["/ip4/1.2.3.4/tcp/0","/ip4/5.6.7.8/tcp/0"],train.lr=1e-3')
    assert name == "x" and ov == ['swarm.host_maddrs=["/ip4/1.2.3.4/tcp/0","/ip4/5.6.7.8/tcp/0"]', "train.lr=1e-3"]


def test_names_fit_and_values():
    sfx = net.suffix(4194303)  # the largest default pid_max
    assert sfx == "3fffff"
    hub, node = net.veth_names(sfx, 99)
    assert len(hub) <= 15 and len(node) <= 15 and hub != node
    assert net.ns_name(sfx, "p3") == "p2plinks-3fffff-p3" and net.node_ip(0) == "10.213.0.2"
    with pytest.raises(ValueError):
        net.node_ip(250)
    assert net.tbf_args(2, 16, 200) == ["tbf", "rate", "2000kbit", "burst", "16384", "latency", "200ms"]
    assert net.tbf_args(0.5, 1, 50)[4] == "3200"  # at least two frames
    assert net.cfs_quota_us(0.4) == 40000 and net.cfs_quota_us(0.4, 2) == 20000
    assert net.cfs_quota_us(0) == -1 and net.cfs_quota_us(0.001, 10) == 1000


def test_link_stats_and_stale_runs():
    text = json.dumps(
        [
            {"ifname": "lo", "stats64": {"rx": {"bytes": 5}, "tx": {"bytes": 5}}},
            {"ifname": "lk1ah2", "stats64": {"rx": {"bytes": 100, "packets": 2}, "tx": {"bytes": 250, "packets": 3}}},
        ]
    )
    assert net.parse_link_stats(text) == {"lo": (5, 5, 0, 0), "lk1ah2": (100, 250, 2, 3)}
    names = ["p2plinks-1a-hub", "p2plinks-1a-p0", "p2plinks-2b-hub", "other", "p2plinks-zz-x"]
    assert net.stale_suffixes(names, alive=lambda pid: pid == 0x2B) == ["1a"]


def _events(rows):
    """rows: (arrival time, round, inner_steps, inner_s, round_s, val_loss, digest, cumulative payload/2)."""
    return [
        (
            t,
            {
                "event": "round",
                "round": r,
                "inner_steps": s,
                "inner_s": i,
                "round_s": rs,
                "val_loss": v,
                "digest": d,
                "bytes_sent": b,
                "bytes_received": b,
                "group_size": 4,
                "commit_missing": 0,
            },
        )
        for t, r, s, i, rs, v, d, b in rows
    ]


def test_peer_metrics_utilisation_exchange_cost_and_control_bytes():
    evs = _events(
        [
            (100.0, 1, 50, 8.0, 12.0, 3.0, "a", 1000),
            (112.0, 2, 100, 8.0, 12.0, 2.8, "b", 2000),
            (124.0, 3, 150, 8.0, 11.0, 2.6, "c", 3000),
        ]
    )
    # node bytes (sent, received): 0 at t=100, 30000 total at t=124, sampled at 100, 110, 130
    samples = [(100.0, {"p0": (0, 0)}), (110.0, {"p0": (6000, 6500)}), (130.0, {"p0": (18000, 19500)})]
    m = links.peer_metrics(list(reversed(evs)), samples, "p0")  # order of arrival does not matter
    assert m["rounds"] == 3 and (m["first_round"], m["last_round"]) == (1, 3)
    assert m["inner_steps"] == 100 and m["seconds"] == 24.0 and m["inner_steps_per_s"] == pytest.approx(4.167, abs=1e-3)
    assert m["utilisation"] == pytest.approx(16 / 24, abs=1e-3)
    assert m["eval_s_sum"] == 0 and m["utilisation_without_eval"] == m["utilisation"]  # events without eval_s
    evs[1][1]["eval_s"], evs[0][1]["eval_s"] = 2.0, 5.0  # round 1's evaluation is before the window
    assert links.peer_metrics(evs)["utilisation_without_eval"] == pytest.approx(16 / 22, abs=1e-3)
    assert m["overhead_s_by_round"] == {2: 4.0, 3: 3.0} and m["median_overhead_s"] == 3.5
    assert m["exchange_cost_vs_inner"] == pytest.approx(0.4375, abs=1e-3)
    assert m["gap_s_by_round"] == {2: 4.0, 3: 4.0} and m["median_exchange_wait_s"] is None  # older events
    evs[2][1]["exchange_wait_s"], evs[1][1]["exchange_wait_s"], evs[0][1]["exchange_wait_s"] = 1.0, 3.0, 9.0
    assert links.peer_metrics(evs)["median_exchange_wait_s"] == 2.0  # rounds after the first
    assert m["val_loss_final"] == 2.6 and m["val_loss_by_round"] == {1: 3.0, 2: 2.8, 3: 2.6}
    assert m["payload_bytes_per_round"] == 2000  # (3000 - 1000) x 2 directions / 2 rounds
    wire_124 = 12500 + (37500 - 12500) * 14 / 20
    assert links.wire_at(samples, "p0", 124.0) == pytest.approx(wire_124)
    assert m["wire_bytes_per_round"] == round(wire_124 / 2)
    assert m["control_bytes_per_round"] == round((wire_124 - 4000) / 2)
    assert m["control_bytes_per_s"] == round((wire_124 - 4000) / 24)
    # inner phases: round 2 [100, 108], round 3 [113, 121]: 1250 B/s until 110, then 1250 B/s after it too
    assert m["inner_phase_bytes_per_s"] == 1250
    assert m["control_bytes_per_round_outside_inner"] == round((wire_124 - 4000 - 16 * 1250) / 2)
    assert links.wire_at(samples, "p0", 50.0) == 0 and links.wire_at(samples, "p0", 500.0) == 37500
    assert links.wire_at(samples, "px", 1.0) is None
    assert links.wire_total(samples, "p0") == {"sent": 18000, "received": 19500, "total": 37500}
    assert "control_bytes_per_round_above_tcp" not in m  # no packet counts in these samples
    # with packet counts: 100 packets a second, each with 66 bytes of Ethernet/IP/TCP headers
    counted = [(t, {"p0": (*c["p0"], int(t - 100) * 50, int(t - 100) * 50)}) for t, c in samples]
    headers = 24 * 100 * links.TCPIP_HEADER_BYTES
    with_packets = links.peer_metrics(evs, counted, "p0")
    assert with_packets["packets_per_round"] == 1200
    assert with_packets["control_bytes_per_round_above_tcp"] == round((wire_124 - 4000 - headers) / 2)
    one = links.peer_metrics(evs[:1])
    assert one["utilisation"] is None and one["rounds"] == 1 and "control_bytes_per_round" not in one
    assert links.peer_metrics([])["rounds"] == 0
    json.dumps(m)


def test_run_summary_solo_ratio_fast_peers_and_grouping():
    def peer(rate, util, cost, vl, ctrl):
        return {
            "inner_steps_per_s": rate,
            "median_overhead_s": cost * 10,
            "utilisation": util,
            "exchange_cost_vs_inner": cost,
            "val_loss_final": vl,
            "val_loss_by_round": {1: vl + 1, 2: vl},
            "control_bytes_per_round": ctrl,
        }

    solo = {"inner_steps_per_s": 5.0, "exchange_cost_vs_inner": 0.1, "median_inner_s": 10.0}
    per = {
        "p0": peer(4.0, 0.6, 0.6, 2.0, 30000),
        "p1": peer(3.0, 0.5, 0.7, 2.2, 50000),
        "p2": peer(2.0, 0.9, 0.2, 2.1, 10000),
    }
    s = links.run_summary(per, fast=["p0", "p1"], solo=solo)
    assert per["p0"]["steps_ratio_vs_solo"] == 0.8 and per["p0"]["exchange_cost_net_vs_inner"] == 0.5
    assert per["p1"]["exchange_cost_vs_solo_inner"] == 0.7 and s["exchange_cost_vs_solo_inner"]["max"] == 0.7
    assert s["utilisation"]["max"] == 0.9 and s["utilisation_fast"]["max"] == 0.6 and s["utilisation_fast"]["n"] == 2
    assert s["steps_ratio_vs_solo"]["min"] == 0.4 and s["val_loss_by_round"] == {1: 3.1, 2: 2.1}
    assert s["control_bytes_per_peer_per_round"]["mean"] == 30000
    assert links.run_summary(per, fast=[], solo=None)["steps_ratio_vs_solo"]["n"] == 0

    def run(arm, seed, vl, util, cost, agree=True):
        summ = {
            "utilisation": {"mean": util},
            "utilisation_fast": {"min": util},
            "exchange_cost_vs_inner": {"median": cost},
            "val_loss_final": {"mean": vl},
            "control_bytes_per_peer_per_round": {"mean": 15000},
        }
        return {"arm": arm, "seed": seed, "rate_mbit": 2.0, "summary": summ, "digests_agree": agree,
                "round_wall_s": {"median": 12.0}, "rounds_committed": 6}  # fmt: skip

    runs = [run("blocking", 0, 2.0, 0.6, 0.7), run("overlap", 0, 2.01, 0.96, 0.1)]
    runs += [run("overlap", 1, 2.1, 0.97, 0.1), run("blocking", 1, 2.1, 0.62, 0.6)]
    g = links.group_runs(runs)
    assert set(g) == {"blocking@2mbit", "overlap@2mbit"} and g["overlap@2mbit"]["seeds"] == [0, 1]
    assert g["overlap@2mbit"]["by_seed"]["0"]["val_loss_vs_blocking"] == 1.005
    assert g["overlap@2mbit"]["val_loss_vs_blocking"]["max"] == 1.005 and g["overlap@2mbit"]["digests_agree_every_run"]
    assert g["blocking@2mbit"]["utilisation_mean"]["mean"] == 0.61
    t = links.targets(runs, None, slow=True)
    assert t["digests_agree_every_run"] and t["blocking_exchange_cost_ge_0.5_of_inner"]
    assert t["overlap_utilisation_ge_0.95"] and t["overlap_val_loss_le_1.01x_blocking"]
    assert t["control_bytes_per_peer_per_round_le_20KB"] and t["overlap_val_loss_vs_blocking_by_seed"] == [1.005, 1.0]
    assert t["fast_peers_utilisation_ge_0.95_with_a_slow_peer"] is False
    runs[0]["digests_agree"] = False
    assert links.targets(runs, None, slow=False)["digests_agree_every_run"] is False
    json.dumps(g)


def test_wrap_joins_cgroups_then_the_namespace(tmp_path):
    topo = net.Topology(sfx="abc")
    topo.nodes["p0"] = net.Node("p0", 0, "p2plinks-abc-p0", "lkabch0", "lkabcn0", "10.213.0.2", {"cpu": tmp_path})
    argv = topo.wrap("p0", ["python", "-m", "p2pmodel", "peer", "run"])
    assert argv[:2] == ["sh", "-c"] and argv[3] == "sh" and argv[4:] == ["python", "-m", "p2pmodel", "peer", "run"]
    assert f"echo $$ > {tmp_path}/cgroup.procs && exec ip netns exec p2plinks-abc-p0 " in argv[2]


@pytest.mark.swarm
def test_help_runs_without_starting_anything():
    res = subprocess.run(
        [sys.executable, str(BENCH / "links.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "--rate-mbit" in res.stdout and "--keep" in res.stdout, res.stderr


def test_log_counts_stop_at_the_harness_s_stop(tmp_path):
    """Overlapped, the harness stops a peer with the next round's exchange in flight: that cut all-reduce is not a
    failure of the run (it was counted as one, in every overlapped run)."""
    log = tmp_path / "p0.0.log"
    log.write_text(
        "20:52:01 W hivemind.averaging.partition: Averaging: received 92.2% results\n"
        "20:52:02 W p2pmodel.swarm: round 4: this peer holds a but most peers hold b: re-syncing\n"
        "20:52:35 I p2pmodel.stop: SIGTERM received: stopping (a second one stops at once)\n"
        "20:52:35 W hivemind.averaging.partition: Averaging: received 23.5% results\n"
    )
    counts = links.log_counts(log)
    assert counts["partial_allreduce"] == 1 and counts["resyncs"] == 1
    log.write_text("Averaging: received 23.5% results\n")  # no stop in the log: everything counts
    assert links.log_counts(log)["partial_allreduce"] == 1


def test_tcp_retransmissions_from_the_namespace_snmp_counters():
    snmp = (
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Tcp: RtoAlgorithm RtoMin OutSegs RetransSegs InErrs\nTcp: 1 200 1000 30 0\n"
        "Udp: InDatagrams\nUdp: 5\n"
    )
    before = net.parse_tcp_snmp(snmp)
    assert before == {"OutSegs": 1000, "RetransSegs": 30}
    assert net.parse_tcp_snmp("Ip: x\nIp: 1\n") == {}
    after = {"OutSegs": 3000, "RetransSegs": 130}
    assert links.tcp_retransmissions(before, after) == {
        "tcp_out_segs": 2000,
        "tcp_retrans_segs": 100,
        "tcp_retrans_fraction": 0.05,
        "tcp_retrans_bytes_max": 144800,
    }
    assert links.tcp_retransmissions({}, after) == {}
