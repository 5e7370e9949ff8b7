"""The versions CLI reads other peers' signed records: only well-formed values count, whatever else a signer put
in them (finite [round, loss] pairs of the run; run records stamped with a real, not future, time)."""

import time

import pytest

from p2pmodel.node.light import median_loss_by_round, newest_runs


@pytest.mark.timeout(10)
def test_median_of_well_formed_pairs_only():
    bodies = [
        {"run_id": "r", "rounds": [[1, 2.0], [2, 1.5]]},
        {"run_id": "r", "rounds": [[1, 4.0], [2, 1]]},
        {"run_id": "r", "rounds": [[1, 3.0], [True, 0.1], [3, float("inf")], [3, float("nan")], [4, "1.0"], [5]]},
        {"run_id": "r", "rounds": "not a list"},
        {"run_id": "other", "rounds": [[1, 0.0], [9, 0.0]]},
    ]
    assert median_loss_by_round(bodies, "r") == {1: 3.0, 2: 1.25}
    assert median_loss_by_round([], "r") == {}


@pytest.mark.timeout(10)
def test_newest_run_record_ignores_bad_and_future_stamps():
    now = time.time()
    bodies = [
        {"run_id": "r", "time": now - 60, "n": 1},
        {"run_id": "r", "time": now - 5, "n": 2},
        {"run_id": "r", "time": now + 10 * 365 * 86400, "n": "future"},
        {"run_id": "r", "time": float("inf"), "n": "inf"},
        {"run_id": "r", "time": float("nan"), "n": "nan"},
        {"run_id": "r", "time": "tomorrow", "n": "str"},  # used to raise TypeError in the comparison
        {"run_id": "r", "time": True, "n": "bool"},
        {"run_id": 7, "time": now},
        {"run_id": "s", "n": "no time"},
    ]
    assert {rid: b["n"] for rid, b in newest_runs(bodies).items()} == {"r": 2}
