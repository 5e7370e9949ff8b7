"""Shared helpers of benchmarks/churn.py and benchmarks/pace.py: a LocalSwarm whose peers timestamp every JSON
event as it arrives, keep one log per incarnation (a restarted peer does not overwrite its previous log), and
are watched for descendant processes (walking /proc/*/stat) so that processes left behind after a signal or a
stop can be counted, and then killed by PID at the end.

Nothing here changes how a peer runs: argv is LocalSwarm's (``peer run --config --json --data-dir <workdir>/<name>
--set swarm.host_maddrs=127.0.0.1``, ``--initial-peers <bootstrap>`` when there is one), so a restarted peer
keeps its data dir and identity (``<data-dir>/identity.key``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from p2pmodel.node.launch import LocalSwarm, PeerProcess, cli_argv

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"

# A round of a few seconds on 2 shared cores that still trains and evaluates (fixed here, not taken from
# p2pmodel.testing.swarm.FAST, so that a change of the test overrides does not change what the benchmarks measure).
FAST_ROUNDS = [
    "train.inner_steps=20",
    "eval.batches=2",
    "data.max_corpus_bytes=2000000",
    "sync.matchmaking_time_s=2.0",
    "sync.request_timeout_s=1.5",
    "sync.chunk_timeout_s=1.5",
]

TAGGED = re.compile(r"tagged (v\d+\.\d+\.\d+) = ([0-9a-f]+) \(round (\d+)")


def progress(msg: str) -> None:
    """A progress line on stderr (stdout is for the JSON result only)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def bench_workdir(workdir: Path | None, keep: bool, prefix: str):
    """The benchmark's working directory: ``workdir`` as given (always kept), or a temp dir removed at the end
    unless ``keep``."""
    path = workdir or Path(tempfile.mkdtemp(prefix=f"p2pmodel-{prefix}-"))
    path.mkdir(parents=True, exist_ok=True)
    progress(f"workdir {path}")
    try:
        yield path
    finally:
        if not keep and workdir is None:
            shutil.rmtree(path, ignore_errors=True)


# --- processes ------------------------------------------------------------------------------------------------


def proc_table() -> dict[int, tuple[int, int, str, str, int]]:
    """{pid: (ppid, starttime, state, comm, session id)} of every process, from /proc/*/stat."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                raw = f.read().decode(errors="replace")
        except OSError:
            continue
        lpar, rpar = raw.find("("), raw.rfind(")")
        fields = raw[rpar + 2 :].split()
        # fields[0] = state (field 3), fields[1] = ppid (4), fields[3] = session (6), fields[19] = starttime (22)
        try:
            out[int(d)] = (int(fields[1]), int(fields[19]), fields[0], raw[lpar + 1 : rpar], int(fields[3]))
        except (IndexError, ValueError):
            continue
    return out


def descendants(pid: int, table: dict | None = None) -> dict[int, tuple[int, str]]:
    """{pid: (starttime, comm)} of every live descendant of ``pid`` (children, grandchildren, ...), plus any other
    process of the session ``pid`` leads (peers start with start_new_session, so a child that was reparented
    after its parent died is still found)."""
    table = proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for p, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(p)
    found, todo = set(), list(children.get(pid, []))
    if pid in table:  # the session leader's start time: a later session with a reused PID is not ours
        todo += [p for p, v in table.items() if v[4] == pid and p != pid and v[1] >= table[pid][1]]
    out = {}
    while todo:
        p = todo.pop()
        if p in found or p not in table:
            continue
        found.add(p)
        _ppid, start, state, comm, _sid = table[p]
        if state != "Z":
            out[p] = (start, comm)
        todo.extend(children.get(p, []))
    return out


def alive(pids: dict[int, tuple[int, str]]) -> dict[int, tuple[int, str]]:
    """Those of ``pids`` that still run: same PID *and* same start time (a reused PID is another process), not a
    zombie."""
    table = proc_table()
    return {p: v for p, v in pids.items() if p in table and table[p][1] == v[0] and table[p][2] != "Z"}


_CLK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid``, its reaped children and its live descendants."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                raw = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        # utime, stime, cutime, cstime = fields 14-17 (indexes 11-14 here)
        total += sum(int(x) for x in fields[11:15]) / _CLK
    return total


def kill_pids(pids: dict[int, tuple[int, str]]) -> list[int]:
    """SIGKILL each still-running PID of ``pids`` (checked by start time first); the PIDs killed."""
    killed = []
    for p in alive(pids):
        try:
            os.kill(p, signal.SIGKILL)
            killed.append(p)
        except ProcessLookupError:
            pass
    return killed


# --- peers ----------------------------------------------------------------------------------------------------


class TimedPeer(PeerProcess):
    """A PeerProcess that stamps each stdout JSON event with time.monotonic() on arrival (``times[i]`` belongs to
    ``events[i]``) and remembers every descendant PID it was seen with."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, incarnation: int = 0, env: dict[str, str] | None = None
    ):
        self.times: list[float] = []
        self.cpu: list[float] = []  # CPU seconds of the process tree when each event arrived (tree_cpu_s)
        self.incarnation = incarnation
        self.seen: dict[int, tuple[int, str]] = {}
        self.started_at = time.monotonic()
        super().__init__(name, argv, log_path, env)

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            t = time.monotonic()
            self.cpu.append(tree_cpu_s(self.proc.pid) if ev.get("event") == "round" else 0.0)
            self.times.append(t)  # cpu and time first: len(times) >= len(events) for readers
            self.events.append(ev)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def round_times(self) -> dict[int, float]:
        """{round: arrival time of this process's first event for that round}."""
        out: dict[int, float] = {}
        for t, e in zip(list(self.times), list(self.events), strict=False):
            if e.get("event") == "round":
                out.setdefault(int(e["round"]), t)
        return out

    def round_events(self) -> list[tuple[float, dict]]:
        return [(t, e) for t, e in zip(list(self.times), list(self.events), strict=False) if e.get("event") == "round"]

    def round_cpu(self) -> list[tuple[float, dict]]:
        """[(CPU seconds of the process tree, event)] for each round event."""
        return [(c, e) for c, e in zip(list(self.cpu), list(self.events), strict=False) if e.get("event") == "round"]

    def summary(self) -> dict | None:
        return next((e for e in reversed(list(self.events)) if e.get("event") == "summary"), None)

    def max_round(self) -> int:
        return max((int(e["round"]) for e in list(self.events) if e.get("event") == "round"), default=0)

    def snapshot(self) -> dict[int, tuple[int, str]]:
        """Record (and return) the current descendants of the main PID."""
        if not self.running():
            return {}
        now = descendants(self.pid)
        self.seen.update(now)
        return now


class Harness(LocalSwarm):
    """LocalSwarm with TimedPeer processes, one log per incarnation (``<name>.<k>.log``), every incarnation kept
    (``incarnations``), a watcher thread that snapshots descendants every ``watch_s``, and a stop() that also
    kills (by PID) whatever descendants are still alive afterwards and reports them."""

    def __init__(self, workdir, config, overrides=(), watch_s: float = 1.0):
        super().__init__(workdir, config, overrides)
        self.incarnations: list[TimedPeer] = []
        self.t0, self.t0_wall = time.monotonic(), time.time()
        self._stop_watch = threading.Event()
        self._watcher = threading.Thread(target=self._watch, args=(watch_s,), daemon=True)
        self._watcher.start()
        self.killed_at_exit: list[dict] = []
        self._stopped = False
        atexit.register(self.stop)

    def _watch(self, every: float) -> None:
        while not self._stop_watch.wait(every):
            for p in self.all_processes():
                try:
                    p.snapshot()
                except Exception:  # a process that vanished mid-walk
                    pass

    def all_processes(self) -> list[TimedPeer]:
        return list(self.incarnations) + ([self.bootstrap] if isinstance(self.bootstrap, TimedPeer) else [])

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> TimedPeer:
        if name == "bootstrap":
            return TimedPeer(name, argv, self.workdir / "bootstrap.log", env=env)
        k = sum(1 for p in self.incarnations if p.name == name)
        p = TimedPeer(name, argv, self.workdir / f"{name}.{k}.log", incarnation=k, env=env)
        self.incarnations.append(p)  # LocalSwarm.start_peer keeps the current incarnation in self.peers
        return p

    def now(self) -> float:
        """Seconds since the harness started."""
        return time.monotonic() - self.t0

    def to_wall(self, t_mono: float) -> float:
        return self.t0_wall + (t_mono - self.t0)

    def round_at(self, unix_time: float) -> int:
        """The highest round any peer process had emitted by ``unix_time`` (0 before the first)."""
        t = self.t0 + (unix_time - self.t0_wall)
        return max((int(e["round"]) for p in self.incarnations for tt, e in p.round_events() if tt <= t), default=0)

    def live(self) -> list[TimedPeer]:
        return [p for p in self.peers.values() if p.running()]

    def swarm_round(self) -> int:
        """The highest round any peer process committed so far."""
        return max((p.max_round() for p in self.incarnations), default=0)

    def stop_peers(self, grace_s: float = 30.0) -> dict:
        """SIGTERM every running peer at once (to its PID: as a service manager stops it), wait up to ``grace_s``,
        SIGKILL the group of any that did not exit. Returns {name: {exit_code, exit_s, escalated}}."""
        running = [p for p in self.incarnations if p.running()]
        for p in running:
            p.snapshot()
        sent = time.monotonic()
        for p in running:
            try:
                p.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        out, pending = {}, list(running)
        while pending and time.monotonic() < sent + grace_s:  # each exit timed on its own (polled every 50 ms)
            for p in list(pending):
                if p.proc.poll() is not None:
                    pending.remove(p)
                    out[f"{p.name}.{p.incarnation}"] = {
                        "exit_code": p.proc.returncode,
                        "exit_s": round(time.monotonic() - sent, 2),
                        "escalated": False,
                    }
            time.sleep(0.05)
        for p in pending:
            _killpg(p.pid, signal.SIGKILL)
            try:
                p.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            out[f"{p.name}.{p.incarnation}"] = {"exit_code": p.proc.returncode, "exit_s": None, "escalated": True}
        return out

    def stop(self) -> None:
        """Stop everything: peers (SIGTERM, then SIGKILL of the group), the bootstrap, then SIGKILL by PID every
        descendant ever seen that still runs 5 s later (recorded in ``killed_at_exit``)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.stop_peers(grace_s=20.0)
        finally:
            for p in self.all_processes():
                try:
                    p.stop(grace_s=10.0)
                except Exception:
                    pass
            self._stop_watch.set()
            deadline = time.monotonic() + 5.0  # descendants that exit on their own shortly after are not killed
            while time.monotonic() < deadline and any(alive(p.seen) for p in self.all_processes()):
                time.sleep(0.2)
            for p in self.all_processes():
                for pid in kill_pids(p.seen):
                    self.killed_at_exit.append(
                        {"process": f"{p.name}.{p.incarnation}", "pid": pid, "comm": p.seen[pid][1]}
                    )


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --- measurements ---------------------------------------------------------------------------------------------


def last_round_times(procs, rounds: range | None = None) -> dict[int, float]:
    """{r: T(r)}: the time the *last* of ``procs`` emitted its round-r event (each process's first event for r)."""
    out: dict[int, float] = {}
    for p in procs:
        for r, t in p.round_times().items():
            if rounds is None or r in rounds:
                out[r] = max(out.get(r, t), t)
    return out


def round_walls(procs, rounds: range | None = None) -> dict[int, float]:
    """{r: T(r) − T(r−1)} for every round r whose round r−1 was also emitted (T from last_round_times)."""
    t = last_round_times(procs)
    return {r: t[r] - t[r - 1] for r in sorted(t) if r - 1 in t and (rounds is None or r in rounds)}


def load() -> list[float]:
    """The 1/5/15-minute load averages: other work on the same cores slows every figure here."""
    return [round(x, 2) for x in os.getloadavg()]


def stats(values) -> dict:
    values = list(values)
    if not values:
        return {"n": 0, "median": None, "max": None, "min": None, "mean": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
        "min": round(min(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


def ratio(a: float | None, b: float | None, nd: int = 3) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, nd)


def digest_table(procs, rounds: range | None = None) -> dict[int, dict[str, str]]:
    """{round: {'<name>.<incarnation>': digest}} over every round event of every process."""
    table: dict[int, dict[str, str]] = {}
    for p in procs:
        for _t, e in p.round_events():
            r = int(e["round"])
            if rounds is None or r in rounds:
                table.setdefault(r, {})[f"{p.name}.{p.incarnation}"] = e["digest"]
    return table


TAGGED_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)(?:[.,]\d+)? .*?" + TAGGED.pattern, re.M)


def tags_from_logs(paths, t0_wall: float) -> dict[str, dict]:
    """{version: {round, digest, first_seen}} from the peers' "HH:MM:SS ... tagged vX = digest (round N" log lines
    (text log format, UTC, whole seconds); ``first_seen`` is the earliest such line across the logs, in unix time,
    rounded up to the next second
    (the day is the harness start's, +1 day for times that read more than an hour before the start)."""
    day = datetime.fromtimestamp(t0_wall, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    out: dict[str, dict] = {}
    for path in paths:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for h, m, s, version, digest, r in TAGGED_LINE.findall(text):
            at = (day + timedelta(hours=int(h), minutes=int(m), seconds=int(s) + 1)).timestamp()  # made by then
            if at < t0_wall - 3600:
                at += 86400
            cur = out.setdefault(version, {"round": int(r), "digest": digest, "first_seen": at})
            cur["first_seen"] = min(cur["first_seen"], at)
    return out


def versions_list(maddr: str, timeout_s: float = 120.0) -> tuple[list[dict] | None, str]:
    """``p2pmodel versions list --json`` as a separate process: (versions, error text)."""
    try:
        res = subprocess.run(
            cli_argv() + ["versions", "list", "--initial-peers", maddr, "--json"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s} s"
    if res.returncode != 0:
        return None, (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])["versions"], ""
    except (ValueError, KeyError, IndexError) as e:
        return None, f"unreadable output: {e}"


def check_heads(data_dirs: dict[str, Path]) -> dict[str, dict]:
    """Load each data dir's committed head as a restarting peer does (Store.head(): HEAD → round record →
    private tensors checked against their sha256 → state re-hashed against its digest)."""
    from p2pmodel.versioning.store import Store

    out = {}
    for name, d in data_dirs.items():
        try:
            head = Store(d).head()
            out[name] = {
                "ok": head is not None,
                "round": head["round"] if head else None,
                "error": None if head else "no HEAD (never committed)",
            }
        except Exception as e:  # the finding: a checkpoint a restart could not load
            out[name] = {"ok": False, "round": None, "error": f"{type(e).__name__}: {e}"[:300]}
    return out


def log_excerpts(paths, patterns=(r"Traceback", r"\bE\b", r"ERROR", r"WARNING", r"\bW\b"), n: int = 8) -> dict:
    """The last ``n`` lines per log that match any pattern (warnings, errors, tracebacks), for the report."""
    rx = re.compile("|".join(f"(?:{p})" for p in patterns))
    out = {}
    for path in paths:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        hits = [ln[:300] for ln in lines if rx.search(ln)]
        if hits:
            out[Path(path).name] = {"matching_lines": len(hits), "last": hits[-n:]}
    return out


def install_signal_exit() -> None:
    """SIGTERM/SIGINT/SIGHUP to the benchmark raise SystemExit, so its finally blocks stop every peer by PID."""

    def _exit(sig, _frame):
        raise SystemExit(128 + sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _exit)
