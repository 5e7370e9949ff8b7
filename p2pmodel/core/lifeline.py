"""Processes that end with the process that started them.

A peer forks hivemind's DHT and averager processes, and the DHT process starts p2pd. Forked children inherit the
parent's signal handlers (an asyncio loop's no-op handler and its wakeup fd: SIGTERM would do nothing) and
nothing ends them when the parent is SIGKILLed. ``arm_child`` fixes both, first thing in the child: SIGINT is
ignored (the parent stops its children itself when a Ctrl-C reaches the whole group), SIGTERM ends the child and
its own children (p2pd), and a watchdog thread ends them all once the parent is gone. A ``getppid`` poll, not
``PR_SET_PDEATHSIG``: that one fires when the *thread* that forked exits, and it cannot reach p2pd (a grandchild
exec'd by hivemind). Linux /proc is read to find descendants; elsewhere only the child itself ends.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)
POLL_S = 0.2  # how often a child checks that its parent is alive


def _table() -> dict[int, tuple[str, int]]:
    """{pid: (state, ppid)} of every process in /proc (empty where there is no /proc)."""
    out: dict[int, tuple[str, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # the command name may hold spaces and parentheses
        out[int(name)] = (fields[0].decode(), int(fields[1]))
    return out


def descendants(pid: int | None = None) -> list[int]:
    """Every living process below ``pid`` (default: this process), parents before their children."""
    table = _table()
    kids: dict[int, list[int]] = {}
    for p, (state, ppid) in table.items():
        if state not in ("Z", "X"):
            kids.setdefault(ppid, []).append(p)
    out, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        for child in kids.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, ended but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def kill_tree(pid: int | None = None, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to every descendant of ``pid`` (default: this process); the pids signalled."""
    pids = descendants(pid)
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return pids


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Wait up to ``timeout_s`` until none of ``pids`` runs; those still running."""
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def arm_child(parent_pid: int) -> None:
    """Call first thing in a forked child (``multiprocessing.Process.run``): see the module docstring."""
    try:
        signal.set_wakeup_fd(-1)  # the parent's loop's fd: our signals must not wake the parent
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave the signals alone
        log.debug("arm_child outside the main thread: signals unchanged")
    if os.getppid() != parent_pid:  # the parent died before we got here
        _end(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="p2pmodel-lifeline", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    _end(1)


def _on_sigterm(signum, frame) -> None:
    kill_tree(sig=signal.SIGTERM)  # p2pd under the DHT process: it must not outlive us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # end "by SIGTERM", as the parent expects from terminate()


def _end(code: int) -> None:
    kill_tree(sig=signal.SIGKILL)
    os._exit(code)
