"""Start a local swarm as separate processes on 127.0.0.1: one bootstrap node and N peers, each in its own
process group, stopped by PID. Used by ``p2pmodel demo`` and by the integration tests."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

LOOPBACK = '["/ip4/127.0.0.1/tcp/0"]'


def cli_argv() -> list[str]:
    return [sys.executable, "-m", "p2pmodel"]


class PeerProcess:
    """One ``p2pmodel peer run --json`` child; its stdout JSON events are collected by a reader thread."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name, self.events, self.log_path = name, [], log_path
        self._log = open(log_path, "wb")
        environ = None if env is None else {**os.environ, **env}
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True, env=environ
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    @property
    def last(self) -> dict | None:
        return self.events[-1] if self.events else None

    def rounds(self) -> list[dict]:
        return [e for e in self.events if e.get("event") == "round"]

    def wait_for(self, predicate, timeout_s: float) -> dict | None:
        """Wait until an event satisfies ``predicate``; None on timeout or if the process ended first."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            while seen < len(self.events):
                if predicate(self.events[seen]):
                    return self.events[seen]
                seen += 1
            if self.proc.poll() is not None and seen >= len(self.events):
                self._reader.join(1)
                if seen >= len(self.events):
                    return None
            time.sleep(0.1)
        return None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # the child's own group: the peer and its p2pd
            except ProcessLookupError:
                pass

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM to the whole group (what a terminal or a service manager sends): the peer stops between steps,
        its hivemind processes and p2pd end with it; whatever is left after ``grace_s`` is SIGKILLed."""
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)
        try:  # leftovers of the group, if any, even once its leader is gone
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reader.join(2)
        self._log.close()
        return self.proc.returncode

    def stderr_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class LocalSwarm:
    """A bootstrap node plus peers under ``workdir``; use as a context manager so everything is stopped."""

    def __init__(self, workdir: str | Path, config: str | Path, overrides: list[str] = ()):
        self.workdir, self.config, self.overrides = Path(workdir), Path(config), list(overrides)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bootstrap: PeerProcess | None = None
        self.maddr = ""
        self.peers: dict[str, PeerProcess] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def start_bootstrap(self, timeout_s: float = 60.0) -> str:
        argv = cli_argv() + [
            "bootstrap",
            "--host-maddrs",
            "/ip4/127.0.0.1/tcp/0",
            "--json",
            "--identity",
            str(self.workdir / "bootstrap.key"),
        ]
        self.bootstrap = self._spawn("bootstrap", argv)
        ev = self.bootstrap.wait_for(lambda e: "maddrs" in e, timeout_s)
        if ev is None:
            raise RuntimeError(f"bootstrap did not start:\n{self.bootstrap.stderr_tail()}")
        self.maddr = ev["maddrs"][0]
        return self.maddr

    def start_peer(
        self, name: str, max_rounds: int | None = None, extra: list[str] = (), env: dict[str, str] | None = None
    ) -> PeerProcess:
        argv = cli_argv() + [
            "peer",
            "run",
            "--config",
            str(self.config),
            "--json",
            "--data-dir",
            str(self.data_dir(name)),
            "--set",
            f"swarm.host_maddrs={LOOPBACK}",
        ]
        if self.maddr:
            argv += ["--initial-peers", self.maddr]
        if max_rounds is not None:
            argv += ["--max-rounds", str(max_rounds)]
        for o in self.overrides + list(extra):
            argv += ["--set", o]
        p = self.peers[name] = self._spawn(name, argv, env)
        return p

    def data_dir(self, name: str) -> Path:
        return self.workdir / name

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> PeerProcess:
        """Start one process (benchmarks override this to record more about it); ``env`` adds variables."""
        return PeerProcess(name, argv, self.workdir / f"{name}.log", env)

    def stop(self) -> None:
        for p in list(self.peers.values()):
            p.stop()
        if self.bootstrap is not None:
            self.bootstrap.stop()
