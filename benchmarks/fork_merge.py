"""Fork, merge, propose: issue 15's walk-through on live swarms, one JSON object on stdout.

1. The original swarm: 3 peers of configs/tiny.toml (Python's own source; _swarm_harness.FAST_ROUNDS,
   release_every = 2) with two named eval sets, ``orig`` (its own corpus) and ``fork`` (the fork's corpus, text
   files by ``--fork-glob``), each with ``--tolerance``. It runs until v0.1.1 is tagged; v0.1.1 is pulled (BASE).
2. The fork: 2 peers, ``peer run --fork BASE`` on the fork's corpus (``data.source = "text"``), its own bootstrap,
   run until it tagged ``--fork-rounds`` / 2 versions; ``versions list`` must show ``forked_from`` = the original's
   run and v0.1.1. Its latest version is pulled (FORK), and the original's latest too (ORIG).
3. ``versions merge ORIG FORK --base BASE --method task-arithmetic --weights 1-W,W`` for each W of ``--weights``
   (a gentle one and an overdone one; with weights adding up to 1 task arithmetic from the common base is the
   interpolation of the two), ORIG being the original's latest version at that moment, proposed at once to the
   live original swarm (``versions propose --state``), one after the other; each merge is evaluated here on both
   sets afterwards (the same batches the peers use).
   Reported per merge: its loss on each set against ORIG's, the swarm's verdict and the peers' reasons, and for an
   accepted one whether every peer committed the merged state the round after the tag (one digest) and trained on.

Run: python benchmarks/fork_merge.py [--weights 0.1,0.3] [--fork-glob '/usr/share/common-licenses/*'] [--keep]

Measured 2026-12-07 09:15-09:20 UTC (2 cores, load average 1.2-5.6), defaults (tolerance 0.15 on val_loss and both
sets): the fork (run 42f4a73e…) listed ``forked_from`` = run 6a4d5f44… v0.1.1 and tagged its own v0.1.0-v0.1.3.
val_loss per set (orig = Python source, fork = the licenses' English text):
  BASE (v0.1.1)  orig 2.439  fork 3.075
  FORK (v0.1.3)  orig 3.105  fork 2.453
  w = 0.1, ORIG v0.1.8 (orig 1.936, fork 2.662) → merged orig 1.999, fork 2.629: accepted 3/3 as v0.2.0 (round 26),
      every peer committed the merged state at round 27, one digest at round 28
  w = 0.3, ORIG v0.2.1 (orig 1.913, fork 2.655) → merged orig 2.282, fork 2.592 (better on the fork's set): rejected
      3/3, "regression: val_loss 2.2488 > parent's 1.7903 (tolerance 0.15); regression: val_loss/orig 2.2815 >
      parent's 1.7774 (tolerance 0.15)"; training went on (v0.2.x tags of its own state)
An earlier run with task vectors at full weight (``--weights 1-w`` not used: 1,0.5 and 1,3) showed why the weights
interpolate: both models carry the generic progress made since v0.1.1, so adding both task vectors at weight 1
overshoots (orig 2.42 and 7.08 against ORIG's 1.72), and every peer rejected them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _swarm_harness import FAST_ROUNDS, TINY, Harness, bench_workdir, load, progress  # noqa: E402

from p2pmodel.node.launch import cli_argv  # noqa: E402

REASON = re.compile(r"candidate ([0-9a-f]{12}) \(proposed\): voting (\w+) for (\S+)(?: \((.*)\))?")


def cli(*args: str, timeout_s: float = 600.0) -> tuple[int, dict | None, str]:
    res = subprocess.run(cli_argv() + list(args), capture_output=True, text=True, timeout=timeout_s)
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out = None
    return res.returncode, out, res.stderr.strip()[-500:]


def listed(maddr: str, run_id: str | None = None) -> dict:
    args = ["versions", "list", "--initial-peers", maddr, "--json"] + (["--run-id", run_id] if run_id else [])
    code, out, _ = cli(*args, timeout_s=120)
    return out if code == 0 and out else {"versions": []}


def wait_tags(maddr: str, count: int, timeout_s: float, run_id: str | None = None) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = listed(maddr, run_id)
        if len(seen["versions"]) >= count:
            return seen
        time.sleep(4)
    raise SystemExit(f"error: fewer than {count} tags within {timeout_s:.0f} s")


def config_with_sets(path: Path, fork_glob: str, tolerance: float) -> Path:
    """configs/tiny.toml plus the two named eval sets (a TOML list of tables cannot be given with --set)."""
    extra = f"""
[[eval.sets]]
name = "orig"
tolerance = {tolerance}
[eval.sets.data]
source = "stdlib"
max_corpus_bytes = 2000000

[[eval.sets]]
name = "fork"
tolerance = {tolerance}
[eval.sets.data]
source = "text"
paths = ["{fork_glob}"]
"""
    path.write_text(TINY.read_text() + extra)
    return path


def evaluate_dir(directory: Path, cfg) -> dict[str, float]:
    """val_loss/NAME of a pulled or merged directory on each named eval set, as a peer computes it."""
    from p2pmodel.data.corpus import load_data
    from p2pmodel.eval import evaluate
    from p2pmodel.models import build_model
    from p2pmodel.versioning.pulled import read_pulled

    _, state = read_pulled(directory)
    model = build_model(cfg.model, 0)
    model.load_state_dict(state, strict=False)
    out = {}
    for s in cfg.eval.sets:
        corpus = load_data(s.data, cfg.model.seq_len + 2, cfg.model.vocab_size)
        out[s.name] = evaluate(model, corpus.val, cfg.model.seq_len, s.batches, cfg.eval.batch_size).val_loss
    return out


def proposal_votes(logs: list[Path], digest: str) -> list[dict]:
    """The peers' votes on a proposed state, from their logs: verdict, version and reasons."""
    found = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            m = REASON.search(line)
            if m and digest.startswith(m.group(1)):
                found.append({"peer": log.stem, "verdict": m.group(2), "version": m.group(3), "why": m.group(4)})
    return found


def main() -> None:
    from p2pmodel.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="0.1,0.3", help="the fork's task-vector weight w in each merge (1-w: ORIG's)")
    ap.add_argument("--fork-glob", default="/usr/share/common-licenses/*")
    ap.add_argument("--fork-rounds", type=int, default=8)
    ap.add_argument("--tolerance", type=float, default=0.15, help="the regression tolerance, of each named set too")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",") if w]
    out: dict = {"benchmark": "fork_merge", "weights": weights, "load_avg_start": load()}
    with bench_workdir(args.workdir, args.keep, "forkmerge") as wd:
        config = config_with_sets(wd / "orig.toml", args.fork_glob, args.tolerance)
        overrides = [*FAST_ROUNDS, "versioning.release_every=2", f"versioning.regression_tolerance={args.tolerance}"]
        cfg = load_config(config, overrides)
        with Harness(wd / "orig", config, overrides) as orig:
            maddr = orig.start_bootstrap()
            peers = [orig.start_peer(f"orig{i}") for i in (1, 2, 3)]
            seen = wait_tags(maddr, 2, 300)
            run_id = seen["run_id"]
            progress(f"original run {run_id}: v0.1.1 tagged; pulling it as the fork's base")
            code, pulled, err = cli(
                "versions", "pull", "v0.1.1", "--initial-peers", maddr, "-o", str(wd / "BASE"), "--json"
            )
            assert code == 0, err
            fork_overrides = [
                *FAST_ROUNDS, "versioning.release_every=2", "data.source=text",
                f"data.paths={json.dumps([args.fork_glob])}", f"model.init_from={wd / 'BASE'}", "run_name=fork",
            ]  # fmt: skip
            with Harness(wd / "fork", TINY, fork_overrides) as fork:
                fmaddr = fork.start_bootstrap()
                fpeers = [fork.start_peer(f"fork{i}") for i in (1, 2)]
                fseen = wait_tags(fmaddr, args.fork_rounds // 2, 600)
                out["fork"] = {
                    "run_id": fseen["run_id"],
                    "forked_from": fseen.get("forked_from"),
                    "tags": [(v["version"], v["round"]) for v in fseen["versions"]],
                    "names_parent": (fseen.get("forked_from") or {}).get("run_id") == run_id
                    and (fseen.get("forked_from") or {}).get("version") == "v0.1.1",
                }
                latest = fseen["versions"][-1]["version"]
                code, _, err = cli(
                    "versions", "pull", latest, "--initial-peers", fmaddr, "-o", str(wd / "FORK"), "--json"
                )
                assert code == 0, err
                fork.stop()
                del fpeers
            merges = []
            for w in weights:  # each merge from the original's latest version, proposed at once: it keeps training
                olatest = listed(maddr)["versions"][-1]["version"]
                odir = wd / f"ORIG_{olatest}"
                if not odir.exists():
                    code, _, err = cli("versions", "pull", olatest, "--initial-peers", maddr, "-o", str(odir))
                    assert code == 0, err
                mdir = wd / f"MERGED_{w:g}"
                code, merged, err = cli(
                    "versions", "merge", str(odir), str(wd / "FORK"), "--base", str(wd / "BASE"),
                    "--method", "task-arithmetic", "--weights", f"{1 - w:g},{w:g}", "-o", str(mdir), "--json",
                )  # fmt: skip
                assert code == 0, err
                progress(f"merge w={w:g} of {olatest} and the fork: proposing it to the original swarm")
                code, verdict, err = cli(
                    "versions", "propose", "--state", str(mdir), "--bump", "minor", "--initial-peers", maddr,
                    "--listen", "/ip4/127.0.0.1/tcp/0", "--wait-s", "300", "--reason", f"merge w={w:g}", "--json",
                )  # fmt: skip
                entry = {"weight": w, "orig": olatest, "merged": str(mdir), "verdict": verdict, "exit": code}
                progress(f"merge w={w:g}: {verdict and verdict.get('result')}")
                entry["votes"] = proposal_votes([orig.workdir / f"{p.name}.0.log" for p in peers], verdict["state"])
                if verdict and verdict.get("result") == "accepted":
                    adopt = verdict["tag_round"] + 1
                    for p in peers:
                        p.wait_for(lambda e, after=adopt: e.get("event") == "round" and e["round"] > after, 120)
                    digests = {
                        r: sorted({e["digest"] for p in peers for e in p.rounds() if e["round"] == r})
                        for r in (adopt, adopt + 1)
                    }
                    entry["adopted"] = {
                        "round": adopt,
                        "every_peer_committed_it": digests[adopt] == [verdict["state"]],
                        "next_round_one_digest": len(digests[adopt + 1]) == 1,
                    }
                merges.append(entry)
            out["merges"] = merges
            orig.stop()
        # each directory on both named sets, the batches the peers use (after the swarm stopped: no hurry now)
        dirs = ["BASE", "FORK", *sorted({f"ORIG_{m['orig']}" for m in merges})]
        out["eval"] = {d: evaluate_dir(wd / d, cfg) for d in dirs}
        for m in merges:
            m["eval"] = evaluate_dir(Path(m["merged"]), cfg)
    out["load_avg_end"] = load()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
