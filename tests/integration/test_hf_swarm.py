"""A transformers GPT-2 built from a small local config (configs/hf-gpt2-tiny.toml) trains in a real 2-peer swarm:
bootstrap + 2 ``peer run`` processes on 127.0.0.1 commit two consecutive rounds as a group of 2 with one digest,
and the validation loss falls below the initial evaluation; ``versions pull`` of its first tag writes a directory
that ``transformers.AutoModelForCausalLM.from_pretrained`` loads, computing the same logits as the swarm's model.
Skipped only when the ``hf`` extra is absent.

The peers run until both have averaged together: one that starts first (importing transformers takes seconds
on a loaded CI machine) trains alone meanwhile, and a fixed --max-rounds would let it finish before the other
arrives (an alone round here takes 0.3 s)."""

import json
import re
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from p2pmodel.node.launch import LocalSwarm, cli_argv  # noqa: E402
from p2pmodel.testing.swarm import round_event, stop_all, wait_round  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "hf-gpt2-tiny.toml"
JOINT_ROUNDS = 2
OVERRIDES = [
    f"model.hf_config_path={ROOT / 'configs' / 'hf' / 'gpt2-tiny' / 'config.json'}",
    "train.inner_steps=5",
    "eval.batches=2",
    "data.max_corpus_bytes=1000000",
    "sync.matchmaking_time_s=2.0",
    "sync.request_timeout_s=1.5",
    "sync.chunk_timeout_s=1.5",
]
_START = re.compile(r"starts at round 0 \(val_loss ([0-9.]+)\)")


def _initial_val_loss(peer) -> float | None:
    """The genesis evaluation, if ``peer`` started at round 0 (a later peer starts from a re-synced state)."""
    m = _START.search(peer.log_path.read_text(errors="replace"))
    return float(m.group(1)) if m else None


def _first_joint_round(p) -> dict | None:
    return p.wait_for(lambda e: e.get("event") == "round" and e["group_size"] == 2, 150)


@pytest.mark.timeout(240)
def test_hf_gpt2_trains_in_a_two_peer_swarm(tmp_path):
    with LocalSwarm(tmp_path, RECIPE, OVERRIDES) as swarm:
        swarm.start_bootstrap()
        peers = [swarm.start_peer(f"peer{i}") for i in (1, 2)]
        firsts = [_first_joint_round(p) for p in peers]
        for p, ev in zip(peers, firsts, strict=True):
            assert ev is not None, f"{p.name} never averaged with the other (exit {p.proc.poll()}):\n{p.stderr_tail()}"
        first = max(ev["round"] for ev in firsts)
        last = first + JOINT_ROUNDS - 1
        wait_round(peers, last, timeout_s=60)
        pulled = _pull(swarm.maddr, "v0.1.0", tmp_path / "v0.1.0")  # tagged at round 2 (release_every = 2)
        stop_all(peers)
        for p in peers:
            assert p.proc.returncode == 0, f"{p.name} exit {p.proc.returncode}:\n{p.stderr_tail()}"

        for r in range(first, last + 1):
            events = [round_event(p, r) for p in peers]
            assert all(events), f"round {r} not committed by every peer: {[p.rounds() for p in peers]}"
            assert len({e["digest"] for e in events}) == 1, f"round {r}: digests differ {events}"
            assert [e["group_size"] for e in events] == [2, 2], f"round {r}: {events}"

        starts = {v for v in map(_initial_val_loss, peers) if v is not None}
        assert len(starts) == 1, f"genesis evaluations {starts}"  # same genesis state, same fixed eval batches
        (initial,) = starts
        final = [round_event(p, last) for p in peers]
        assert final[0]["val_loss"] == final[1]["val_loss"]
        assert final[0]["val_loss"] < initial, f"val_loss {final[0]['val_loss']:.4f} vs initial {initial:.4f}"

    # the pulled version loads with transformers alone, and computes what the swarm's model computes
    import transformers

    from p2pmodel.cli.versions_files import load_dir
    from p2pmodel.config import load_config
    from p2pmodel.models import build_model

    lm = transformers.AutoModelForCausalLM.from_pretrained(str(pulled), local_files_only=True)
    _, state = load_dir(pulled)  # the same files under this project's names, checked against the tag's digest
    cfg = load_config(RECIPE, OVERRIDES)
    ours = build_model(cfg.model, 0)
    ours.load_state_dict(state, strict=False)
    x = torch.randint(0, cfg.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    lm.eval(), ours.eval()
    with torch.no_grad():
        assert torch.equal(lm(input_ids=x).logits, ours(x)[0])


def _pull(maddr: str, version: str, out: Path) -> Path:
    argv = cli_argv() + ["versions", "pull", version, "--initial-peers", maddr, "-o", str(out), "--json"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["version"] == version
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "hf" and {"config.json", "model.safetensors"} <= set(manifest["files"]), manifest
    return out
