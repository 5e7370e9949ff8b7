"""How `p2pmodel peer run` and `p2pmodel bootstrap` end, as real processes on 127.0.0.1 (issues 11 and 12).

One swarm serves every case (a bootstrap and one peer per case, each peer its own run so no peer waits on
another), all side by side: Ctrl-C (SIGINT to the process group), SIGTERM to the group, SIGTERM to the main pid
(docker stop), a second Ctrl-C, SIGKILL of the main pid, p2pd SIGKILLed alone; each peer commits a round first
and its descendants (hivemind's DHT and averager processes, p2pd, torch's shm manager) are read from /proc before
the signal. Stopped peers are restarted alone on their data dir and must resume their last committed round.
Also: a second peer on a data dir in use, and a p2p port held by another bootstrap, both refused with exit 2 and
one line; that bootstrap SIGKILLed, the swarm's bootstrap stopped with Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from p2pmodel.node.launch import LOOPBACK, LocalSwarm, PeerProcess, cli_argv
from p2pmodel.testing.swarm import FAST, TINY

pytestmark = [pytest.mark.swarm, pytest.mark.scenario]  # make test-scenarios (CI runs it after make test)

STOP_S = 15.0  # signal → process gone, descendants included
ORPHAN_S = 10.0  # SIGKILL of the main pid → its descendants gone
CASES = ("int", "term_group", "term_pid", "int_twice", "kill", "p2pd_dies")
RESTARTED = ("int", "term_group", "int_twice")  # term_pid: its HEAD is checked (a restart costs ~5 s of CPU)
SMALL = ["data.max_corpus_bytes=300000"]  # half the start-up time of FAST's 2 MB; each peer is its own run anyway


def _table() -> dict[int, tuple[str, int, str]]:
    """{pid: (state, ppid, name)} from /proc (written here, not taken from the code under test)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            rest = stat[stat.rindex(")") + 2 :].split()
            out[int(d)] = (rest[0], int(rest[1]), stat[stat.index("(") + 1 : stat.rindex(")")])
    return out


def _tree(pid: int) -> dict[int, str]:
    """Every living descendant of ``pid``: {pid: command name}."""
    table = _table()
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        for p, (state, ppid, name) in table.items():
            if ppid == parent and state != "Z" and p not in found:
                found[p] = name
                todo.append(p)
    return found


def _running(pids) -> list[int]:
    table = _table()
    return [p for p in pids if p in table and table[p][0] != "Z"]


def _wait_gone(pids, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while _running(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _running(pids)


def _sigint_ignored(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    raise AssertionError("no SigIgn line")


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Case:
    name: str
    proc: PeerProcess | None = None
    committed: dict | None = None  # the round event the signal followed
    tree: dict[int, str] = field(default_factory=dict)
    sigint_ignored: bool | None = None
    exit_s: float | None = None  # first signal → main process gone
    rc: int | None = None
    left: list[int] = field(default_factory=list)  # descendants still running after the deadline
    restart: PeerProcess | None = None
    restart_rc: int | None = None
    lock_probe: subprocess.CompletedProcess | None = None
    tree_gone_s: float | None = None  # signal → every descendant gone
    head: tuple[int, str] | None = None  # (round, digest) committed in its data dir after the stop


def _probe(argv: list[str], cwd: Path, timeout_s: float = 90) -> subprocess.CompletedProcess:
    """Run a command that should exit early; killed (its group) at the deadline."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _peer_argv(data_dir: Path, name: str, extra: list[str]) -> list[str]:
    argv = [*cli_argv(), "peer", "run", "--config", str(TINY), "--json", "--data-dir", str(data_dir)]
    for o in [f"swarm.host_maddrs={LOOPBACK}", *FAST, *SMALL, f"run_name=signals-{name}"]:
        argv += ["--set", o]
    return argv + extra


def _drive(case: Case, work: Path) -> None:
    """Wait for a committed round, read the process tree, send the case's signal, time the exit, then restart the
    peer alone (no bootstrap) on its data dir up to its last committed round."""
    p = case.proc
    case.committed = p.wait_for(lambda e: e.get("event") == "round", 240)
    if case.committed is None:
        return
    case.tree = _tree(p.proc.pid)
    case.sigint_ignored = _sigint_ignored(p.proc.pid)
    if case.name == "kill":  # while it runs: a second peer on its data dir
        case.lock_probe = _probe(_peer_argv(work / "kill", "kill", ["--max-rounds", "1"]), work)
        case.tree = _tree(p.proc.pid)
    sent = time.monotonic()
    if case.name in ("int", "int_twice"):
        p.signal(signal.SIGINT)
        if case.name == "int_twice":
            time.sleep(0.3)
            p.signal(signal.SIGINT)
            sent = time.monotonic()  # "at once" counts from the second one
    elif case.name == "term_group":
        p.signal(signal.SIGTERM)
    elif case.name == "term_pid":
        p.proc.send_signal(signal.SIGTERM)
    elif case.name == "p2pd_dies":  # alone, no signal to the peer: it must not go on training alone
        os.kill(next(pid for pid, name in case.tree.items() if name == "p2pd"), signal.SIGKILL)
    else:
        p.proc.send_signal(signal.SIGKILL)
    limit = 5.0 if case.name == "int_twice" else STOP_S
    try:
        case.rc = p.proc.wait(limit)
        case.exit_s = time.monotonic() - sent
    except subprocess.TimeoutExpired:
        pass
    case.left = _wait_gone(case.tree, max(1.0, sent + (ORPHAN_S if case.name == "kill" else limit) - time.monotonic()))
    if not case.left:
        case.tree_gone_s = time.monotonic() - sent
    case.head = _head(work / case.name)
    if case.name in RESTARTED and case.rc is not None and case.head is not None:
        argv = _peer_argv(work / case.name, case.name, ["--max-rounds", str(case.head[0])])
        case.restart = PeerProcess(f"{case.name}-restart", argv, work / f"{case.name}-restart.log")
        try:
            case.restart_rc = case.restart.proc.wait(120)
        except subprocess.TimeoutExpired:
            pass
        case.restart.stop(grace_s=5)


def _busy_port(work: Path, out: dict) -> None:
    """A second bootstrap holds a port; a peer and a third bootstrap ask for that port (exit 2 before p2pd starts,
    which would share it through SO_REUSEPORT and take some of its connections); then the holder is SIGKILLed
    and its DHT process and p2pd must follow."""
    holder = out["holder"] = PeerProcess(
        "holder", _bootstrap_argv(work, "holder", "/ip4/127.0.0.1/tcp/0"), work / "holder.log"
    )
    ev = holder.wait_for(lambda e: "maddrs" in e, 120)
    if ev is None:
        return
    maddr = ev["maddrs"][0]
    port = out["port"] = int(maddr.split("/")[4])
    held = f"/ip4/127.0.0.1/tcp/{port}"
    argv = {
        "peer": _peer_argv(work / "busy", "busy", ["--set", f'swarm.host_maddrs=["{held}"]'])
        + ["--initial-peers", maddr, "--max-rounds", "1"],
        "bootstrap": _bootstrap_argv(work, "busy", held),
    }
    probes = [threading.Thread(target=lambda k=k: out["busy"].update({k: _probe(argv[k], work)})) for k in argv]
    for t in probes:
        t.start()
    for t in probes:
        t.join(200)
    out["holder_tree"] = _tree(holder.proc.pid)
    sent = time.monotonic()
    holder.proc.send_signal(signal.SIGKILL)
    out["holder_left"] = _wait_gone(out["holder_tree"], ORPHAN_S)
    out["holder_gone_s"] = time.monotonic() - sent


def _bootstrap_argv(work: Path, name: str, listen: str) -> list[str]:
    return [*cli_argv(), "bootstrap", "--json", "--host-maddrs", listen, "--identity", str(work / f"{name}.key")]


@pytest.fixture(scope="module")
def swarm_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("signals")
    cases = {name: Case(name) for name in CASES}
    recorded: set[int] = set()
    out: dict = {"cases": cases, "busy": {}, "holder": None}
    with LocalSwarm(work, TINY, FAST) as swarm:
        try:
            maddr = swarm.start_bootstrap()
            for name, case in cases.items():
                argv = _peer_argv(work / name, name, ["--initial-peers", maddr, "--max-rounds", "1000"])
                case.proc = swarm.peers[name] = PeerProcess(name, argv, work / f"{name}.log")
            threads = [threading.Thread(target=_drive, args=(c, work)) for c in cases.values()]
            threads.append(threading.Thread(target=_busy_port, args=(work, out)))
            for t in threads:
                t.start()
            for t in threads:
                t.join(480)
            for case in cases.values():
                recorded |= set(case.tree)
            recorded |= set(out.get("holder_tree", {}))
            boot = swarm.bootstrap  # last: the bootstrap itself on Ctrl-C
            out["boot_tree"] = _tree(boot.proc.pid)
            recorded |= set(out["boot_tree"])
            sent = time.monotonic()
            boot.signal(signal.SIGINT)
            try:
                out["boot_rc"] = boot.proc.wait(STOP_S)
                out["boot_exit_s"] = time.monotonic() - sent
            except subprocess.TimeoutExpired:
                out["boot_rc"] = None
            out["boot_left"] = _wait_gone(out["boot_tree"], max(1.0, sent + STOP_S - time.monotonic()))
            yield out
        finally:
            for p in [*(c.proc for c in cases.values()), *(c.restart for c in cases.values()), out["holder"]]:
                if p is not None:
                    p.stop(grace_s=1)
            _kill(_running(recorded))  # by pid: whatever a failed case left behind


def _head(data_dir: Path) -> tuple[int, str] | None:
    """(round, digest) of the last committed round in a data dir."""
    import json

    try:
        r = json.loads((data_dir / "HEAD.json").read_text())["round"]
        return r, json.loads((data_dir / "rounds" / f"{r}.json").read_text())["digest"]
    except (OSError, KeyError, ValueError):
        return None


def _check_stopped(case: Case, rc: int | tuple[int, ...] = 0) -> None:
    p = case.proc
    assert case.committed is not None, f"{case.name}: no committed round:\n{p.stderr_tail()}"
    names = sorted(case.tree.values())
    assert "p2pd" in names and len(names) >= 3, f"{case.name}: process tree not seen: {case.tree}"
    wanted = rc if isinstance(rc, tuple) else (rc,)
    assert case.rc in wanted, f"{case.name}: exit {case.rc} (wanted {rc} within {STOP_S} s):\n{p.stderr_tail()}"
    assert case.left == [], f"{case.name}: still running: {[(pid, case.tree[pid]) for pid in case.left]}"
    with pytest.raises(ProcessLookupError):
        os.killpg(p.proc.pid, 0)  # nothing left in its process group either


def _check_resumed(case: Case, head: tuple[int, str] | None) -> None:
    assert head is not None and head[0] >= case.committed["round"], (head, case.committed)
    rp = case.restart
    assert rp is not None and case.restart_rc == 0, f"{case.name} restart: exit {case.restart_rc}"
    events = rp.events
    assert events and events[-1]["event"] == "summary" and rp.rounds() == [], events
    assert (events[-1]["round"], events[-1]["digest"]) == head  # the same round, the same digest
    assert events[-1]["peer_id"] == case.committed["peer_id"] and events[-1]["run_id"] == case.committed["run_id"]


def _check_graceful(case: Case, head) -> None:
    summary = case.proc.events[-1]
    assert summary["event"] == "summary", case.proc.events[-3:]
    last = case.proc.rounds()[-1]
    assert (summary["round"], summary["digest"]) == (last["round"], last["digest"]) == head


@pytest.mark.timeout(600)
def test_sigint_to_the_group_stops_cleanly_and_resumes(swarm_run):
    case = swarm_run["cases"]["int"]
    _check_stopped(case)
    assert case.sigint_ignored is False  # hivemind's averager used to leave SIGINT ignored in the peer
    _check_graceful(case, case.head)
    _check_resumed(case, case.head)
    print(f"SIGINT to the group: exit after {case.exit_s:.1f} s, {len(case.tree)} descendants gone after ", end="")
    print(f"{case.tree_gone_s:.1f} s")


@pytest.mark.timeout(600)
def test_sigterm_to_the_group_stops_cleanly_and_resumes(swarm_run):
    case = swarm_run["cases"]["term_group"]
    _check_stopped(case)
    _check_graceful(case, case.head)
    _check_resumed(case, case.head)
    print(f"SIGTERM to the group: exit after {case.exit_s:.1f} s, descendants gone after {case.tree_gone_s:.1f} s")


@pytest.mark.timeout(600)
def test_sigterm_to_the_main_pid_stops_cleanly(swarm_run):
    case = swarm_run["cases"]["term_pid"]  # docker stop: SIGTERM to PID 1 only
    _check_stopped(case)
    _check_graceful(case, case.head)
    print(f"SIGTERM to the main pid: exit after {case.exit_s:.1f} s, descendants gone after {case.tree_gone_s:.1f} s")


@pytest.mark.timeout(600)
def test_second_sigint_ends_at_once_without_orphans(swarm_run):
    case = swarm_run["cases"]["int_twice"]
    # within 5 s of the second SIGINT: 130 from the handler, or -2 (killed by SIGINT) when the first one had already
    # stopped the peer and the second met the interpreter's exit (CI at e9b70f3: stopped 0.1 s after the first)
    _check_stopped(case, rc=(130, -2))
    _check_resumed(case, case.head)  # the last committed round survives the hard stop
    print(f"second SIGINT: exit after {case.exit_s:.1f} s, descendants gone after {case.tree_gone_s:.1f} s")


@pytest.mark.timeout(600)
def test_sigkill_of_the_main_pid_leaves_no_orphans(swarm_run):
    case = swarm_run["cases"]["kill"]
    assert case.committed is not None and "p2pd" in case.tree.values(), case.tree
    assert case.rc == -signal.SIGKILL
    assert case.left == [], f"alive {ORPHAN_S} s after SIGKILL: {[(pid, case.tree[pid]) for pid in case.left]}"
    print(f"SIGKILL of the main pid: {len(case.tree)} descendants gone after {case.tree_gone_s:.1f} s")


@pytest.mark.timeout(600)
def test_p2pd_dying_alone_stops_the_peer_with_exit_1(swarm_run):
    case = swarm_run["cases"]["p2pd_dies"]
    _check_stopped(case, rc=1)
    errors = [x for x in case.proc.stderr_tail(5).splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "p2pd" in errors[0] and "exited" in errors[0], case.proc.stderr_tail()
    assert case.head is not None and case.head[0] >= case.committed["round"]
    print(f"p2pd SIGKILLed: the peer exits 1 after {case.exit_s:.1f} s")


@pytest.mark.timeout(600)
def test_second_peer_on_a_data_dir_in_use_exits_2(swarm_run):
    case = swarm_run["cases"]["kill"]
    probe = case.lock_probe
    assert probe is not None, "the probe did not run"
    lines = probe.stderr.strip().splitlines()
    assert probe.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), probe.stderr
    assert f"pid {case.proc.proc.pid}" in lines[0] and "--data-dir" in lines[0], lines[0]


@pytest.mark.timeout(600)
def test_busy_port_exits_2_for_peer_and_bootstrap(swarm_run):
    port = swarm_run.get("port")
    assert port is not None and set(swarm_run["busy"]) == {"peer", "bootstrap"}, "the port holder did not start"
    for who, probe in swarm_run["busy"].items():
        lines = probe.stderr.strip().splitlines()
        assert probe.returncode == 2, (who, probe.returncode, probe.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error:"), (who, probe.stderr)
        assert f"port {port} already in use" in lines[0], (who, lines[0])
        assert "maddrs" not in probe.stdout, (who, probe.stdout)


@pytest.mark.timeout(600)
def test_bootstrap_stops_on_sigint_and_leaves_no_orphans_when_sigkilled(swarm_run):
    tree = swarm_run["boot_tree"]
    assert "p2pd" in tree.values(), tree
    assert swarm_run["boot_rc"] == 0, swarm_run["boot_rc"]
    assert swarm_run["boot_left"] == [], swarm_run["boot_left"]
    holder = swarm_run.get("holder_tree", {})
    assert "p2pd" in holder.values(), holder
    assert swarm_run["holder_left"] == [], [(pid, holder[pid]) for pid in swarm_run["holder_left"]]
    print(f"bootstrap SIGINT: exit after {swarm_run['boot_exit_s']:.1f} s; ", end="")
    print(f"SIGKILLed bootstrap: {len(holder)} descendants gone after {swarm_run['holder_gone_s']:.1f} s")
