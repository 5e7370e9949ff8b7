"""Patches: the bytes of ``versions pull vB --from DIR_A`` against a whole pull of vB, on a live swarm; one JSON
object on stdout.

Setup: 3 peers of configs/tiny.toml on 127.0.0.1 (_swarm_harness.FAST_ROUNDS, ``versioning.release_every=2``,
int4 all-reduce, the defaults otherwise), run until ``--version`` (v0.1.3) is listed by ``versions list``. Then,
each a separate CLI process (a light client) while the peers keep training:
  1. ``versions pull vA -o A`` (vA = the version before ``--version``): whole, writes momentum.bin too;
  2. ``versions pull vB -o B_full``: whole, the baseline;
  3. ``versions pull vB --from A -o B_patch``: the patch;
  4. every peer's copy of the round objects vB's votes name is damaged on disk (its bytes no longer hash to its
     id), and step 3 again (``-o B_damaged``): the pull must refuse them and fall back to the whole state.
Reported: bytes fetched by each pull (``--json``'s ``bytes``: what the blobs' sizes add up to, not counting the
DHT and protocol overhead), the ratio patch / whole (target <= 0.35) for the state alone and for state + momentum
(a whole pull fetches both), wall time of each pull (the same machine, one after the other), and the digests: B_patch
and B_damaged must equal vB's tag.

Run: python benchmarks/patches.py [--version v0.1.3] [--keep]

Measured 2026-12-07 08:31 UTC (2 cores, load average 3.7-4.4), v0.1.3 (round 8) from v0.1.2 (round 6), every tag
3/3 votes:
  whole pull of v0.1.3   6,742,992 bytes (state 3,369,984 + outer momentum 3,373,008)   8.7 s
  patch from v0.1.2        953,608 bytes (2 round objects)                              10.6 s
  ratio 0.283 of the state alone, 0.141 of the whole pull; digest = the tag's
  every round object damaged at every peer (48 files): "does not match its digest" from each of the 3 peers, the
  pull fell back to the whole state (6,742,992 bytes), digest = the tag's.
The wall times are dominated by the light client joining the DHT; the replay of two rounds takes well under 1 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _swarm_harness import FAST_ROUNDS, TINY, Harness, bench_workdir, load, progress, versions_list  # noqa: E402

from p2pmodel.node.launch import cli_argv  # noqa: E402
from p2pmodel.versioning.pulled import read_pulled  # noqa: E402


def pull(maddr: str, version: str, out: Path, base: Path | None = None) -> dict:
    argv = cli_argv() + ["versions", "pull", version, "--initial-peers", maddr, "-o", str(out), "--json"]
    if base is not None:
        argv += ["--from", str(base)]
    started = time.monotonic()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, start_new_session=True)
    took = round(time.monotonic() - started, 2)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1], "wall_s": took}
    out_json = json.loads(res.stdout.strip().splitlines()[-1])
    manifest, state = read_pulled(out)
    out_json.update(wall_s=took, digest_ok=manifest["digest"] == out_json["digest"], stderr=res.stderr.strip()[-300:])
    out_json["state_bytes"] = sum(4 * t.numel() for t in state.values())
    return out_json


def damage_round_objects(data_dirs: list[Path], ids: list[str]) -> int:
    """Overwrite the round objects ``ids`` in every peer's patch store with bytes of the same length that do not
    hash to their id (a disk fault, or a peer serving garbage). → how many files were damaged."""
    damaged = 0
    for d in data_dirs:
        for blob_id in ids:
            path = d / "patches" / f"{blob_id}.round"
            if path.exists():
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                path.write_bytes(bytes(data))
                damaged += 1
    return damaged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", default="v0.1.3", help="the version pulled as a patch from the one before it")
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    major, minor, patch_no = (int(x) for x in args.version.lstrip("v").split("."))
    if patch_no < 1:
        print("error: --version needs a PATCH number >= 1 (its parent is pulled first)", file=sys.stderr)
        raise SystemExit(2)
    parent = f"v{major}.{minor}.{patch_no - 1}"
    out: dict = {"benchmark": "patches", "version": args.version, "from": parent, "load_avg_start": load()}
    overrides = [*FAST_ROUNDS, "versioning.release_every=2"]
    with bench_workdir(args.workdir, args.keep, "patches") as workdir:
        with Harness(workdir / "swarm", TINY, overrides) as swarm:
            maddr = swarm.start_bootstrap()
            peers = [swarm.start_peer(f"peer{i}") for i in (1, 2, 3)]
            deadline = time.monotonic() + args.timeout_s
            listed: list[dict] = []
            while time.monotonic() < deadline:
                listed = versions_list(maddr)[0] or []
                if args.version in {v["version"] for v in listed}:
                    break
                time.sleep(5)
            tags = {v["version"]: v for v in listed}
            if args.version not in tags or parent not in tags:
                out["error"] = f"{args.version} not tagged in time (listed: {sorted(tags)})"
                print(json.dumps(out))
                return
            progress(f"{args.version} tagged at round {tags[args.version]['round']}; pulling")
            out["tags"] = {
                v: {"round": t["round"], "votes": f"{t['votes']}/{t['electorate']}"} for v, t in tags.items()
            }
            pulls = {
                "parent_whole": pull(maddr, parent, workdir / "A"),
                "whole": pull(maddr, args.version, workdir / "B_full"),
                "patch": pull(maddr, args.version, workdir / "B_patch", workdir / "A"),
            }
            dirs = [swarm.data_dir(p.name) for p in peers]
            ids = sorted({f.name.split(".")[0] for d in dirs for f in (d / "patches").glob("*.round")})
            damaged = damage_round_objects(dirs, ids)  # every object every peer holds: no good copy is left
            pulls["damaged"] = pull(maddr, args.version, workdir / "B_damaged", workdir / "A")
            pulls["damaged"]["objects_damaged"] = damaged
            swarm.stop()
    whole, patched = pulls["whole"], pulls["patch"]
    out["pulls"] = pulls
    if "error" not in whole and "error" not in patched:
        out["patch_vs_whole_state"] = round(patched["bytes"] / whole["state_bytes"], 4)
        out["patch_vs_whole_pull"] = round(patched["bytes"] / whole["bytes"], 4)
        out["targets"] = {
            "patch_le_0.35_of_state": out["patch_vs_whole_state"] <= 0.35,
            "patch_digest_is_the_tag_s": patched["method"] == "patch"
            and patched["digest"] == tags[args.version]["digest"],
            "damaged_falls_back_whole": pulls["damaged"].get("method") == "full"
            and pulls["damaged"].get("digest") == tags[args.version]["digest"],
        }
    out["load_avg_end"] = load()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
