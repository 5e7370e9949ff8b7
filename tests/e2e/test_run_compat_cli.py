"""A peer whose config differs from the running swarm of its run_name in a shared setting (here the codec) is
refused: it exits 2 with one error line naming the field, and the swarm's peer logs one line about it."""

import time

import pytest

from p2pmodel.node.launch import LocalSwarm
from p2pmodel.swarm.identity import Identity
from p2pmodel.testing.swarm import FAST, TINY, wait_round


@pytest.mark.swarm
@pytest.mark.scenario
@pytest.mark.timeout(300)
def test_a_peer_with_another_codec_exits_2_naming_the_field(tmp_path):
    fast = [*FAST, "versioning.release_every=1"]  # the swarm's peer reads the registry at every commit
    with LocalSwarm(tmp_path, TINY, fast) as swarm:
        swarm.start_bootstrap()
        a = swarm.start_peer("a")
        wait_round([a], 1, timeout_s=180)  # a swarm that trains: its peer record is at round 1
        b = swarm.start_peer("b", extra=["compress.codec=int8"])
        assert b.proc.wait(150) == 2, b.stderr_tail()
        err = b.log_path.read_text()
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
        assert "compress.codec is int8 here, int4 in the swarm" in errors[0] and a.rounds()[0]["peer_id"] in errors[0]
        assert "it cannot join this run" not in err  # the refusal is its one line about it

        b_id = Identity.load_or_create(tmp_path / "b" / "identity.key").peer_id
        warning = f'peer {b_id} runs "tiny" with compress.codec=int8 (this peer: int4): it cannot join this run'
        deadline = time.monotonic() + 60
        while warning not in a.log_path.read_text() and time.monotonic() < deadline and a.proc.poll() is None:
            time.sleep(0.5)
        log = a.log_path.read_text()
        assert log.count(warning) == 1, log[-3000:]
