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


# --- digests by gossip, the DHT as the fallback ------------------------------------------------------------------

RUN = "r"
C = "c" * 64


def _body(round_, digest=A, blob=C, size=10, **extra):
    return {"run_id": RUN, "round": round_, "digest": digest, "blob": blob, "size": size, "time": 1.0, **extra}


def test_digest_messages_are_checked_field_by_field():
    assert commit.valid_digest_message(_body(3), RUN)
    assert commit.valid_digest_message(_body(3, blob="", size=0), RUN)  # a vote without a package
    bad = [
        _body(3, extra=1),
        {k: v for k, v in _body(3).items() if k != "blob"},
        {**_body(3), "run_id": "other"},
        _body(0),
        _body(True),
        _body(2**63),
        _body(3, digest=""),
        _body(3, digest="A" * 64),
        _body(3, blob="x"),
        _body(3, size=-1),
        _body(3, size=1.5),
        "not a map",
    ]
    assert not any(commit.valid_digest_message(b, RUN) for b in bad)


def test_the_box_keeps_rounds_near_the_commit_and_each_signers_latest_offer():
    box = commit.DigestBox(window=2)
    kept = [r for r in range(1, 50) if box.add("p1", _body(r), committed=10)]
    assert kept == [9, 10, 11, 12]  # a signed message for any round cannot grow the map
    assert box.digests(11) == {"p1": A} and box.digests(20) == {}
    assert box.latest() == [
        {"peer_id": "p1", "round": 49, "digest": A, "blob": C, "size": 10, "patch": "", "patch_size": 0}
    ]
    box.add("p1", _body(5), committed=10)  # an older one does not replace the newest
    assert box.latest()[0]["round"] == 49
    box.add("p2", _body(11, digest=B), committed=10)
    box.add("p3", _body(11, blob=""), committed=10)
    assert box.offers(11, A) == {
        "p1": {"peer_id": "p1", "round": 11, "digest": A, "blob": C, "size": 10, "patch": "", "patch_size": 0}
    }
    assert box.offers(11, B).keys() == {"p2"}
    box.add("p1", _body(13), committed=12)  # a later commit drops what is now too old
    assert box.digests(9) == {} and box.digests(10) == {}


def test_the_box_is_bounded_per_round_and_in_signers(monkeypatch):
    monkeypatch.setattr(commit, "MAX_PER_ROUND", 3)
    monkeypatch.setattr(commit, "MAX_LATEST", 5)
    box = commit.DigestBox()
    for i in range(10):
        box.add(f"p{i}", _body(1), committed=0)
    assert len(box.digests(1)) == 3 and len(box.latest()) == 5
    box.add("p0", _body(1, digest=B), committed=0)  # a known signer may still correct itself
    assert box.digests(1)["p0"] == B


class FakeGossip:
    """Delivers our own publish to the subscribed handler; records pulls; ``fail`` makes publish raise."""

    def __init__(self, me="me"):
        self.me, self.handlers, self.pulls, self.fail = me, {}, [], False

    def subscribe(self, kind, handler, direct=False):
        assert direct
        self.handlers[kind] = handler

    def unsubscribe(self, kind):
        self.handlers.pop(kind, None)

    def deliver(self, signer, body):
        return self.handlers[commit.DIGEST_KIND](SimpleNamespace(signer=signer, body=body))

    def publish(self, kind, body):
        if self.fail:
            from p2pmodel.core.errors import SwarmError

            raise SwarmError("no peers")
        self.deliver(self.me, {**body, "time": 1.0})

    def catch_up(self, kind, n_peers, peers=None, limit=None):
        self.pulls.append((kind, sorted(peers)))


@pytest.fixture
def gossip_step(monkeypatch):
    stored, reads = [], []
    in_dht: dict[str, str] = {}
    monkeypatch.setattr(commit, "publish_digest", lambda dht, who, run, r, digest, ttl: stored.append((r, digest)))
    monkeypatch.setattr(commit, "get_digests", lambda *a: reads.append(1) or dict(in_dht))
    monkeypatch.setattr(commit, "LOCAL_POLL_S", 0.005)
    monkeypatch.setattr(commit, "_in_thread", lambda job: job())  # run the fallback's jobs inline
    g = FakeGossip()
    cs = CommitStep(
        None,
        SimpleNamespace(peer_id="me"),
        RUN,
        60,
        gossip=g,
        committed=lambda: 4,
        fallback_after_s=0.05,
        dht_poll_s=0.02,
    )
    return cs, g, stored, reads, in_dht


def test_pushed_digests_end_the_step_without_the_dht(gossip_step):
    cs, g, stored, reads, _ = gossip_step
    g.deliver("p1", _body(5))
    g.deliver("p2", _body(5))
    agreement = cs.agree(
        5,
        A,
        participants=lambda: {"p1", "p2"},
        eligible=lambda: {"p1", "p2"},
        deadline_s=5,
        offer={"blob": C, "size": 10},
    )
    assert agreement.winner == A and agreement.committed_by == ["me", "p1", "p2"] and not agreement.missing
    assert stored == [] and reads == [] and cs.fallbacks == 0
    assert cs.offers(5, A).keys() == {"me", "p1", "p2"}  # our vote named the package we serve


def test_a_missing_digest_is_pulled_from_its_peer_then_read_from_the_dht(gossip_step):
    cs, g, stored, reads, in_dht = gossip_step
    g.deliver("p1", _body(5))
    in_dht["p2"] = A  # p2's push never arrived; its record is in the DHT
    agreement = cs.agree(5, A, participants=lambda: {"p1", "p2", "p3"}, eligible=set, deadline_s=0.5)
    assert g.pulls and g.pulls[0] == (commit.DIGEST_KIND, ["p2", "p3"])  # asked the missing ones themselves
    assert stored == [(5, A)] and reads and cs.fallbacks == 1  # and stored our own vote where they would look
    assert agreement.committed_by == ["me", "p1", "p2"] and agreement.missing == ["p3"]


def test_a_failed_push_goes_to_the_dht_at_once(gossip_step):
    cs, g, stored, _, _ = gossip_step
    g.fail = True
    cs.agree(5, A, participants=set, eligible=set, deadline_s=1)
    assert stored == [(5, A)]


def test_digests_of_strangers_and_other_runs_are_refused(gossip_step):
    cs, g, *_ = gossip_step
    assert not g.deliver("p1", {**_body(5), "run_id": "other"})
    assert not g.deliver("p1", _body(500))  # far from our commit: not stored, not forwarded
    agreement = cs.agree(5, B, participants=set, eligible=set, deadline_s=0.1)
    assert agreement.winner == B  # p1's round-500 message is not a vote for round 5


def test_a_peer_sitting_out_reads_the_others_votes_without_casting_one(gossip_step):
    """node/sit_out.py: its state would only tip the others' ties, and its link is the slow one; it still learns the
    winner, and how many held it (what judges its next rounds)."""
    cs, g, stored, _, _ = gossip_step
    g.fail = True  # any push would raise: none is tried
    g.deliver("p1", _body(5))
    g.deliver("p2", _body(5))
    agreement = cs.agree(5, B, participants=lambda: {"p1", "p2"}, eligible=set, deadline_s=0.5, vote=False)
    assert agreement.winner == A and agreement.winner_votes == 2
    assert stored == [] and "me" not in cs.box.digests(5)  # neither pushed nor stored in the DHT


def test_a_peer_sitting_out_reads_the_others_tie_as_they_do_not_tipped_by_its_own_state(gossip_step):
    """Two voters split 1-1; the others break the tie to the smallest digest. Counting its own state (B) would make
    the peer sitting out pick B while every voter commits A: it would have forked itself."""
    cs, g, _, _, _ = gossip_step
    g.deliver("p1", _body(5))
    g.deliver("p2", _body(5, digest=B))
    agreement = cs.agree(5, B, participants=lambda: {"p1", "p2"}, eligible=set, deadline_s=0.5, vote=False)
    assert agreement.winner == A and agreement.winner_votes == 1 and agreement.committed_by == ["p1", "p2"]


def test_a_vote_cast_early_is_pushed_once_and_the_commit_step_only_waits(gossip_step):
    """The overlapped schedule votes mid-phase (Exchange.vote); its commit step then reads the others' votes."""
    cs, g, stored, _, _ = gossip_step
    published = []
    deliver = g.publish
    g.publish = lambda kind, body: published.append(body["round"]) or deliver(kind, body)
    cs.vote_early(5, A, {})
    g.deliver("p1", _body(5))
    agreement = cs.agree(5, A, participants=lambda: {"p1"}, eligible=set, deadline_s=2)
    assert published == [5] and stored == [] and cs.box.digests(5) == {"me": A, "p1": A}
    assert agreement.winner == A and agreement.missing == []
    cs.agree(6, A, participants=set, eligible=set, deadline_s=0.1)  # another round: its own push
    assert published == [5, 6]
