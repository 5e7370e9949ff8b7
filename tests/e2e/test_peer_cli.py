"""`p2pmodel peer run` as a real process: val loss falls round over round, SIGKILL mid-round resumes from the
last committed round with the same digest, SIGTERM stops cleanly, and bad configs / data exit 2 with one line."""

import importlib.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.toml")
FAST = ["--set", "eval.batches=2", "--set", "data.max_corpus_bytes=2000000"]
SUMMARY_KEYS = {"peer_id", "run_id", "round", "val_loss", "digest", "bytes_sent", "bytes_received"}


def p2pmodel_cmd() -> list[str]:
    if importlib.util.find_spec("p2pmodel.cli.__main__") is not None:
        return [sys.executable, "-m", "p2pmodel.cli"]
    exe = Path(sys.executable).parent / "p2pmodel"
    assert exe.exists(), f"console script not found next to {sys.executable}"
    return [str(exe)]


class Peer:
    """A `p2pmodel peer run` process in its own session; stdout JSON lines arrive on a queue."""

    def __init__(self, tmp_path: Path, data_dir: Path, *args: str, name: str = "peer"):
        self.stderr_path = tmp_path / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*p2pmodel_cmd(), "peer", "run", "--config", TINY, "--data-dir", str(data_dir), "--json", *FAST, *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            start_new_session=True,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_event(self, deadline: float) -> dict | None:
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no output before the deadline; stderr:\n{self.stderr()}") from None
            if line is None:
                return None
            line = line.strip()
            if line.startswith("{"):
                event = json.loads(line)
                self.events.append(event)
                return event

    def wait_round(self, round_: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(deadline)
            assert event is not None, f"peer exited ({self.proc.poll()}) before round {round_}:\n{self.stderr()}"
            if event.get("event") == "round" and event["round"] >= round_:
                return event

    def finish(self, timeout: float) -> tuple[int, list[dict]]:
        deadline = time.monotonic() + timeout
        while self.next_event(deadline) is not None:
            pass
        rc = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return rc, self.events

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._stderr.close()


def run_to_end(tmp_path, data_dir, *args, timeout=120, name="peer") -> tuple[int, list[dict], str]:
    peer = Peer(tmp_path, data_dir, *args, name=name)
    try:
        rc, events = peer.finish(timeout)
        return rc, events, peer.stderr()
    finally:
        peer.stop()


def split(events: list[dict]) -> tuple[list[dict], dict]:
    assert events and events[-1]["event"] == "summary", events
    rounds = [e for e in events[:-1] if e.get("event") == "round"]
    return rounds, events[-1]


@pytest.mark.timeout(150)
def test_three_rounds_lower_val_loss(tmp_path):
    rc, events, err = run_to_end(tmp_path, tmp_path / "d", "--max-rounds", "3", "--set", "train.inner_steps=20")
    assert rc == 0, err
    rounds, summary = split(events)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    losses = [r["val_loss"] for r in rounds]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[0] < 4.0  # well below ln(256) = 5.5 after one round
    assert SUMMARY_KEYS <= set(summary)
    assert summary["round"] == 3 and summary["digest"] == rounds[-1]["digest"]
    assert summary["val_loss"] == losses[-1]
    assert len({r["digest"] for r in rounds}) == 3 and len(summary["digest"]) == 64
    assert summary["bytes_sent"] >= 0 and summary["bytes_received"] >= 0
    assert "Traceback" not in err


@pytest.mark.timeout(240)
def test_sigkill_mid_round_resumes_from_last_commit(tmp_path):
    data_dir = tmp_path / "d"
    args = ["--set", "train.inner_steps=15"]
    peer = Peer(tmp_path, data_dir, *args, "--max-rounds", "50", name="killed")
    try:
        first = peer.wait_round(1, 120)
        t1 = time.monotonic()
        second = peer.wait_round(2, 60)
        round_s = time.monotonic() - t1
        assert second["round"] == 2, "round 2 must be the last committed round before the kill"
        time.sleep(max(0.3, round_s / 2))  # mid round 3
        assert peer.proc.poll() is None
        os.killpg(peer.proc.pid, signal.SIGKILL)  # the process group we started, never by name
        assert peer.proc.wait(timeout=10) == -signal.SIGKILL
        killed_at = second
    finally:
        peer.stop()
    committed = [e for e in peer.events if e.get("event") == "round"]
    if committed[-1]["round"] != 2:  # the machine was slow enough that round 3 committed before the kill
        pytest.fail(f"round 3 committed before the kill (round took {round_s:.1f}s); events: {committed}")
    assert first["digest"] != killed_at["digest"]

    rc, events, err = run_to_end(tmp_path, data_dir, *args, "--max-rounds", "2", name="resume2")
    assert rc == 0, err
    rounds, summary = split(events)
    assert rounds == []  # nothing to do: round 2 is already committed
    assert summary["round"] == 2 and summary["digest"] == killed_at["digest"]
    assert summary["run_id"] == killed_at["run_id"] and summary["peer_id"] == killed_at["peer_id"]

    rc, events, err = run_to_end(tmp_path, data_dir, *args, "--max-rounds", "3", name="resume3")
    assert rc == 0, err
    rounds, summary = split(events)
    assert [r["round"] for r in rounds] == [3] and summary["round"] == 3
    assert summary["digest"] != killed_at["digest"]
    assert summary["samples"] == 3 * 15 * 8 and summary["inner_steps"] == 45  # no step counted twice


@pytest.mark.timeout(150)
def test_sigterm_stops_cleanly(tmp_path):
    data_dir = tmp_path / "d"
    peer = Peer(tmp_path, data_dir, "--set", "train.inner_steps=15", "--max-rounds", "50", name="term")
    try:
        committed = peer.wait_round(1, 120)
        time.sleep(0.5)
        peer.proc.send_signal(signal.SIGTERM)
        rc, events = peer.finish(60)
        err = peer.stderr()
    finally:
        peer.stop()
    assert rc == 0, err
    rounds, summary = split(events)
    last = rounds[-1] if rounds else committed
    assert summary["round"] == last["round"] >= 1 and summary["digest"] == last["digest"]
    head = json.loads((data_dir / "HEAD.json").read_text())
    assert head["round"] == summary["round"]
    record = json.loads((data_dir / "rounds" / f"{head['round']}.json").read_text())
    assert record["digest"] == summary["digest"]
    assert (data_dir / "objects" / f"{summary['digest']}.safetensors").exists()
    assert "Traceback" not in err


BAD = {
    "unknown_field": ["--set", "train.learning_rate=0.1"],
    "bad_value": ["--set", "train.lr=-1"],
    "missing_file": ["--config", "/nonexistent/p2pmodel.toml"],
    "bad_data_path": ["--set", "data.source=text", "--set", 'data.paths=["/nonexistent/*.txt"]'],
    "data_dir_is_a_file": [],  # the test creates a file there
    "busy_status_port": ["--status-port"],  # + the port of a socket the test holds
}


@pytest.mark.timeout(120)
def test_bad_config_and_data_exit_2_with_one_line(tmp_path):
    procs = {}
    (tmp_path / "data_dir_is_a_file").write_text("not a directory")
    busy = socket.create_server(("127.0.0.1", 0))
    extras = {**BAD, "busy_status_port": ["--status-port", str(busy.getsockname()[1])]}
    for name, extra in extras.items():  # all at once: each pays the import time
        cmd = [*p2pmodel_cmd(), "peer", "run", "--config", TINY, "--data-dir", str(tmp_path / name), *extra]
        procs[name] = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, text=True, start_new_session=True
        )
    errors = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=100)
            errors[name] = err
            assert proc.returncode == 2, (name, proc.returncode, err)
            lines = err.strip("\n").splitlines()
            assert len(lines) == 1 and lines[0].startswith("error:") and len(lines[0]) > len("error: "), (name, err)
            assert "Traceback" not in err and "Traceback" not in out
        assert "train.learning_rate" in errors["unknown_field"] and "train.lr" in errors["bad_value"]
        assert "/nonexistent/p2pmodel.toml" in errors["missing_file"]
        assert "/nonexistent/*.txt" in errors["bad_data_path"]
        assert "--data-dir" in errors["data_dir_is_a_file"] and "in use" in errors["busy_status_port"]
    finally:
        busy.close()
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.timeout(120)
def test_failure_after_the_dht_started_exits_and_leaves_nothing_running(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "accepted_slots.json").write_text("{damaged")  # read once the swarm link is up
    proc = subprocess.Popen(
        [*p2pmodel_cmd(), "peer", "run", "--config", TINY, "--data-dir", str(data_dir), *FAST],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=90)  # it used to hang here, deaf to SIGTERM, with its DHT running
        assert proc.returncode == 1, err
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and "JSONDecodeError" in lines[0] and "Traceback" not in err, err
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the DHT process and p2pd are gone too (same process group)
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("processes of the failed peer are still running")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
