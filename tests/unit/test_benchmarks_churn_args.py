"""benchmarks/churn.py and benchmarks/pace.py without starting any process: argument parsing, the disruption
schedule, and the JSON helpers (round walls, digest agreement, tag stretches, targets, per-peer pace)."""

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


churn = _load("churn")
pace = _load("pace")
harness = _load("_swarm_harness")


class FakeProc:
    def __init__(self, code=0):
        self.code = code

    def poll(self):
        return self.code


class FakePeer:
    """Duck type of _swarm_harness.TimedPeer for the pure helpers: round events with arrival times."""

    def __init__(self, name, rounds, incarnation=0, log_path=Path("/nonexistent.log")):
        self.name, self.incarnation, self.log_path = name, incarnation, log_path
        self._events = rounds  # [(time, round, digest, inner_steps, group_size)]
        self.proc = FakeProc()

    def round_events(self):
        return [
            (t, {"event": "round", "round": r, "digest": d, "inner_steps": s, "group_size": g})
            for t, r, d, s, g in self._events
        ]

    def round_times(self):
        out = {}
        for t, e in self.round_events():
            out.setdefault(e["round"], t)
        return out


def test_churn_defaults_match_the_issue():
    a = churn.parse_args([])
    assert (a.rounds, a.every, a.baseline_rounds, a.release_every, a.seed, a.peers) == (30, 4, 10, 2, 0, 4)
    assert a.join_at == 15 and a.workdir is None and not a.keep
    ov = churn.overrides(a)
    assert "versioning.release_every=2" in ov and "train.inner_steps=20" in ov and "eval.batches=2" in ov
    assert any(o.startswith("sync.matchmaking_time_s=2") for o in ov)


def test_churn_options_and_errors():
    a = churn.parse_args(["--rounds", "12", "--every", "4", "--baseline-rounds", "4", "--release-every", "3"])
    assert (a.rounds, a.join_at) == (12, 6) and churn.overrides(a)[-1] == "versioning.release_every=3"
    a = churn.parse_args(["--set", "train.lr=1e-3", "--keep", "--workdir", "/tmp/x", "--join-at", "3"])
    assert churn.overrides(a)[-1] == "train.lr=1e-3" and a.keep and a.workdir == Path("/tmp/x") and a.join_at == 3
    with pytest.raises(SystemExit):
        churn.parse_args(["--rounds", "1"])
    with pytest.raises(SystemExit):
        churn.parse_args(["--every", "0"])


def test_disruption_schedule_leaves_rounds_to_rejoin():
    assert churn.disruption_schedule(30, 4) == [4, 8, 12, 16, 20, 24, 28]
    assert churn.disruption_schedule(12, 4) == [4, 8]
    assert churn.disruption_schedule(3, 4) == []
    assert [churn.KINDS[i % 3] for i in range(4)] == ["sigkill", "sigterm", "sigint_group", "sigkill"]


def test_round_walls_use_the_last_peer_of_each_round():
    a = FakePeer("a", [(10.0, 1, "x", 20, 2), (20.0, 2, "y", 40, 2), (31.0, 3, "z", 60, 2)])
    b = FakePeer("b", [(11.0, 1, "x", 20, 2), (22.0, 2, "y", 40, 2), (30.0, 3, "z", 60, 2)])
    assert harness.last_round_times([a, b]) == {1: 11.0, 2: 22.0, 3: 31.0}
    walls = harness.round_walls([a, b], range(2, 4))
    assert walls == {2: pytest.approx(11.0), 3: pytest.approx(9.0)}
    s = harness.stats(walls.values())
    assert s["n"] == 2 and s["max"] == 11.0 and s["median"] == 10.0
    assert harness.stats([])["median"] is None
    assert harness.ratio(3.0, 2.0) == 1.5 and harness.ratio(1.0, None) is None and harness.ratio(1.0, 0) is None


def test_digest_agreement_counts_rounds_with_two_digests():
    a = FakePeer("p1", [(1, 1, "a" * 64, 20, 2), (2, 2, "b" * 64, 40, 2)])
    b = FakePeer("p2", [(1, 1, "a" * 64, 20, 2), (2, 2, "c" * 64, 40, 1)], incarnation=1)
    table = harness.digest_table([a, b], range(1, 3))
    assert table[1] == {"p1.0": "a" * 64, "p2.1": "a" * 64}
    out = churn.digest_summary(table)
    assert out["rounds_checked"] == 2 and out["rounds_with_multiple_digests"] == 1
    assert out["disagreements"] == [{"round": 2, "digests": {"p1.0": "b" * 12, "p2.1": "c" * 12}}]
    json.dumps(out)


def test_tag_stretches_per_departure():
    # tags made (first seen) at unix times; the swarm round at time t is t // 10
    tags = {f"v0.1.{i}": {"round": 2 * (i + 1), "first_seen": 10.0 * (2 * (i + 1)) + 1} for i in range(3)}
    tags["v0.1.3"] = {"round": 14, "first_seen": 141.0}  # rounds 2, 4, 6, then nothing until 14
    deps = [{"round": 3, "kind": "sigkill", "signal_unix": 35.0}, {"round": 8, "kind": "sigterm", "signal_unix": 85.0}]
    rows, made = churn.tag_stretches(deps, tags, 16, lambda t: int(t // 10))
    assert made == {"v0.1.0": 2, "v0.1.1": 4, "v0.1.2": 6, "v0.1.3": 14}
    assert rows[0]["first_tag_after"] == "v0.1.1" and rows[0]["rounds_to_first_tag"] == 1
    assert rows[0]["tags_made_in_window"] == 2 and rows[0]["longest_stretch_without_tag"] == 8  # 6 -> 14
    assert rows[1]["first_tag_after"] == "v0.1.3" and rows[1]["rounds_to_first_tag"] == 6
    assert rows[1]["longest_stretch_without_tag"] == 6 and rows[1]["window_end_round"] == 16
    none, _ = churn.tag_stretches(deps[:1], {}, 16, lambda t: 0)
    assert none[0]["first_tag_after"] is None and none[0]["longest_stretch_without_tag"] == 13


def _churn_result(walls_max, stretch, left=0, corrupt=False, bad_rounds=0):
    return {
        "disruptions": [{"left_behind": [{"pid": 1, "comm": "p2pd"}] * left}],
        "final_stop": {"left_behind": []},
        "checkpoints": {"peer1": {"ok": not corrupt, "error": "IntegrityError: x" if corrupt else None}},
        "round_wall_s": {"max": walls_max},
        "digests": {"rounds_with_multiple_digests": bad_rounds},
        "tags": {"after_departures": [{"longest_stretch_without_tag": stretch}]},
    }


def test_targets():
    base = {"round_wall_s": {"median": 10.0}}
    t = churn.targets(base, _churn_result(20.0, 6), release_every=2)
    assert t == {
        "leftover_processes": 0,
        "corrupt_checkpoints": 0,
        "zero_leftover": True,
        "zero_corrupt": True,
        "one_digest_every_commit": True,
        "max_round_wall_le_2x_median": True,
        "tag_per_3x_release_every_after_each_departure": True,
    }
    t = churn.targets(base, _churn_result(21.0, 7, left=2, corrupt=True, bad_rounds=1), release_every=2)
    assert t["leftover_processes"] == 2 and t["corrupt_checkpoints"] == 1
    assert not any(t[k] for k in t if isinstance(t[k], bool))
    assert churn.targets(None, _churn_result(1.0, 1), 2)["max_round_wall_le_2x_median"] is False


def test_pace_args():
    a = pace.parse_args([])
    assert (a.max_rounds, a.swarm_peers, a.sigkill_one, a.kill_after, a.kill_rounds, a.overrides) == (
        8,
        2,
        False,
        2,
        6,
        [],
    )
    a = pace.parse_args(["--max-rounds", "4", "--set", "train.inner_steps=30", "--sigkill-one", "--kill-after", "3"])
    assert a.overrides == ["train.inner_steps=30"] and a.sigkill_one and a.kill_rounds == 7
    with pytest.raises(SystemExit):
        pace.parse_args(["--max-rounds", "1"])
    with pytest.raises(SystemExit):
        pace.parse_args(["--kill-after", "3", "--kill-rounds", "4"])
    assert pace.parse_args(["--repeats", "3"]).repeats == 3
    with pytest.raises(SystemExit):
        pace.parse_args(["--repeats", "0"])


def test_pace_comparison_and_pairs():
    solo = {
        "per_peer": {"solo": {"inner_steps_per_s": 10.0, "inner_phase_steps_per_s": 12.5}},
        "median_round_wall_s": 5.0,
        "load_avg_start": [1.0, 1.0, 1.0],
    }
    swarm = {
        "per_peer": {
            "s1": {"inner_steps_per_s": 9.5, "inner_phase_steps_per_s": 12.5},
            "s2": {"inner_steps_per_s": 8.5, "inner_phase_steps_per_s": 12.5},
        },
        "median_round_wall_s": 6.0,
        "load_avg_start": [2.0, 1.0, 1.0],
    }
    c = pace.compare(solo, swarm)
    assert c["ratio_vs_solo"] == {"s1": 0.95, "s2": 0.85} and c["mean_ratio_vs_solo"] == 0.9
    assert c["median_round_wall_ratio_swarm_vs_solo"] == 1.2 and c["load_avg_1m"] == {"solo": 1.0, "swarm": 2.0}
    assert c["solo_efficiency"] == 0.8 and c["swarm_efficiency"] == {"s1": 0.76, "s2": 0.68}
    assert c["efficiency_ratio_vs_solo"] == 0.9
    pairs = [{"comparison": c}, {"comparison": {**c, "mean_ratio_vs_solo": 1.2, "efficiency_ratio_vs_solo": 1.0}}]
    pairs.append({"comparison": {**c, "mean_ratio_vs_solo": 0.5, "efficiency_ratio_vs_solo": 0.7}})
    summary = pace.summarize_pairs(pairs)
    assert summary["mean_ratio_vs_solo_by_pair"] == [0.9, 1.2, 0.5] and summary["mean_ratio_vs_solo"] == 0.9
    assert summary["efficiency_ratio_vs_solo"] == 0.9 and summary["pairs"] == 3
    swarm["per_peer"]["s2"]["inner_steps_per_s"] = None  # a peer with fewer than 2 rounds: no mean
    c = pace.compare(solo, swarm)
    assert c["mean_ratio_vs_solo"] is None and pace.summarize_pairs([{"comparison": c}])["mean_ratio_vs_solo"] is None
    json.dumps(c)


def test_peer_pace_counts_steps_between_first_and_last_round(tmp_path):
    log = tmp_path / "p.log"
    log.write_text(
        "03:18:14 I p2pmodel.peer: round 1 committed: val_loss 2.8 train_loss 3.4 steps 50 (10.0 steps/s) group 2\n"
        "03:18:27 I p2pmodel.peer: round 2 committed: val_loss 2.6 train_loss 2.7 steps 48 (12.0 steps/s) group 2\n"
    )
    p = FakePeer("s1", [(100.0, 1, "a", 50, 2), (110.0, 2, "b", 98, 2), (120.0, 3, "c", 148, 1)], log_path=log)
    out = pace.peer_pace(p)
    assert out["inner_steps"] == 98 and out["seconds"] == 20.0 and out["inner_steps_per_s"] == 4.9
    assert out["inner_phase_steps_per_s"] == 11.0 and out["mean_group_size"] == pytest.approx(5 / 3, abs=1e-3)
    assert pace.peer_pace(FakePeer("x", [(1.0, 1, "a", 50, 1)]))["inner_steps_per_s"] is None


def test_tags_from_logs_parse_round_and_first_time(tmp_path):
    t0 = 1_796_181_000.0  # 2026-12-01 ~03:10 UTC
    (tmp_path / "a.log").write_text("03:14:02 I p2pmodel.release: tagged v0.1.3 = 913c1efd4f62 (round 8, 3/3 votes)\n")
    (tmp_path / "b.log").write_text(
        "03:14:01 I p2pmodel.release: tagged v0.1.3 = 913c1efd4f62 (round 8, received)\n"
        "03:15:05 I p2pmodel.release: tagged v0.1.4 = 684dce0fdb56 (round 10, 4/4 votes)\n"
    )
    tags = harness.tags_from_logs([tmp_path / "a.log", tmp_path / "b.log", tmp_path / "missing.log"], t0)
    assert set(tags) == {"v0.1.3", "v0.1.4"} and tags["v0.1.3"]["round"] == 8
    assert tags["v0.1.4"]["first_seen"] - tags["v0.1.3"]["first_seen"] == 64.0  # earliest line, whole seconds


def test_proc_helpers_on_this_process():
    import os

    table = harness.proc_table()
    me = os.getpid()
    assert me in table and table[me][0] == os.getppid()
    mine = {me: (table[me][1], table[me][3])}
    assert harness.alive(mine) == mine
    assert harness.alive({me: (table[me][1] + 1, "x")}) == {}  # same PID, other start time: another process
    assert me in harness.descendants(os.getppid(), table)
    assert harness.tree_cpu_s(me) > 0 and harness.tree_cpu_s(2**22 + 12345) == 0.0  # no such PID: nothing counted


@pytest.mark.swarm
def test_help_runs_without_starting_anything():
    for name in ("churn", "pace"):
        res = subprocess.run(
            [sys.executable, str(BENCH / f"{name}.py"), "--help"], capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0 and "--workdir" in res.stdout and "--keep" in res.stdout, res.stderr
