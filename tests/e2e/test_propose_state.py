"""End to end: a state offered to a live swarm like a pull request (``versions propose --state DIR``, a separate
process that serves it): the peers fetch it, evaluate it as their release candidate and vote. A damaged state is
rejected and training goes on; a good one is tagged and every peer adopts it in the next round, one digest.

Real peer processes of configs/tiny.toml (FAST, release_every = 2) on 127.0.0.1; the regression tolerance is 0.2
here so that a state pulled a few rounds ago still passes against the newer tags it is judged by."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from p2pmodel.eval import state_digest
from p2pmodel.node.launch import LocalSwarm
from p2pmodel.testing.swarm import FAST, TINY
from p2pmodel.versioning.pulled import read_pulled

pytestmark = pytest.mark.scenario  # a few minutes of a live swarm: make test-scenarios (CI runs it too)
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def cli(*args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "p2pmodel", *args], capture_output=True, text=True, timeout=timeout_s, env=env
    )


def listed(maddr: str) -> list[dict]:
    res = cli("versions", "list", "--initial-peers", maddr, "--json", timeout_s=120)
    return json.loads(res.stdout)["versions"] if res.returncode == 0 else []


def state_dir(path, state: dict) -> str:
    """A directory shaped like a `versions pull`: model.safetensors + manifest.json naming its digest."""
    path.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors")
    (path / "manifest.json").write_text(json.dumps({"digest": state_digest(state), "version": "proposed"}))
    return str(path)


def pull_latest(maddr: str, out) -> dict:
    latest = listed(maddr)[-1]["version"]
    res = cli("versions", "pull", latest, "--initial-peers", maddr, "-o", str(out), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    return read_pulled(out)[1]


def propose(maddr: str, directory: str) -> tuple[int, dict]:
    res = cli(
        "versions", "propose", "--state", directory, "--bump", "minor", "--initial-peers", maddr,
        "--listen", LOOPBACK, "--wait-s", "240", "--reason", "test", "--json",
    )  # fmt: skip
    assert res.stdout.strip(), res.stderr[-3000:]
    return res.returncode, json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_a_proposed_state_is_rejected_when_damaged_and_adopted_by_every_peer_when_good(tmp_path):
    overrides = [*FAST, "versioning.regression_tolerance=0.2"]
    with LocalSwarm(tmp_path / "swarm", TINY, overrides) as sw:
        maddr = sw.start_bootstrap()
        peers = [sw.start_peer(f"peer{i}", max_rounds=400) for i in (1, 2, 3)]
        deadline = time.monotonic() + 240
        while not listed(maddr):
            assert time.monotonic() < deadline, "\n".join(p.stderr_tail() for p in peers)
            time.sleep(3)
        base = pull_latest(maddr, tmp_path / "pulled-first")

        # damaged: random weights (val loss ~5.5 against ~2.5): every honest peer rejects it, training goes on
        g = torch.Generator().manual_seed(0)
        damaged = {n: torch.randn(t.shape, generator=g) for n, t in base.items()}
        code, out = propose(maddr, state_dir(tmp_path / "damaged", damaged))
        assert code == 1 and out["result"] == "rejected", out
        tags = listed(maddr)
        assert state_digest(damaged) not in {t["digest"] for t in tags}
        assert tags[-1]["round"] >= out["round"], tags  # the swarm tagged its own state instead

        # good: the latest version, pulled now (the swarm trained on meanwhile), nudged: tagged, adopted by all
        base = pull_latest(maddr, tmp_path / "pulled-second")
        good = {n: t + 1e-6 * torch.randn(t.shape, generator=g) for n, t in base.items()}
        code, out = propose(maddr, state_dir(tmp_path / "good", good))
        assert code == 0 and out["result"] == "accepted", out
        assert out["state"] == state_digest(good) and out["version"].endswith(".0"), out  # a MINOR bump
        adopt = out["tag_round"] + 1
        for p in peers:  # the round after the tag: every peer committed the proposed state itself
            ev = p.wait_for(lambda e: e.get("event") == "round" and e["round"] >= adopt + 1, 120)
            assert ev is not None, p.stderr_tail()
        by_round = {r: {e["digest"] for p in peers for e in p.rounds() if e["round"] == r} for r in (adopt, adopt + 1)}
        assert by_round[adopt] == {state_digest(good)}, by_round
        assert len(by_round[adopt + 1]) == 1 and by_round[adopt + 1] != by_round[adopt], by_round  # trained on
