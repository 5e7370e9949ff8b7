"""State proposals as peers read them (node/proposals.py): hostile records dropped, the same one picked by every
peer, voted on only in its window."""

import pytest

from p2pmodel.node.proposals import due, state_proposals

RUN = "run-0123456789abcdef"


def _body(**over):
    body = {"run_id": RUN, "state": "a" * 64, "provider": "12D3KooWprovider", "after": "v0.1.3", "round": 10,
            "bump": "minor", "reason": "merge"}  # fmt: skip
    return {**body, **over}


@pytest.mark.timeout(10)
def test_malformed_or_foreign_records_are_dropped_and_the_rest_sorted_by_digest():
    found = {
        "s1": _body(state="b" * 64),
        "s2": _body(state="a" * 64),
        "s3": _body(run_id="another-run"),
        "s4": _body(state="not-a-digest"),
        "s5": _body(provider=""),
        "s6": _body(after="v1.2"),  # not written canonically
        "s7": _body(round=True),  # a bool is not a round
        "s8": _body(bump="huge"),
        "s9": {"run_id": RUN, "bump": "minor", "after": ""},  # a bump proposal, not a state
        "s10": "not a dict",
    }
    got = state_proposals(found, RUN)
    assert [(p.proposer, p.digest[0]) for p in got] == [("s2", "a"), ("s1", "b")]
    assert [p.proposer for p in state_proposals(found, RUN, allow={"s1"})] == ["s1"]


@pytest.mark.timeout(10)
def test_a_proposal_is_due_from_its_round_for_two_release_rounds_only():
    (p,) = state_proposals({"s": _body(round=10)}, RUN)
    assert due([p], 8, window=4) is None  # not up yet
    assert due([p], 10, window=4) is p and due([p], 12, window=4) is p  # a late reader votes at the second
    assert due([p], 14, window=4) is None  # everyone voted on it: a restarted peer does not vote on it alone
