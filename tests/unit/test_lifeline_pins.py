"""Pins of the hivemind internals that a peer's start and stop rely on (core/lifeline.py, swarm/node.py,
sync/averager.py), so that a hivemind upgrade that changes one fails here, loudly, instead of peers that ignore
Ctrl-C or leave p2pd running. Plus the lifeline itself: a SIGKILLed parent takes its children and theirs along."""

import inspect
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import hivemind
import pytest
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.p2p import P2P

from p2pmodel.core.lifeline import alive
from p2pmodel.swarm.node import daemon_pid, start_dht, stop_dht
from p2pmodel.sync import DeterministicAverager


def _stat(pid: int) -> tuple[str, int]:
    """(command name, parent pid) from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.index("(") + 1 : stat.rindex(")")], int(stat[stat.rindex(")") + 2 :].split()[1])


def _signal_masks(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v, 16) for k, v in (line.split(":\t") for line in f) if k in ("SigIgn", "SigCgt")}


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def test_hivemind_internals_we_depend_on():
    # DHT and averager are multiprocessing processes started with start(), the DHT always forked (it inherits our
    # signal handlers): our start()/run() overrides record the parent and arm the lifeline in the child
    assert issubclass(hivemind.DHT, mp.context.ForkProcess) and issubclass(DecentralizedAverager, mp.Process)
    assert "self.start()" in inspect.getsource(hivemind.DHT.run_in_background)
    # the averager ignores SIGINT in the *calling* process before it forks (DeterministicAverager restores it)
    started = inspect.getsource(DecentralizedAverager.run_in_background)
    assert "signal.signal(signal.SIGINT, signal.SIG_IGN)" in started and "self.start()" in started
    # the averager process runs its loop in a thread: run() itself stays in the main thread (signals work there)
    assert "threading.Thread(target=self._run_internal" in inspect.getsource(DecentralizedAverager.run)
    # p2pd is a child of the process that creates the P2P (the DHT's), kept as P2P._child
    assert "self._child = await asyncio.subprocess.create_subprocess_exec" in inspect.getsource(P2P.create)
    # the averager's in-process shutdown coroutine we wrap
    assert list(inspect.signature(DecentralizedAverager._shutdown).parameters) == ["self", "timeout"]


@pytest.mark.swarm
@pytest.mark.timeout(90)
def test_dht_and_averager_processes_are_armed_and_sigterm_takes_p2pd_along():
    sigint_before = signal.getsignal(signal.SIGINT)
    dht = start_dht(None, [], ["/ip4/127.0.0.1/tcp/0"], wait_timeout_s=3)
    averager = None
    try:
        averager = DeterministicAverager([torch.zeros(8)], dht, prefix="lifeline_pin", min_matchmaking_time=1.0)
        assert signal.getsignal(signal.SIGINT) is sigint_before  # Ctrl-C still reaches this process's handler
        p2pd = daemon_pid(dht)  # pins DHTNode.p2p and P2P._child
        assert _stat(p2pd) == ("p2pd", dht.pid)
        for pid in (dht.pid, averager.pid):
            masks = _signal_masks(pid)
            assert masks["SigIgn"] & _bit(signal.SIGINT), pid  # a Ctrl-C to the group is ours to handle
            assert masks["SigCgt"] & _bit(signal.SIGTERM), pid  # lifeline's handler (ends its children first)
        os.kill(dht.pid, signal.SIGTERM)  # what hivemind's terminate() sends: p2pd must not outlive it
        assert _wait_gone([dht.pid, p2pd], 10) == []
    finally:
        if averager is not None:
            averager.shutdown()
        stop_dht(dht)
    assert not averager.is_alive()


CHILD = textwrap.dedent(
    """
    import multiprocessing as mp, os, subprocess, sys, time
    from p2pmodel.core.lifeline import arm_child

    def child(parent):
        arm_child(parent)
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(os.getpid(), grandchild.pid, flush=True)
        time.sleep(120)

    if __name__ == "__main__":
        mp.Process(target=child, args=(os.getpid(),), daemon=True).start()
        time.sleep(120)
    """
)


@pytest.mark.swarm
@pytest.mark.timeout(60)
def test_sigkill_of_the_parent_ends_children_and_grandchildren(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(CHILD)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    pids: list[int] = []
    try:
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        parent.kill()
        parent.wait(10)
        assert _wait_gone(pids, 5) == []
    finally:
        for pid in [parent.pid, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.wait(10)
