"""The commit step's wait: it ends as soon as no missing answer could change the winner (a strict majority of
everyone who could vote holds one digest), and not before."""

from types import SimpleNamespace

import pytest

from p2pmodel.node import commit
from p2pmodel.node.commit import CommitStep, settled

A, B = "a" * 64, "b" * 64


def test_settled_needs_a_strict_majority_of_every_possible_voter():
    assert settled({"me": A, "p1": A, "p2": A}, {"me", "p1", "p2", "p3"})  # 3 of 4
    assert not settled({"me": A, "p1": A}, {"me", "p1", "p2", "p3"})  # 2 of 4: p2 and p3 could tie it
    assert not settled({"me": A, "p1": B, "p2": A}, {"me", "p1", "p2", "p3"})
    assert not settled({"me": A, "x1": A, "x2": A}, {"me", "p1", "p2"})  # strangers do not count
    assert not settled({"me": "", "p1": "", "p2": ""}, {"me", "p1", "p2"})  # nor fake digests


@pytest.fixture
def step(monkeypatch):
    answers: dict[str, str] = {}
    calls = []
    monkeypatch.setattr(commit, "publish_digest", lambda dht, who, run, r, digest, ttl: answers.update(me=digest))
    monkeypatch.setattr(commit, "get_digests", lambda *a: calls.append(1) or dict(answers))
    monkeypatch.setattr(commit, "POLL_S", 0.01)
    cs = CommitStep(dht=None, identity=SimpleNamespace(peer_id="me"), run_id="r", ttl_s=60)
    return cs, answers, calls


def test_a_majority_of_the_electorate_ends_the_wait_for_a_peer_that_trained_alone(step):
    cs, answers, calls = step
    answers.update(p1=A, p2=A)  # p3 restarted and averaged alone: its digest is late and cannot win
    agreement = cs.agree(
        5, A, participants=lambda: {"p1", "p2", "p3"}, eligible=lambda: {"p1", "p2", "p3"}, deadline_s=30
    )
    assert agreement.winner == A and agreement.missing == ["p3"] and len(calls) == 1


def test_without_a_majority_it_waits_for_the_participants(step):
    cs, answers, calls = step
    answers.update(p1=B)
    agreement = cs.agree(
        5, A, participants=lambda: {"p1", "p2", "p3"}, eligible=lambda: {"p1", "p2", "p3"}, deadline_s=0.2
    )
    assert len(calls) > 1 and agreement.missing == ["p2", "p3"]
    assert agreement.winner == A  # a 1-1 tie goes to the smallest digest, the same on every peer


def test_the_digests_of_peers_that_left_after_committing_still_count(step):
    """The last round: two peers commit, announce "leave" and exit; the third, slower, must adopt their state
    instead of committing its own alone (a fork at the last round before the fix)."""
    cs, answers, _ = step
    answers.update(p1=A, p3=A)
    agreement = cs.agree(
        5, B, participants=lambda: set(), eligible=lambda: set(), deadline_s=0.2, former=lambda: {"p1", "p3"}
    )
    assert agreement.winner == A and sorted(agreement.committed_by) == ["me", "p1", "p3"]
