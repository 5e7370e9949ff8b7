"""The loss-by-round plot reads other peers' signed history records: only finite [round, loss] pairs of the run
count, whatever else a signer put in them."""

import pytest

from p2pmodel.node.light import median_loss_by_round


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
