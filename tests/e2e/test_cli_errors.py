"""Mistakes on the command line, caught before any network work: every command answers with exit code 2 and
one ``error:`` line (typer's own usage errors included), and ``--json`` output is strict JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import save_file

from p2pmodel.eval import state_digest
from p2pmodel.swarm.identity import Identity

DEAD = f"/ip4/127.0.0.1/tcp/1/p2p/{Identity.generate().peer_id}"  # nobody listens: reaching it would fail (1)


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "p2pmodel", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def _pulled(path, version: str, state: dict) -> str:
    path.mkdir()
    save_file(state, str(path / "model.safetensors"))
    (path / "manifest.json").write_text(json.dumps({"version": version, "digest": state_digest(state)}))
    return str(path)


@pytest.mark.timeout(240)
def test_usage_errors_exit_2_with_one_line(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "manifest.json").write_text("{not json")
    ok = _pulled(tmp_path / "ok", "v0.1.0", {"w": torch.ones(3)})
    reshaped = _pulled(tmp_path / "reshaped", "v1.0.0", {"w": torch.ones(1, 3)})
    cases = {
        "typer bound": (["demo", "--peers", "0"], "--peers"),
        "no such command": (["nope"], "No such command"),
        "missing option": (["peer", "run"], "--config"),
        "bad version": (["versions", "show", "notaversion", "--initial-peers", DEAD], "not a version"),
        "unwritable pull dir": (["versions", "pull", "v0.1.0", "--initial-peers", DEAD, "-o", "/proc/x"], "/proc/x"),
        "plot not png": (["versions", "plot", "--initial-peers", DEAD, "-o", str(tmp_path / "p.txt")], ".png"),
        "damaged pull dir": (["versions", "diff", str(tmp_path / "damaged"), ok], "JSONDecodeError"),
        "other shapes": (["versions", "diff", ok, reshaped], "schemas"),
        "status url": (["peer", "status", "--url", "nope"], "http"),
        "infinite config value": (["config", "show", "configs/tiny.toml", "--set", "train.grad_clip=inf"], "finite"),
        "workdir is a file": (["demo", "--workdir", str(tmp_path / "a_file")], "--workdir"),
        "endless proposal": (
            ["versions", "propose", "--bump", "minor", "--initial-peers", DEAD, "--ttl-hours", "inf"],
            "ttl",
        ),
    }
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with ThreadPoolExecutor(4) as pool:
        done = {name: pool.submit(cli, *args, cwd=root) for name, (args, _) in cases.items()}
        results = {name: f.result() for name, f in done.items()}
    for name, (_, needle) in cases.items():
        res = results[name]
        lines = [x for x in res.stderr.splitlines() if x.strip()]
        assert res.returncode == 2, (name, res.returncode, res.stderr[-1500:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (name, res.stderr[-1500:])


@pytest.mark.timeout(60)
def test_json_is_strict_even_for_infinite_figures(tmp_path):
    zero = _pulled(tmp_path / "zero", "v0.1.0", {"w": torch.zeros(4), "b": torch.ones(2)})
    moved = _pulled(tmp_path / "moved", "v0.1.1", {"w": torch.ones(4), "b": torch.ones(2)})
    res = cli("versions", "diff", zero, moved, "--json")
    assert res.returncode == 0, res.stderr[-1500:]

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    diff = json.loads(res.stdout, parse_constant=refuse)
    by = {r["tensor"]: r for r in diff["tensors"]}
    assert by["w"]["relative_change"] is None and by["w"]["l2_change"] == 2.0  # from zero: no finite ratio
    assert by["b"]["relative_change"] == 0.0
