"""How a long-running command (``peer run``, ``bootstrap``) stops: one flag set by SIGINT/SIGTERM or by a process
it depends on dying (p2pd dies with a Ctrl-C to the whole group); a second signal, or a stop still running
``deadline_s`` after the first signal, ends the process at once with every process it started."""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping

from p2pmodel.core import lifeline

log = logging.getLogger("p2pmodel.stop")
STOP_DEADLINE_S = 12.0  # first signal → process gone; docker stop and the tests allow 15 s
WATCH_S = 0.5


class Stopper:
    """The stop flag of one command, with who set it: a signal (a clean stop, exit 0) or a lost process (exit 1)."""

    def __init__(self, deadline_s: float = STOP_DEADLINE_S):
        self.event = threading.Event()
        self.signal_name: str | None = None  # the first signal received
        self.lost: str | None = None  # the watched process that died, if one did
        self.deadline_s = deadline_s
        self._unwatched = threading.Event()
        self.overrun: threading.Timer | None = None  # armed by the first signal; ends the process at its deadline

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Handle SIGINT and SIGTERM on ``loop`` (an asyncio loop in the main thread), else with signal.signal
        (only the main thread may; elsewhere this does nothing)."""
        if loop is None and threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            if loop is not None:
                loop.add_signal_handler(sig, self.on_signal, sig)
            else:
                signal.signal(sig, lambda signum, _frame: self.on_signal(signum))

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self.event.wait(timeout_s)

    def on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self.signal_name is not None:
            log.warning("second %s: stopping now", name)
            hard_exit(128 + sig)
        self.signal_name = name
        log.info("%s received: stopping (a second one stops at once)", name)
        self.event.set()
        self.overrun = threading.Timer(self.deadline_s, self._overrun)
        self.overrun.daemon = True
        self.overrun.start()

    def _overrun(self) -> None:
        print(
            f"error: not stopped {self.deadline_s:g} s after {self.signal_name}: ended it and its processes"
            " (the last committed round is kept)",
            file=sys.stderr,
        )
        hard_exit(1)

    def watch(self, parts: Mapping[str, int | None]) -> None:
        """Stop when one of ``parts`` ({what: pid}) is no longer running (a thread; ends with the stop)."""
        pids = {what: pid for what, pid in parts.items() if pid}
        threading.Thread(target=self._watch, args=(pids,), name="p2pmodel-watch", daemon=True).start()

    def unwatch(self) -> None:
        """The watched processes are about to be shut down on purpose: their end is no longer a failure."""
        self._unwatched.set()

    def _watch(self, pids: dict[str, int]) -> None:
        while not self.event.wait(WATCH_S) and not self._unwatched.is_set():
            gone = [f"{what} (pid {pid}) exited" for what, pid in pids.items() if not lifeline.alive(pid)]
            if gone and not self._unwatched.is_set():
                self.lost = gone[0]
                self.event.set()

    def failure(self) -> str | None:
        """Why the command stopped when nobody asked it to (a lost process), else None."""
        return self.lost if self.signal_name is None else None


def end_children(grace_s: float = 2.0, terminate: bool = False) -> list[int]:
    """multiprocessing children still running (after their own shutdown had its chance, or at once with
    ``terminate``: SIGTERM first) waited on up to ``grace_s``, then killed with whatever they started. The pids
    that had to be killed."""
    children = multiprocessing.active_children()
    if terminate:
        for child in children:
            child.terminate()
    deadline = time.monotonic() + grace_s
    killed = []
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            killed += lifeline.kill_tree(child.pid)
            child.kill()
            child.join(1)
            killed.append(child.pid)
    return killed


def skip_final_gc() -> None:
    """At interpreter exit, skip the last cyclic GC over torch's, hivemind's and the data's objects: it cost 2-5 of
    the 3-6 s between "stopped" and the process gone on a busy 2-core machine (measured with gc.freeze there:
    0.6-1.5 s). Objects are still freed by reference counting; only cycles are left to the OS."""
    global _final_gc_skipped
    if not _final_gc_skipped:
        atexit.register(gc.freeze)
        _final_gc_skipped = True


_final_gc_skipped = False


def hard_exit(code: int) -> None:
    """End every process this one started (hivemind's DHT and averager, p2pd under them), then exit at once."""
    for child in multiprocessing.active_children():
        lifeline.kill_tree(child.pid)
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
