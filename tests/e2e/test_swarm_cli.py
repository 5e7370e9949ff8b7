"""The swarm commands as a user runs them: ``python -m p2pmodel`` subprocesses on 127.0.0.1.

bootstrap --json, swarm peers --json against a running swarm, peer run's exit codes for an unreachable and a
malformed initial peer, and demo --json ending with one state digest."""

import json
import subprocess

import pytest

from p2pmodel.node.launch import LocalSwarm, cli_argv
from p2pmodel.swarm.identity import Identity
from p2pmodel.testing.swarm import FAST, FAST_SAME_RUN, ROOT, TINY, stop_all, wait_round


def _cli(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(cli_argv() + args, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)


def _last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line in stdout: {stdout[-500:]!r}"
    return json.loads(lines[-1])


@pytest.mark.scenario  # a minute-long CLI walk-through: make test-scenarios (CI runs it too)
@pytest.mark.timeout(300)
def test_bootstrap_json_then_swarm_peers_lists_the_running_peers(tmp_path):
    # FAST_SAME_RUN leaves the lineage alone, so configs/tiny.toml names the same run_id
    with LocalSwarm(tmp_path, TINY, FAST_SAME_RUN) as swarm:
        maddr = swarm.start_bootstrap()  # runs `p2pmodel bootstrap --json` and reads its line
        boot = swarm.bootstrap.events[0]
        assert boot["maddrs"] and all(m.startswith("/ip4/127.0.0.1/tcp/") for m in boot["maddrs"])
        assert maddr.endswith(f"/p2p/{boot['peer_id']}")
        peers = [swarm.start_peer(f"peer{i}") for i in (1, 2)]
        events = wait_round(peers, 1, timeout_s=180)  # committed once: their records are in the DHT
        run_ids = {e["run_id"] for e in events.values()}
        assert len(run_ids) == 1

        out = _cli(["swarm", "peers", "--initial-peers", maddr, "--json", "--config", str(TINY)], 60)
        assert out.returncode == 0, out.stderr[-2000:]
        listed = _last_json(out.stdout)
        assert listed["run_id"] == run_ids.pop()
        by_id = {r["peer_id"]: r for r in listed["peers"]}
        assert {e["peer_id"] for e in events.values()} <= set(by_id), listed
        for e in events.values():
            assert by_id[e["peer_id"]]["run_id"] == listed["run_id"] and by_id[e["peer_id"]]["round"] >= 1
        plain = _cli(["swarm", "peers", "--initial-peers", maddr, "--json"], 60)  # no config: the run online
        assert plain.returncode == 0 and _last_json(plain.stdout)["run_id"] == listed["run_id"], plain.stderr[-2000:]
        stop_all(peers)


@pytest.mark.timeout(120)
def test_peer_run_with_an_unreachable_initial_peer_exits_1_with_one_error_line(tmp_path):
    peer_id = Identity.load_or_create(tmp_path / "nobody.key").peer_id
    args = ["peer", "run", "--config", str(TINY), "--data-dir", str(tmp_path / "d"), "--set", FAST[2]]
    out = _cli([*args, "--initial-peers", f"/ip4/127.0.0.1/tcp/1/p2p/{peer_id}"], 110)  # port 1: closed
    assert out.returncode == 1, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "initial peer" in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


@pytest.mark.timeout(120)
def test_peer_run_with_a_malformed_multiaddr_exits_2_with_one_line(tmp_path):
    args = ["peer", "run", "--config", str(TINY), "--data-dir", str(tmp_path / "d"), "--set", FAST[2]]
    out = _cli([*args, "--initial-peers", "not-a-multiaddr"], 110)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not-a-multiaddr" in lines[0], out.stderr


@pytest.mark.timeout(300)
def test_demo_three_peers_two_rounds_one_digest(tmp_path):
    sets = [a for o in FAST for a in ("--set", o)]
    args = ["demo", "--peers", "3", "--rounds", "2", "--json", "--workdir", str(tmp_path), *sets]
    out = _cli(args, 140)
    assert out.returncode == 0, out.stderr[-3000:]
    result = _last_json(out.stdout)
    assert result["same_digest"] is True, result
    assert len(result["peers"]) == 3 and all(p["round"] == 2 for p in result["peers"].values()), result
