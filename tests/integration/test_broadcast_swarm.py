"""Broadcast mode on real peers (127.0.0.1): every peer fetches every other's signed update and aggregates them
itself; a peer that forges its update (x100, the test-only attack option) is refused by name, and every peer,
the attacker included, still commits the same digest every round."""

import math

import pytest

from p2pmodel.node.broadcast import ATTACK_ENV
from p2pmodel.node.launch import LocalSwarm
from p2pmodel.testing.swarm import FAST, TINY, digests_by_round, round_event

ROUNDS = 3
BROADCAST = [*FAST, "sync.mode=broadcast", "compress.codec=sparse"]  # the default aggregator: centered_clip


@pytest.mark.timeout(300)
def test_a_forged_update_is_refused_by_name_and_every_peer_commits_the_same_digest(tmp_path):
    with LocalSwarm(tmp_path, TINY, BROADCAST) as swarm:
        swarm.start_bootstrap()
        honest = [swarm.start_peer(f"peer{i}", max_rounds=ROUNDS) for i in range(1, 4)]
        attacker = swarm.start_peer("attacker", max_rounds=ROUNDS, env={ATTACK_ENV: "scale100"})
        peers = [*honest, attacker]
        for p in peers:
            assert p.proc.wait(240) == 0, f"{p.name} failed:\n{p.stderr_tail()}"
            p.stop()
        attacker_id = attacker.rounds()[0]["peer_id"]

        table = digests_by_round(peers)
        assert sorted(table) == list(range(1, ROUNDS + 1)), table
        for r, by_peer in table.items():
            assert len(set(by_peer.values())) == 1, f"round {r}: {by_peer}"
        # the rounds in which the attacker's update reached the others: refused by all, for its norm
        refused_in = [r for r in table if attacker_id in round_event(honest[0], r)["refused"]]
        assert refused_in, [round_event(honest[0], r) for r in table]
        for r in refused_in:
            for p in honest:
                ev = round_event(p, r)
                assert "x median" in ev["refused"][attacker_id], ev
                assert ev["group_size"] == 3, ev  # the three honest updates were used
        losses = [round_event(honest[0], r)["val_loss"] for r in sorted(table)]
        assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
        assert "TEST ATTACK scale100" in attacker.log_path.read_text(errors="replace")
