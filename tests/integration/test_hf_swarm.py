"""A transformers GPT-2 built from a small local config (configs/hf-gpt2-tiny.toml) trains in a real 2-peer swarm:
bootstrap + 2 ``peer run`` processes on 127.0.0.1 commit rounds 1 and 2 with one digest, as a group of 2, and
the validation loss falls below the initial evaluation. Skipped only when the ``hf`` extra is absent."""

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from p2pmodel.node.launch import LocalSwarm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "hf-gpt2-tiny.toml"
ROUNDS = 2
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


def _initial_val_loss(peer) -> float:
    m = _START.search(peer.log_path.read_text(errors="replace"))
    assert m, f"{peer.name}: no start line in its log:\n{peer.stderr_tail()}"
    return float(m.group(1))


@pytest.mark.timeout(150)
def test_hf_gpt2_trains_in_a_two_peer_swarm(tmp_path):
    with LocalSwarm(tmp_path, RECIPE, OVERRIDES) as swarm:
        swarm.start_bootstrap()
        peers = [swarm.start_peer(f"peer{i}", max_rounds=ROUNDS) for i in (1, 2)]
        for p in peers:
            assert p.proc.wait(130) == 0, f"{p.name} failed:\n{p.stderr_tail()}"
            p.stop()

        rounds = {p.name: {e["round"]: e for e in p.rounds()} for p in peers}
        for r in range(1, ROUNDS + 1):
            events = [rounds[p.name].get(r) for p in peers]
            assert all(events), f"round {r} not committed by every peer: {rounds}"
            assert len({e["digest"] for e in events}) == 1, f"round {r}: digests differ {events}"
            assert [e["group_size"] for e in events] == [2, 2], f"round {r}: {events}"

        initial = _initial_val_loss(peers[0])
        assert _initial_val_loss(peers[1]) == initial  # same genesis state, same fixed eval batches
        final = [p.last for p in peers]
        assert all(s["event"] == "summary" and s["round"] == ROUNDS for s in final), final
        assert final[0]["val_loss"] == final[1]["val_loss"]
        assert final[0]["val_loss"] < initial, f"val_loss {final[0]['val_loss']:.4f} vs initial {initial:.4f}"
