"""End to end: real peer processes on 127.0.0.1 tag versions by quorum, and the ``versions`` CLI (a separate
light-client process) lists, verifies, pulls, diffs and plots them; ``p2pmodel demo`` reports the same tags.

Peers run configs/tiny.toml with fast overrides (FAST sets release_every = 2); nothing is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from p2pmodel.node.launch import LocalSwarm
from p2pmodel.testing.swarm import FAST, TINY

WANT = ("v0.1.0", "v0.1.1")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli(*args: str, timeout_s: float = 200.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "p2pmodel", *args], capture_output=True, text=True, timeout=timeout_s, env=env
    )


def one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    return lines[0]


def listed(maddr: str) -> dict | None:
    res = cli("versions", "list", "--initial-peers", maddr, "--json")
    return json.loads(res.stdout) if res.returncode == 0 else None


def check_tags(versions: list[dict], electorate: int = 3) -> dict[str, dict]:
    by = {v["version"]: v for v in versions}
    for want in WANT:
        assert want in by, f"{want} not tagged: {sorted(by)}"
        assert by[want]["votes"] >= 2 and by[want]["electorate"] == electorate, by[want]
        assert by[want]["required"] == 3, by[want]  # floor(2*3/3)+1
    # release_every = 2: each tag is of a release round; on loaded cores a round's vote can miss its unanimous
    # quorum (3 of 3) when one peer re-syncs, and the version is then tagged at a later release round
    first, second = by["v0.1.0"]["round"], by["v0.1.1"]["round"]
    assert first % 2 == 0 < first < second and second % 2 == 0 and by["v0.1.1"]["parent"] == "v0.1.0", by
    return by


@pytest.mark.timeout(300)
def test_demo_tags_two_versions_by_quorum(tmp_path):
    """The real ``p2pmodel demo --peers 3 --rounds 4``: its closing JSON (read from the peers' ledgers) holds
    v0.1.0 and v0.1.1, each with at least 2 of 3 votes."""
    args = ["demo", "--peers", "3", "--rounds", "4", "--json", "--workdir", str(tmp_path / "demo")]
    for o in FAST:
        args += ["--set", o]
    res = cli(*args, timeout_s=280)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["same_digest"] is True
    tags = {t["version"]: t for t in out["versions"]}
    for want in WANT:
        assert want in tags, out["versions"]
        got, of = map(int, tags[want]["votes"].split("/"))
        assert of == 3 and got >= 2, tags[want]
    assert tags["v0.1.0"]["round"] == 2 and tags["v0.1.1"]["round"] == 4
    for name in ("peer1", "peer2", "peer3"):
        assert set(WANT) <= set(out["peers"][name]["versions"]), out["peers"][name]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """3 peers that train past round 4 (so they are still serving), and the tags as a separate process sees them."""
    root = tmp_path_factory.mktemp("swarm")
    # the peers serve until the module's last test (at ~1.5 s a round, 60 rounds ended before it on loaded cores)
    # and keep the round objects of every round (32 by default: the patch pull, which waits for the light clients
    # before it, found rounds 3-4 gone and fell back to a whole pull)
    with LocalSwarm(root, TINY, [*FAST, "versioning.keep_rounds=150"]) as sw:
        maddr = sw.start_bootstrap()
        peers = [sw.start_peer(f"peer{i}", max_rounds=150) for i in (1, 2, 3)]
        deadline = time.monotonic() + 180
        for p in peers:
            ev = p.wait_for(lambda e: e.get("event") == "round" and e["round"] >= 4, deadline - time.monotonic())
            assert ev is not None, f"{p.name} did not commit round 4:\n{p.stderr_tail()}"
        for p in peers:  # each peer formed the tag itself (cheap to check: its log)
            while "tagged v0.1.1" not in p.log_path.read_text(errors="replace"):
                assert time.monotonic() < deadline, f"{p.name} never tagged v0.1.1:\n{p.stderr_tail()}"
                time.sleep(0.5)
        seen = None
        for _ in range(3):  # the DHT index is published right after the tag: allow a retry
            seen = listed(maddr)
            if seen and set(WANT) <= {v["version"] for v in seen["versions"]}:
                break
        yield maddr, seen, root, peers


@pytest.mark.timeout(420)  # includes the module swarm's start (~2-3 min on 2 busy cores)
def test_swarm_tags_listed_by_a_separate_process(swarm):
    maddr, seen, *_ = swarm
    assert seen is not None, "versions list never succeeded"
    check_tags(seen["versions"])
    assert seen["run_name"] == "tiny" and len(seen["run_id"]) == 16


@pytest.mark.scenario  # a minute-long CLI walk-through: make test-scenarios (CI runs it too)
@pytest.mark.timeout(300)
def test_pull_show_diff_plot(swarm, tmp_path):
    import torch
    from safetensors.torch import load_file

    from p2pmodel.config import load_config
    from p2pmodel.eval import state_digest
    from p2pmodel.models import build_model

    maddr, seen, _, swarm_peers = swarm
    tags = check_tags(seen["versions"])
    dirs = {v: tmp_path / v for v in WANT}
    png = tmp_path / "plot" / "versions.png"
    peers = ["--initial-peers", maddr]
    with ThreadPoolExecutor(4) as pool:  # independent light clients, side by side
        pulls = {v: pool.submit(cli, "versions", "pull", v, *peers, "-o", str(d), "--json") for v, d in dirs.items()}
        show = pool.submit(cli, "versions", "show", "v0.1.0", *peers, "--json")
        log = pool.submit(cli, "versions", "log", *peers, "--json")
        plot = pool.submit(cli, "versions", "plot", *peers, "-o", str(png))
        pulls = {v: f.result() for v, f in pulls.items()}
        show, plot, log = show.result(), plot.result(), log.result()

    cfg = load_config(TINY)
    for v, res in pulls.items():
        assert res.returncode == 0, res.stderr[-2000:]
        got = json.loads(res.stdout)
        assert got["method"] == "full" and got["rounds"] == 0 and got["bytes"] > 0, got
        assert {k: got[k] for k in ("version", "digest", "dir")} == {
            "version": v,
            "digest": tags[v]["digest"],
            "dir": str(dirs[v]),
        }
        state = load_file(dirs[v] / "model.safetensors")
        assert state_digest(state) == tags[v]["digest"]
        manifest = json.loads((dirs[v] / "manifest.json").read_text())
        assert manifest["digest"] == tags[v]["digest"] and manifest["version"] == v
        model = build_model(cfg.model, 0)
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert unexpected == [] and set(missing) <= {"head.weight"}, (missing, unexpected)
        assert model.head.weight is model.tok.weight  # tied: loaded through tok.weight
        assert state_digest(dict(model.named_parameters())) == tags[v]["digest"]
        x = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.seq_len))
        logits, loss = model(x, x)
        assert logits.shape == (2, cfg.model.seq_len, cfg.model.vocab_size) and torch.isfinite(loss)

    assert show.returncode == 0, show.stderr[-2000:]
    shown = json.loads(show.stdout)
    assert shown["verified"] is True and shown["version"] == "v0.1.0" and shown["digest"] == tags["v0.1.0"]["digest"]
    assert len(shown["vote_details"]) == shown["votes"] >= 2 and len(shown["electorate_peers"]) == 3
    assert all(v["signature"] == "valid" and v["verdict"] == "accept" for v in shown["vote_details"])
    assert {v["voter"] for v in shown["vote_details"]} <= set(shown["electorate_peers"])
    # the authorship record: the contributors of rounds 1-2 as the votes record them, checked against the
    # contributions each peer's round events reported (those that committed both rounds with a record of them)
    credited = {c["peer"]: c["samples"] for c in shown["contributors"]}
    assert credited and all(n > 0 for n in credited.values()), shown["contributors"]
    assert set(credited) <= set(shown["electorate_peers"]), shown["contributors"]
    first, second = tags["v0.1.0"]["round"], tags["v0.1.1"]["round"]
    tallies = []
    for p in swarm_peers:
        records = [e.get("contributions") for e in p.rounds() if e["round"] <= first]
        if len(records) == first and all(records):
            tallies.append({peer: sum(r.get(peer, 0) for r in records) for peer in set().union(*records)})
    assert tallies.count(credited) >= shown["contributors_attested_by"] >= 2, (credited, tallies)

    assert log.returncode == 0, log.stderr[-2000:]
    history = json.loads(log.stdout)["versions"]  # newest first, each version's rounds since its parent
    assert [v["version"] for v in history][-2:] == ["v0.1.1", "v0.1.0"], history
    assert history[-1]["rounds"] == list(range(1, first + 1))
    assert history[-2]["rounds"] == list(range(first + 1, second + 1))
    assert history[-1]["contributors"] == shown["contributors"] and history[-1]["val_loss_change"] is None
    assert history[-2]["val_loss_change"] == history[-2]["metrics"]["val_loss"] - history[-1]["metrics"]["val_loss"]

    # v0.1.1 as a patch from the pulled v0.1.0: the round objects between them replayed, the tag's digest reached
    patched = cli("versions", "pull", "v0.1.1", *peers, "--from", str(dirs["v0.1.0"]), "-o", str(tmp_path / "p"),
                  "--json")  # fmt: skip
    assert patched.returncode == 0, patched.stderr[-2000:]
    got = json.loads(patched.stdout)
    whole = json.loads(pulls["v0.1.1"].stdout)
    assert got["method"] == "patch" and got["digest"] == tags["v0.1.1"]["digest"], got
    assert got["rounds"] == second - first, got
    # int4 round objects: ~0.14 of the state each (a whole pull is the state and its momentum)
    assert got["bytes"] <= 0.175 * got["rounds"] * whole["bytes"] / 2, (got, whole)
    assert state_digest(load_file(tmp_path / "p" / "model.safetensors")) == tags["v0.1.1"]["digest"]
    patched_log = [v for v in history if v["version"] == "v0.1.1"][0]
    assert patched_log["patch_bytes"] == got["bytes"] and history[-1]["patch_bytes"] is None, history

    diff = cli("versions", "diff", str(dirs["v0.1.0"]), str(dirs["v0.1.1"]), "--json", timeout_s=60)
    assert diff.returncode == 0, diff.stderr[-2000:]
    d = json.loads(diff.stdout)
    assert d["from"] == "v0.1.0" and d["to"] == "v0.1.1"
    assert {r["tensor"] for r in d["tensors"]} == set(load_file(dirs["v0.1.0"] / "model.safetensors"))
    assert d["median_relative_change"] > 0 and all(r["l2_change"] >= 0 for r in d["tensors"])

    assert plot.returncode == 0, plot.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1024


@pytest.mark.timeout(240)
def test_cli_errors_are_one_line_with_exit_codes(swarm, tmp_path):
    maddr, *_ = swarm
    dead_peer = "/ip4/127.0.0.1/tcp/1/p2p/" + maddr.rsplit("/p2p/", 1)[1]  # a real PeerID, nobody listening
    with ThreadPoolExecutor(3) as pool:
        unknown = pool.submit(cli, "versions", "show", "v9.9.9", "--initial-peers", maddr)
        dead = pool.submit(cli, "versions", "list", "--initial-peers", dead_peer, "--json")
        bad = pool.submit(cli, "versions", "list", "--initial-peers", "/ip4/127.0.0.1/tcp/notaport")
        unknown, dead, bad = unknown.result(), dead.result(), bad.result()
    assert unknown.returncode == 1 and "unknown version v9.9.9" in one_error_line(unknown)  # the swarm decides: exit 1
    assert "v0.1.0" in one_error_line(unknown)  # names the known ones
    assert dead.returncode == 1 and "initial peer" in one_error_line(dead) and dead.stdout == ""
    assert bad.returncode == 2 and "invalid multiaddr" in one_error_line(bad)


@pytest.mark.scenario  # a minute-long CLI walk-through: make test-scenarios (CI runs it too)
@pytest.mark.timeout(240)
def test_allow_counts_only_the_listed_voters(swarm, tmp_path):
    """``--allow`` restricts whose votes count: the electorate's own keys keep both tags, a stranger's key (or too
    few of the voters for a quorum) leaves none (in ``plot`` too), and a malformed PeerID is a usage error."""
    from p2pmodel.swarm.identity import Identity

    maddr, *_ = swarm
    shown = cli("versions", "show", "v0.1.0", "--initial-peers", maddr, "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    electorate = json.loads(shown.stdout)["electorate_peers"]

    def allow(ids: list[str]) -> list[str]:
        return [arg for peer_id in ids for arg in ("--allow", peer_id)]

    stranger = Identity.generate().peer_id
    png = tmp_path / "strangers.png"
    with ThreadPoolExecutor(5) as pool:
        plot = pool.submit(cli, "versions", "plot", "--initial-peers", maddr, *allow([stranger]), "-o", str(png))
        members = pool.submit(cli, "versions", "list", "--initial-peers", maddr, *allow(electorate), "--json")
        outsider = pool.submit(cli, "versions", "list", "--initial-peers", maddr, *allow([stranger]), "--json")
        one = pool.submit(cli, "versions", "list", "--initial-peers", maddr, *allow(electorate[:1]), "--json")
        bad = pool.submit(cli, "versions", "list", "--initial-peers", maddr, "--allow", "not-a-peer-id")
        members, outsider, one, bad, plot = (f.result() for f in (members, outsider, one, bad, plot))
    assert members.returncode == 0, members.stderr[-2000:]
    check_tags(json.loads(members.stdout)["versions"])
    for res in (outsider, one):  # quorum is 3 of 3 members: one allowed voter cannot reach it
        assert res.returncode == 0, res.stderr[-2000:]
        assert json.loads(res.stdout)["versions"] == [], res.stdout
        assert "refusing tag v0.1.0" in res.stderr, res.stderr[-2000:]
    assert bad.returncode == 2 and "--allow: not a PeerID" in one_error_line(bad)
    assert plot.returncode == 0 and "0 versions" in plot.stdout, plot.stdout + plot.stderr[-2000:]
    assert png.read_bytes()[:8] == PNG_MAGIC
