"""``peer run --fork DIR``: a new lineage whose genesis is a pulled (or merged) state, under its own run id.

Real ``peer run --json`` processes on 127.0.0.1, each alone: the forked peer's ``start`` event holds the
directory's digest at round 0, a peer of the same recipe without --fork holds the seed's genesis under another
run id, and a directory whose weights fail their digest stops the peer with one line, exit 2."""

import json
import subprocess

import pytest
from safetensors.torch import save_file

from p2pmodel.config import load_config
from p2pmodel.eval.digest import state_digest
from p2pmodel.models import build_model
from p2pmodel.node.launch import LocalSwarm, PeerProcess, cli_argv
from p2pmodel.testing.swarm import FAST, TINY


def _pulled_dir(path, seed: int) -> tuple[str, dict]:
    """A directory as `versions pull` writes it, holding the recipe's model initialized from another seed."""
    cfg = load_config(TINY, FAST)
    state = {n: p.detach().clone() for n, p in build_model(cfg.model, seed).named_parameters()}
    path.mkdir()
    save_file(state, str(path / "model.safetensors"))
    manifest = {"version": "v0.3.0", "digest": state_digest(state), "run_id": "parent-run-00001"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return manifest["digest"], state


def _argv(swarm: LocalSwarm, name: str, *extra: str) -> list[str]:
    argv = cli_argv() + ["peer", "run", "--config", str(TINY), "--json", "--max-rounds", "1"]
    argv += ["--data-dir", str(swarm.data_dir(name)), "--set", 'swarm.host_maddrs=["/ip4/127.0.0.1/tcp/0"]']
    for o in FAST:
        argv += ["--set", o]
    return argv + list(extra)


def _start_event(p: PeerProcess) -> dict:
    ev = p.wait_for(lambda e: e.get("event") == "start", 120)
    assert ev is not None, f"{p.name}: no start event (exit {p.proc.poll()}):\n{p.stderr_tail()}"
    return ev


@pytest.mark.scenario  # two peer processes: make test-scenarios (CI runs it too), keeping make test < 10 min
@pytest.mark.timeout(200)
def test_a_fork_starts_from_the_pulled_state_under_its_own_run_id(tmp_path):
    digest, _ = _pulled_dir(tmp_path / "v0.3.0", seed=123)
    with LocalSwarm(tmp_path / "w", TINY, FAST) as swarm:
        fork = swarm._spawn("fork", _argv(swarm, "fork", "--fork", str(tmp_path / "v0.3.0")))
        plain = swarm._spawn("plain", _argv(swarm, "plain"))
        forked, genesis = _start_event(fork), _start_event(plain)
        for p in (fork, plain):
            assert p.proc.wait(120) == 0, f"{p.name} failed:\n{p.stderr_tail()}"
    assert forked["round"] == 0 and forked["digest"] == digest, forked
    assert genesis["digest"] != digest and genesis["run_id"] != forked["run_id"], (genesis, forked)
    assert [e["round"] for e in fork.rounds()] == [1]  # and it trains on from there


@pytest.mark.scenario
@pytest.mark.timeout(120)
def test_a_fork_from_a_tampered_directory_is_refused_with_one_line(tmp_path):
    _, state = _pulled_dir(tmp_path / "v0.3.0", seed=5)
    state[next(iter(state))][0] += 1.0  # the weights no longer hash to the manifest's digest
    save_file(state, str(tmp_path / "v0.3.0" / "model.safetensors"))
    with LocalSwarm(tmp_path / "w", TINY, FAST) as swarm:
        res = subprocess.run(
            _argv(swarm, "bad", "--fork", str(tmp_path / "v0.3.0")), capture_output=True, text=True, timeout=100
        )
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "do not match the manifest's digest" in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
