"""The authorship record: per-round contributions kept until a tag covers them, the tally a vote carries, and
the contributors a tag's votes agree on (node/contributions.py, versioning/tag.contributors)."""

import pytest

from p2pmodel.core.errors import WireError
from p2pmodel.node.contributions import ContributionLog
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.signed import sign_message
from p2pmodel.versioning.tag import build_tag, contributors, verify_tag
from p2pmodel.versioning.votes import MAX_CONTRIBUTORS, VOTE_KIND, check_vote_body, make_vote

RUN = "run-0123456789abcdef"
D1, OBJ = "1" * 64, "f" * 64


@pytest.fixture(scope="module")
def ids():
    return sorted((Identity.generate() for _ in range(4)), key=lambda i: i.peer_id)


def _vote(ident, electorate, contributors_=None):
    body = make_vote(
        run_id=RUN, round=4, digest=D1, object_sha256=OBJ, parent="", version="v0.1.0", metrics={"val_loss": 3.0},
        verdict="accept", bump="patch", voter=ident.peer_id, electorate=electorate, time=1000.0,
        contributors=contributors_,
    )  # fmt: skip
    return sign_message(ident, VOTE_KIND, body)


@pytest.mark.timeout(10)
def test_the_log_tallies_rounds_since_the_parent_and_survives_a_restart(tmp_path):
    log = ContributionLog(tmp_path / "c.json")
    log.record(1, {"a": 10, "b": 20}, covered=0)
    log.record(2, {}, covered=0)  # adopted another state: unknown, nothing recorded
    log.record(3, {"a": 5, "c": 1}, covered=0)
    assert log.tally(0, 3) == [["a", 15], ["b", 20], ["c", 1]]
    assert log.tally(1, 3) == [["a", 5], ["c", 1]]
    again = ContributionLog(tmp_path / "c.json")
    assert again.tally(0, 3) == log.tally(0, 3)
    again.record(4, {"b": 2}, covered=3)  # a tag at round 3: its rounds are dropped
    assert again.get(1) is None and again.tally(0, 4) == [["b", 2]]
    again.record(2, {"z": 1}, covered=0)  # re-synced back to round 2: the rounds after it were another state's
    assert again.get(4) is None and again.tally(0, 9) == [["z", 1]]


@pytest.mark.timeout(10)
def test_the_tally_keeps_the_largest_contributors_past_the_bound(tmp_path):
    log = ContributionLog(tmp_path / "c.json")
    log.record(1, {f"peer{i:04d}": i for i in range(MAX_CONTRIBUTORS + 10)}, covered=0)
    tally = log.tally(0, 1)
    assert len(tally) == MAX_CONTRIBUTORS and min(n for _, n in tally) == 10
    assert [p for p, _ in tally] == sorted(p for p, _ in tally)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "bad",
    [[["b", 1], ["a", 2]], [["a", 1], ["a", 2]], [["a", -1]], [["a", 1.5]], [["", 1]], [["a"]], "a", [["a", True]]],
)
def test_a_vote_with_a_malformed_contributor_list_is_refused(ids, bad):
    body = make_vote(
        run_id=RUN, round=4, digest=D1, object_sha256=OBJ, parent="", version="v0.1.0", metrics={},
        verdict="accept", bump="patch", voter=ids[0].peer_id, electorate=[ids[0].peer_id], time=1.0,
    )  # fmt: skip
    check_vote_body(body)  # without the optional field: valid
    with pytest.raises(WireError, match="contributors"):
        check_vote_body({**body, "contributors": bad})


@pytest.mark.timeout(10)
def test_a_tag_credits_the_list_most_of_its_votes_record(ids):
    electorate = [i.peer_id for i in ids]
    full = [[ids[0].peer_id, 80], [ids[1].peer_id, 40]]
    partial = [[ids[1].peer_id, 20]]  # a voter that joined late recorded less
    votes = [_vote(ids[0], electorate, full), _vote(ids[1], electorate, full), _vote(ids[2], electorate, partial)]
    cert = build_tag(votes=votes, electorate=electorate, parent_cert=None)
    verify_tag(cert, None)
    assert contributors(cert) == (full, 2)
    legacy = build_tag(votes=[_vote(i, electorate) for i in ids[:3]], electorate=electorate, parent_cert=None)
    verify_tag(legacy, None)
    assert contributors(legacy) == ([], 0)
