"""Pace: inner steps per second of swarm peers against the solo daemon on the same cores; one JSON object on
stdout.

Target of the issue: "two peers on two cores: swarm inner steps/s >= 0.9 x the solo daemon's". In one invocation,
one after the other (never at the same time: the machine has 2 cores), on configs/tiny.toml as is (H = 50,
train.torch_threads = 1, so the solo daemon uses one core like each swarm peer) plus any ``--set``:
  (a) solo   one ``p2pmodel peer run --json --max-rounds N`` without --initial-peers (an isolated swarm of one)
  (b) swarm  a bootstrap node and 2 peers (``--swarm-peers``) joined to it, the same recipe and --max-rounds N
  (c) kill   with --sigkill-one: a bootstrap and 3 peers; once all 3 committed round ``--kill-after`` (2), one peer
             (seeded ``--seed``) gets SIGKILL on its main PID only (as the OOM killer does); the survivors run on
             to ``--kill-rounds`` (k + 4)
Processes are ``LocalSwarm`` peers on 127.0.0.1 (benchmarks/_swarm_harness.py); each JSON event is stamped with the
time its line arrives on the harness's pipe.

Per peer: inner steps/s = (inner_steps of its last round event - inner_steps of its first) / (time of its last
round event - time of its first), so everything between the first and last commits (inner steps, matchmaking and
averaging, the commit step, evaluation, checkpointing, votes) is in the denominator, as a user sees it; start-up
(data, model, DHT join) and round 1 are not. ``ratio_vs_solo`` = a swarm peer's / the solo daemon's; the
target is the mean ratio >= 0.9. ``inner_phase_steps_per_s`` is the median of the rate the peer logs for its
inner phase alone ("steps 50 (14.2 steps/s)"), to tell CPU contention from round overhead.
``inner_steps_per_cpu_s`` = the same steps / the CPU seconds (user + system) the peer's process tree (the peer,
its p2pd and hivemind's child processes) used between those two events (sampled from /proc when each event
arrives), and ``cpu_ratio_vs_solo`` (swarm mean / solo): the CPU cost of a swarm peer's round against the solo
daemon's, which other jobs on the machine do not change.
``efficiency`` = inner steps/s / inner_phase_steps_per_s (the share of the time spent in inner steps at the peer's
own inner-phase rate) and ``efficiency_ratio_vs_solo`` (swarm mean / solo) compare the round overhead alone, which
other load on the cores affects far less than the raw rates. With ``--repeats K`` the solo and swarm runs are
done K times in pairs (solo then swarm, swarm then solo, ...), and the headline ratio is the median over pairs of
each pair's mean ratio: a busy machine (other jobs) drifts between two runs minutes apart.
Round wall time: T(r) = when the last peer of the run emitted its round-r event, wall(r) = T(r) - T(r-1) for
r = 2..N (median reported); group size: the mean of ``group_size`` over all round events.
Kill section: the survivors' wall of round k+1 (k = --kill-after; the round during which the victim died),
T_s(k+1) - T_s(k) with T_s over the two survivors only, against the median wall of the undisturbed rounds
2..k (all three peers; with k = 2 that is round 2 alone); target <= 1.5x. Also reported: the walls of the later
rounds, the victim's exit code, and its descendants (recorded just before the signal) still running 10 s later.
``load_avg_start`` / ``load_avg_end`` (os.getloadavg() before a run's processes start and after they stopped, so
the end includes the run itself) show how busy the cores were: anything else running on them slows every figure.

Run: python benchmarks/pace.py [--max-rounds 8] [--set train.inner_steps=50 ...] [--sigkill-one] [--repeats 2] [--keep]

Measured 2026-12-02 at the defaults on a 2-core machine shared with other jobs (load average 4-16, so a solo peer
ran its inner steps at 1.5-4.7 steps/s instead of ~15): the ratio is decided by that load, not by the daemon.
  --sigkill-one (1 pair):    swarm/solo 1.88 (solo under load 15, swarm under 5-8); kill: next round 0.70x
  --sigkill-one --repeats 2: pairs 0.954 and 0.681 (median 0.818); CPU-seconds per step swarm/solo 0.948 and
                             0.826; efficiency ratio 0.751 and 1.10; kill: next round 10.2 s vs 22.9 s (0.44x)
  In every kill run the survivors' next round was faster than round 2 (3 peers -> 2 on 2 cores, no wait for the
  dead peer beyond its round), no process of the victim was left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _swarm_harness import (  # noqa: E402
    TINY,
    Harness,
    TimedPeer,
    alive,
    bench_workdir,
    install_signal_exit,
    last_round_times,
    load,
    log_excerpts,
    progress,
    ratio,
    round_walls,
    stats,
)

LOGGED_RATE = re.compile(r"round (\d+) committed: .*? steps (\d+) \(([\d.]+) steps/s\)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-rounds", type=int, default=8, help="rounds of each run (>= 2)")
    ap.add_argument("--swarm-peers", type=int, default=2, help="peers of the swarm run")
    ap.add_argument("--config", type=Path, default=TINY)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--sigkill-one", action="store_true", help="also run section (c): 3 peers, SIGKILL one")
    ap.add_argument("--kill-after", type=int, default=2, help="(c): SIGKILL once all peers committed this round")
    ap.add_argument("--kill-peers", type=int, default=3, help="(c): peers of the kill run")
    ap.add_argument("--kill-rounds", type=int, default=None, help="(c): --max-rounds of the kill run [kill-after+4]")
    ap.add_argument("--seed", type=int, default=0, help="(c): seed of the victim choice")
    ap.add_argument("--left-after-s", type=float, default=10.0, help="(c): when to look for processes left behind")
    ap.add_argument("--timeout-s", type=float, default=None, help="limit per run [120 + 60 s per round]")
    ap.add_argument("--repeats", type=int, default=1, help="solo/swarm pairs, alternating which runs first")
    ap.add_argument("--skip-solo", action="store_true", help="(for checking the script) skip (a) and (b)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch dir [a new temp dir]")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (logs, data dirs)")
    args = ap.parse_args(argv)
    if args.max_rounds < 2 or args.swarm_peers < 1 or args.kill_after < 1 or args.kill_peers < 2 or args.repeats < 1:
        ap.error("--max-rounds >= 2, --swarm-peers >= 1, --kill-after >= 1, --kill-peers >= 2, --repeats >= 1")
    if args.kill_rounds is None:
        args.kill_rounds = args.kill_after + 4
    if args.kill_rounds < args.kill_after + 2:
        ap.error("--kill-rounds must be >= --kill-after + 2")
    return args


def run_timeout(args: argparse.Namespace, rounds: int) -> float:
    return args.timeout_s if args.timeout_s is not None else 120.0 + 60.0 * rounds


def peer_pace(p: TimedPeer) -> dict:
    """Inner steps/s of one peer process between its first and last round events (see the module docstring)."""
    evs = p.round_events()
    logged = [float(rate) for _r, _steps, rate in LOGGED_RATE.findall(_read(p.log_path))]
    out = {
        "rounds": len(evs),
        "first_round": int(evs[0][1]["round"]) if evs else None,
        "last_round": int(evs[-1][1]["round"]) if evs else None,
        "exit_code": p.proc.poll(),
        "inner_steps_per_s": None,
        "inner_phase_steps_per_s": round(statistics.median(logged), 2) if logged else None,
        "mean_group_size": round(statistics.fmean(e.get("group_size", 0) for _t, e in evs), 3) if evs else None,
    }
    if len(evs) >= 2:
        (t0, e0), (t1, e1) = evs[0], evs[-1]
        steps = int(e1["inner_steps"]) - int(e0["inner_steps"])
        out.update(
            inner_steps=steps,
            seconds=round(t1 - t0, 2),
            inner_steps_per_s=round(steps / (t1 - t0), 3) if t1 > t0 else None,
        )
        cpu = [c for c, _e in p.round_cpu()] if hasattr(p, "round_cpu") else []
        if len(cpu) >= 2 and cpu[-1] > cpu[0]:
            out.update(cpu_s=round(cpu[-1] - cpu[0], 2), inner_steps_per_cpu_s=round(steps / (cpu[-1] - cpu[0]), 3))
    return out


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def run_section(name: str, args, workdir: Path, peers: int, rounds: int, bootstrap: bool) -> dict:
    """Start ``peers`` peers (joined to a bootstrap if ``bootstrap``) with --max-rounds ``rounds``, wait for them
    to exit on their own (or the timeout), and measure."""
    started = time.monotonic()
    deadline = started + run_timeout(args, rounds)
    load_start = load()
    progress(f"{name}: {peers} peer(s){' + bootstrap' if bootstrap else ', isolated'}, {rounds} rounds")
    with Harness(workdir, args.config, args.overrides) as h:
        if bootstrap:
            h.start_bootstrap()
        procs = [
            h.start_peer(f"{name}{i + 1}" if peers > 1 or bootstrap else name, max_rounds=rounds) for i in range(peers)
        ]
        timed_out = not _wait_exit(procs, deadline)
        if timed_out:
            progress(f"{name}: timed out at round {h.swarm_round()}")
        h.stop()
        walls = round_walls(procs, range(2, rounds + 1))
        per_peer = {p.name: peer_pace(p) for p in procs}
        sizes = [e.get("group_size", 0) for p in procs for _t, e in p.round_events()]
        result = {
            "peers": peers,
            "rounds_target": rounds,
            "rounds_committed": h.swarm_round(),
            "timed_out": timed_out,
            "per_peer": per_peer,
            "median_round_wall_s": stats(walls.values())["median"],
            "round_wall_s_by_round": {r: round(w, 2) for r, w in walls.items()},
            "mean_group_size": round(statistics.fmean(sizes), 3) if sizes else None,
            "killed_by_harness": h.killed_at_exit,
            "log_warnings": log_excerpts(p.log_path for p in h.all_processes()),
            "load_avg_start": load_start,
            "load_avg_end": load(),
            "wall_s": round(time.monotonic() - started, 1),
        }
        if not all(p.round_events() for p in procs):
            result["stderr_tails"] = {p.name: p.stderr_tail(15) for p in procs if not p.round_events()}
        return result


def _wait_exit(procs, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if all(p.proc.poll() is not None for p in procs):
            return True
        time.sleep(0.2)
    return False


def run_kill(args, workdir: Path) -> dict:
    k, rounds, n = args.kill_after, args.kill_rounds, args.kill_peers
    started = time.monotonic()
    deadline = started + run_timeout(args, rounds)
    load_start = load()
    progress(f"kill: {n} peers + bootstrap, {rounds} rounds, SIGKILL of one after round {k}")
    with Harness(workdir, args.config, args.overrides) as h:
        h.start_bootstrap()
        procs = [h.start_peer(f"kill{i + 1}", max_rounds=rounds) for i in range(n)]
        while time.monotonic() < deadline and not all(p.max_round() >= k for p in procs):
            if any(p.proc.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        if not all(p.max_round() >= k for p in procs):
            progress("kill: not every peer reached the kill round")
            h.stop()
            return {
                "error": f"not every peer committed round {k}",
                "rounds": {p.name: p.max_round() for p in procs},
                "stderr_tails": {p.name: p.stderr_tail(15) for p in procs},
            }
        victim = random.Random(args.seed).choice(procs)
        survivors = [p for p in procs if p is not victim]
        before = victim.snapshot()
        t_kill = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)  # the main process only, as the OOM killer does
        round_at_kill = h.swarm_round()
        progress(f"kill: round {round_at_kill}: SIGKILL -> {victim.name} (pid {victim.pid})")
        try:
            code = victim.proc.wait(30)
        except Exception:
            code = None
        exit_s = time.monotonic() - t_kill
        time.sleep(max(0.0, args.left_after_s - exit_s))
        left = [{"pid": pid, "comm": comm} for pid, (_s, comm) in alive(victim.seen).items()]
        timed_out = not _wait_exit(survivors, deadline)
        h.stop()
        undisturbed = round_walls(procs, range(2, k + 1))
        t_surv = last_round_times(survivors)
        after = {r: t_surv[r] - t_surv[r - 1] for r in range(k + 1, rounds + 1) if r in t_surv and r - 1 in t_surv}
        base = stats(undisturbed.values())["median"]
        next_wall = after.get(k + 1)
        return {
            "peers": n,
            "rounds_target": rounds,
            "kill_after_round": k,
            "swarm_round_at_kill": round_at_kill,
            "victim": victim.name,
            "victim_exit_code": code,
            "victim_exit_s": round(exit_s, 2),
            "victim_descendants_before": [{"pid": pid, "comm": comm} for pid, (_s, comm) in sorted(before.items())],
            "victim_left_behind_after_s": args.left_after_s,
            "victim_left_behind": left,
            "timed_out": timed_out,
            "survivors": {p.name: peer_pace(p) for p in survivors},
            "undisturbed_round_wall_s_by_round": {r: round(w, 2) for r, w in undisturbed.items()},
            "undisturbed_median_round_wall_s": base,
            "survivors_round_wall_s_by_round": {r: round(w, 2) for r, w in after.items()},
            "next_round_wall_s": round(next_wall, 2) if next_wall is not None else None,
            "next_round_ratio": ratio(next_wall, base),
            "later_rounds_median_wall_s": stats(w for r, w in after.items() if r > k + 1)["median"],
            "group_sizes_by_round": {
                r: sorted(e["group_size"] for p in procs for _t, e in p.round_events() if e["round"] == r)
                for r in range(1, rounds + 1)
            },
            "killed_by_harness": h.killed_at_exit,
            "log_warnings": log_excerpts(p.log_path for p in h.all_processes()),
            "load_avg_start": load_start,
            "load_avg_end": load(),
            "wall_s": round(time.monotonic() - started, 1),
        }


def efficiency(p: dict) -> float | None:
    """inner_steps_per_s / inner_phase_steps_per_s: the share of a peer's time between its first and last round
    events that its inner steps would take at its own logged inner-phase rate (1 = no round overhead)."""
    return ratio(p.get("inner_steps_per_s"), p.get("inner_phase_steps_per_s"))


def compare(solo: dict, swarm: dict) -> dict:
    one = solo["per_peer"][next(iter(solo["per_peer"]))]
    base = one["inner_steps_per_s"]
    ratios = {name: ratio(p["inner_steps_per_s"], base) for name, p in swarm["per_peer"].items()}
    good = [r for r in ratios.values() if r is not None]
    mean = round(statistics.fmean(good), 3) if good and len(good) == len(ratios) else None
    eff = {name: efficiency(p) for name, p in swarm["per_peer"].items()}
    eff_ok = [e for e in eff.values() if e is not None]
    return {
        "solo_inner_steps_per_s": base,
        "swarm_inner_steps_per_s": {n: p["inner_steps_per_s"] for n, p in swarm["per_peer"].items()},
        "ratio_vs_solo": ratios,
        "mean_ratio_vs_solo": mean,
        "median_round_wall_ratio_swarm_vs_solo": ratio(swarm["median_round_wall_s"], solo["median_round_wall_s"]),
        "solo_efficiency": efficiency(one),
        "swarm_efficiency": eff,
        "efficiency_ratio_vs_solo": ratio(statistics.fmean(eff_ok), efficiency(one)) if eff_ok else None,
        "cpu_ratio_vs_solo": ratio(
            _mean([p.get("inner_steps_per_cpu_s") for p in swarm["per_peer"].values()]),
            one.get("inner_steps_per_cpu_s"),
        ),
        "load_avg_1m": {"solo": solo["load_avg_start"][0], "swarm": swarm["load_avg_start"][0]},
    }


def _mean(values) -> float | None:
    values = list(values)
    return statistics.fmean(values) if values and None not in values else None


def summarize_pairs(pairs: list[dict]) -> dict:
    """The median over solo/swarm pairs of each pair's mean ratio (and efficiency ratio)."""
    means = [p["comparison"]["mean_ratio_vs_solo"] for p in pairs]
    effs = [p["comparison"]["efficiency_ratio_vs_solo"] for p in pairs]
    cpus = [p["comparison"].get("cpu_ratio_vs_solo") for p in pairs]
    return {
        "pairs": len(pairs),
        "mean_ratio_vs_solo_by_pair": means,
        "efficiency_ratio_vs_solo_by_pair": effs,
        "mean_ratio_vs_solo": round(statistics.median(means), 3) if None not in means else None,
        "efficiency_ratio_vs_solo": round(statistics.median(effs), 3) if effs and None not in effs else None,
        "cpu_ratio_vs_solo_by_pair": cpus,
        "cpu_ratio_vs_solo": round(statistics.median(cpus), 3) if cpus and None not in cpus else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_exit()
    started = time.monotonic()
    result: dict = {"benchmark": "pace", "config": args.config.name, "overrides": args.overrides}
    with bench_workdir(args.workdir, args.keep, "pace") as workdir:
        pairs = []
        for i in range(0 if args.skip_solo else args.repeats):
            sfx = f".{i}" if args.repeats > 1 else ""
            pair: dict = {}
            for which in ("solo", "swarm") if i % 2 == 0 else ("swarm", "solo"):  # ABBA: a drifting load evens out
                if which == "solo":
                    pair["solo"] = run_section("solo", args, workdir / f"solo{sfx}", 1, args.max_rounds, False)
                else:
                    n = args.swarm_peers
                    pair["swarm"] = run_section("swarm", args, workdir / f"swarm{sfx}", n, args.max_rounds, True)
            pair["comparison"] = compare(pair["solo"], pair["swarm"])
            pairs.append({"order": "solo,swarm" if i % 2 == 0 else "swarm,solo", **pair})
        if pairs:
            result.update(pairs=pairs, comparison=summarize_pairs(pairs))
        if args.sigkill_one:
            result["kill"] = run_kill(args, workdir / "kill")
    targets = {}
    if "comparison" in result:
        mean = result["comparison"]["mean_ratio_vs_solo"]
        targets["swarm_steps_per_s_ge_0.9x_solo"] = mean is not None and mean >= 0.9
    if "kill" in result:
        r = result["kill"].get("next_round_ratio")
        targets["next_round_after_sigkill_le_1.5x"] = r is not None and r <= 1.5
    result.update(
        targets=targets,
        workdir=str(workdir) if (args.keep or args.workdir) else None,
        cpus=os.cpu_count(),
        wall_s=round(time.monotonic() - started, 1),
    )
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
