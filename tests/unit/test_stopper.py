"""The stop flag of peer run / bootstrap: a watched process that dies stops the command as a failure, unless the
command was asked to stop (a signal) or is shutting that process down itself (unwatch)."""

import signal
import subprocess
import sys
import time

import pytest

from p2pmodel.core.stopper import Stopper


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.mark.swarm
@pytest.mark.timeout(30)
def test_a_watched_process_that_dies_stops_as_a_failure():
    stop, proc = Stopper(), _sleeper()
    try:
        stop.watch({"p2pd": proc.pid, "nothing": None})
        assert not stop.wait(1.0)  # alive: no stop
        proc.kill()
        proc.wait(10)
        assert stop.wait(5.0)
        assert stop.failure() == f"p2pd (pid {proc.pid}) exited"
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.swarm
@pytest.mark.timeout(30)
def test_no_failure_after_unwatch_or_a_signal():
    stop, proc = Stopper(deadline_s=60), _sleeper()
    try:
        stop.watch({"the DHT process": proc.pid})
        stop.unwatch()  # about to shut it down on purpose
        proc.kill()
        proc.wait(10)
        time.sleep(1.5)  # three watch periods
        assert not stop.is_set() and stop.failure() is None
        stop.on_signal(signal.SIGTERM)
        assert stop.is_set() and stop.signal_name == "SIGTERM" and stop.failure() is None
        assert stop.overrun is not None and stop.overrun.is_alive()  # the deadline runs from the first signal
    finally:
        if stop.overrun is not None:
            stop.overrun.cancel()  # it would end this test process
        proc.kill()
        proc.wait(10)
