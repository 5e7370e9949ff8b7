"""Vote bodies, quorum sizes and the VoteBox: every way a vote must fail to count, plus a fuzz."""

import math
import random

import pytest

from p2pmodel.core import wire
from p2pmodel.core.errors import WireError
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.signed import canonical_pack, sign_message
from p2pmodel.versioning.quorum import VoteBox, continuity_votes, quorum_size, required_votes
from p2pmodel.versioning.semver import Version, next_version
from p2pmodel.versioning.votes import (
    VOTE_FIELDS,
    VOTE_KIND,
    VoteError,
    candidate_id,
    check_vote_body,
    electorate_hash,
    make_vote,
)

RUN = "run-0123456789abcdef"
D1, D2, OBJ = "1" * 64, "2" * 64, "f" * 64


@pytest.fixture(scope="module")
def ids():
    return [Identity.generate() for _ in range(5)]


def body_for(ident, electorate, *, round=10, digest=D1, verdict="accept", bump="patch", parent="v0.1.0", **kw):
    args = dict(
        run_id=RUN, round=round, digest=digest, object_sha256=OBJ, parent=parent,
        version=str(next_version(Version.parse(parent) if parent else None, bump)),
        metrics={"val_loss": 3.25, "ppl": 25.8}, verdict=verdict, bump=bump, voter=ident.peer_id,
        electorate=electorate, time=1000.0,
    )  # fmt: skip
    args.update(kw)
    return make_vote(**args)


def signed_vote(ident, electorate, **kw):
    return sign_message(ident, VOTE_KIND, body_for(ident, electorate, **kw))


def members(ids, k=4):
    return [i.peer_id for i in ids[:k]]


# --- ids and schema ----------------------------------------------------------------------------
def test_candidate_id_and_electorate_hash():
    a = candidate_id(RUN, 10, D1)
    assert len(a) == 64 and a == candidate_id(RUN, 10, D1)
    assert len({a, candidate_id(RUN, 11, D1), candidate_id(RUN, 10, D2), candidate_id(RUN + "x", 10, D1)}) == 4
    assert electorate_hash(["b", "a", "c"]) == electorate_hash(["c", "b", "a"]) == electorate_hash(["a", "b", "c", "a"])
    assert electorate_hash(["a", "b"]) != electorate_hash(["a", "b", "c"])
    with pytest.raises(ValueError):
        candidate_id(RUN, -1, D1)
    with pytest.raises(ValueError):
        candidate_id(RUN, 1, "xyz")


def test_make_vote_builds_a_valid_body(ids):
    body = body_for(ids[0], members(ids))
    assert sorted(body) == sorted(VOTE_FIELDS)
    assert body["candidate"] == candidate_id(RUN, 10, D1)
    assert body["electorate"] == electorate_hash(members(ids))
    assert body["version"] == "v0.1.1" and body["parent"] == "v0.1.0"
    assert check_vote_body(body) is body
    genesis = body_for(ids[0], members(ids), parent="")
    assert genesis["version"] == "v0.1.0" and genesis["parent"] == ""
    assert body_for(ids[0], members(ids), metrics={"acc": 1})["metrics"] == {"acc": 1.0}


@pytest.mark.parametrize(
    "field, value",
    [
        ("run_id", ""), ("run_id", "x" * 129), ("round", -1), ("round", 1.0), ("round", True), ("digest", "ab"),
        ("digest", "A" * 64), ("object_sha256", ""), ("candidate", "0" * 64), ("electorate", None),
        ("voter", ""), ("verdict", "maybe"), ("bump", "tiny"), ("time", float("nan")), ("time", -1.0),
        ("time", 5), ("parent", "v0.1"), ("version", "v0.1.2"), ("version", "v1.0.0"), ("version", "nope"),
        ("metrics", []), ("metrics", {"x": float("inf")}), ("metrics", {"x": 1}), ("metrics", {"": 1.0}),
        ("metrics", {"n" * 65: 1.0}), ("metrics", {f"m{i}": 1.0 for i in range(33)}), ("metrics", {1: 1.0}),
    ],
)  # fmt: skip
def test_check_vote_body_names_the_bad_field(ids, field, value):
    body = dict(body_for(ids[0], members(ids)))
    body[field] = value
    with pytest.raises(WireError) as e:
        check_vote_body(body)
    assert field in str(e.value) or (field in ("run_id", "round", "digest") and "candidate" in str(e.value))
    assert isinstance(e.value, ValueError)  # VoteError is both


def test_check_vote_body_exact_fields(ids):
    body = dict(body_for(ids[0], members(ids)))
    with pytest.raises(WireError):
        check_vote_body({**body, "extra": 1})
    del body["time"]
    with pytest.raises(WireError):
        check_vote_body(body)
    with pytest.raises(WireError):
        check_vote_body([1, 2])


def test_make_vote_validates(ids):
    with pytest.raises(VoteError):
        body_for(ids[0], members(ids), verdict="yes")
    with pytest.raises(ValueError):
        body_for(ids[0], members(ids), metrics={"loss": math.nan})
    with pytest.raises(ValueError):
        body_for(ids[0], members(ids), metrics={"loss": "3"}, version="v0.1.1")
    with pytest.raises(ValueError):
        body_for(ids[0], [""])


# --- quorum -------------------------------------------------------------------------------------
def test_quorum_sizes():
    assert [quorum_size(n) for n in range(1, 11)] == [1, 2, 3, 3, 4, 5, 5, 6, 7, 7]
    for n in range(1, 11):
        assert quorum_size(n) == (2 * n) // 3 + 1
        assert quorum_size(n, 0.8) == min(n, math.floor(0.8 * n) + 1)
        assert quorum_size(n, 1.0) == n  # unanimity
        assert 2 * quorum_size(n) > n  # two quorums always intersect
    assert [quorum_size(n, 0.8) for n in range(1, 11)] == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9]
    assert quorum_size(0) == 1
    for bad in (0.5, 0.4, 1.01, math.nan, True):
        with pytest.raises(ValueError):
            quorum_size(4, bad)
    with pytest.raises(ValueError):
        quorum_size(-1)


def test_required_votes_and_continuity():
    assert required_votes(4, "patch", 0.8) == 3
    assert required_votes(2, "patch", 0.8) == 2 and continuity_votes(3) == 2  # 2 survivors of 3 can tag
    assert continuity_votes(4) == 3 > 2  # a half of a tagged 4-swarm cannot: 2 of its parent's 4 voters
    assert required_votes(3, "minor", 0.8) == 3 and continuity_votes(4) <= 3  # 3 of the old 4 still can
    assert required_votes(6, "patch", 0.8) == 5  # a grown swarm needs its own quorum
    assert required_votes(5, "major", 0.8) == 5  # supermajority for MAJOR
    assert required_votes(10, "major", 0.9) == 10
    assert continuity_votes(0) == 0 and [continuity_votes(n) for n in range(1, 7)] == [1, 2, 2, 3, 3, 4]
    for n in range(1, 50):  # two disjoint sets can never both hold a continuity majority of the same parent
        assert 2 * continuity_votes(n) > n
    with pytest.raises(ValueError):
        required_votes(4, "huge", 0.8)
    with pytest.raises(ValueError):
        continuity_votes(-1)


# --- the vote box -----------------------------------------------------------------------------
def fresh_box(ids, k=4, allowlist=None):
    box = VoteBox(RUN, allowlist=allowlist)
    box.set_electorate(10, D1, members(ids, k))
    return box


def test_valid_votes_count(ids):
    box = fresh_box(ids)
    cand = candidate_id(RUN, 10, D1)
    for i in (2, 0, 1):
        assert box.add(signed_vote(ids[i], members(ids))) == (True, "counted")
    counted, reason = box.add(signed_vote(ids[3], members(ids), verdict="reject"))
    assert counted, reason
    assert box.accepting(cand) == [
        signed_vote(ids[i], members(ids)) for i in sorted(range(3), key=lambda i: ids[i].peer_id)
    ]
    assert len(box.votes(cand)) == 4 and {b["verdict"] for b in box.votes(cand)} == {"accept", "reject"}
    assert box.candidates() == [cand] and box.slot_taken("v0.1.1", ids[0].peer_id)


def _reenvelope(data, **changes):
    outer = wire.open_envelope(data, VOTE_KIND)
    outer.update(changes)
    return wire.envelope(VOTE_KIND, outer)


def test_refusals_count_nowhere(ids):
    box = fresh_box(ids, k=4, allowlist={i.peer_id for i in ids[:3]} | {ids[4].peer_id})
    cand = candidate_id(RUN, 10, D1)
    el = members(ids)
    good = signed_vote(ids[0], el)
    other_sig = wire.open_envelope(signed_vote(ids[1], el), VOTE_KIND)["sig"]
    body = body_for(ids[0], el)
    sig = wire.open_envelope(good, VOTE_KIND)["sig"]
    cases = {
        "forged signature": _reenvelope(good, sig=other_sig),
        "flipped signature": _reenvelope(good, sig=bytes([sig[0] ^ 1]) + sig[1:]),
        "tampered body": _reenvelope(good, body=canonical_pack({**body, "verdict": "reject"})),
        "key not matching PeerID": _reenvelope(good, pubkey=ids[1].public_key_bytes),
        "signer is not the voter": sign_message(ids[1], VOTE_KIND, body),
        "voter outside electorate": signed_vote(ids[4], el + [ids[4].peer_id]),
        "voter outside electorate (hash of snapshot)": signed_vote(ids[4], el),
        "voter outside allowlist": signed_vote(ids[3], el),
        "another run": sign_message(ids[0], VOTE_KIND, body_for(ids[0], el, run_id=RUN + "-other")),
        "replay from another round": signed_vote(ids[0], el, round=9),  # held, never counted here
        "other digest for the round": signed_vote(ids[0], el, digest=D2),
        "electorate hash mismatch": signed_vote(ids[0], el[:3]),
        "wrong kind": sign_message(ids[0], "tag", body),
        "not bytes": body,
        "empty": b"",
    }
    for name, data in cases.items():
        counted, reason = box.add(data)
        assert not counted, name
        assert reason and "\n" not in reason, name
        assert box.accepting(cand) == [] and box.candidates() == [], name
    # the genuine vote still counts afterwards
    assert box.add(good) == (True, "counted")


def test_second_vote_for_a_slot_is_refused(ids):
    box = fresh_box(ids)
    box.set_electorate(20, D2, members(ids))
    el = members(ids)
    c10, c20 = candidate_id(RUN, 10, D1), candidate_id(RUN, 20, D2)
    first = signed_vote(ids[0], el)
    assert box.add(first)[0]
    for second in (
        first,  # identical resend
        signed_vote(ids[0], el, verdict="reject"),  # changed mind
        signed_vote(ids[0], el, metrics={"val_loss": 1.0}),  # different metrics
        signed_vote(ids[0], el, round=20, digest=D2),  # same slot v0.1.1, another candidate
        signed_vote(ids[0], el, bump="minor"),  # same candidate, another slot: one vote per candidate
    ):
        counted, reason = box.add(second)
        assert not counted and "second vote" in reason
    assert box.accepting(c10) == [first] and [b["verdict"] for b in box.votes(c10)] == ["accept"]
    assert box.accepting(c20) == []
    # another voter and another slot are unaffected
    assert box.add(signed_vote(ids[1], el, round=20, digest=D2, bump="minor"))[0]
    assert box.add(signed_vote(ids[0], el, round=20, digest=D2, bump="minor"))[0]
    assert len(box.accepting(c20)) == 2


def test_a_reject_does_not_use_up_the_slot(ids):
    """A rejected candidate's version number is reused by the next candidate; accepting twice never is."""
    box = fresh_box(ids)
    box.set_electorate(20, D2, members(ids))
    el = members(ids)
    c20 = candidate_id(RUN, 20, D2)
    assert box.add(signed_vote(ids[0], el, verdict="reject"))[0]  # round 10's candidate for v0.1.1: rejected
    accept = signed_vote(ids[0], el, round=20, digest=D2)  # round 20's candidate for the same v0.1.1
    assert box.add(accept) == (True, "counted")
    assert box.accepting(c20) == [accept]
    counted, reason = box.add(signed_vote(ids[0], el, round=20, digest=D2, verdict="reject"))
    assert not counted and "second vote" in reason


def test_an_untagged_acceptance_frees_the_slot_after_reopen_rounds(ids):
    """Liveness: a candidate that never reached quorum does not block its voters forever; their old
    acceptance is retracted when they accept the later candidate, so it can never count for both."""
    box = VoteBox(RUN, reopen_after_rounds=10)  # windows of 10 rounds: round 10 and round 20 differ
    box.set_electorate(10, D1, members(ids))
    box.set_electorate(20, D2, members(ids))
    el = members(ids)
    c10, c20 = candidate_id(RUN, 10, D1), candidate_id(RUN, 20, D2)
    first = signed_vote(ids[0], el)
    assert box.add(first)[0] and box.accepting(c10) == [first]
    later = signed_vote(ids[0], el, round=20, digest=D2)
    assert box.add(later) == (True, "counted")
    assert box.accepting(c20) == [later] and box.accepting(c10) == []
    same_window = VoteBox(RUN, reopen_after_rounds=100)  # rounds 10 and 20 share a window: still refused
    same_window.set_electorate(10, D1, members(ids))
    same_window.set_electorate(20, D2, members(ids))
    assert same_window.add(first)[0] and not same_window.add(later)[0]
    strict = fresh_box(ids)  # without reopening, the slot stays taken
    strict.set_electorate(20, D2, members(ids))
    assert strict.add(first)[0] and not strict.add(later)[0]


def test_votes_are_held_until_the_electorate_is_set(ids):
    box = VoteBox(RUN)
    el = members(ids)
    cand = candidate_id(RUN, 10, D1)
    outsider = signed_vote(ids[4], el + [ids[4].peer_id])
    replay = signed_vote(ids[3], el, digest=D2)  # another digest claimed for round 10
    seconds = signed_vote(ids[0], el, verdict="reject")
    for data in [signed_vote(ids[0], el), signed_vote(ids[1], el), outsider, replay, seconds]:
        counted, reason = box.add(data)
        assert not counted and reason.startswith("held"), reason
    assert box.pending_count() == 5 and box.accepting(cand) == []
    box.set_electorate(11, D2, el)  # another round: nothing released
    assert box.pending_count() == 5
    box.set_electorate(10, D1, el)
    assert box.pending_count() == 0
    expected = {ids[0].peer_id: signed_vote(ids[0], el), ids[1].peer_id: signed_vote(ids[1], el)}
    assert box.accepting(cand) == [expected[v] for v in sorted(expected)]
    assert {b["voter"] for b in box.votes(cand)} == {ids[0].peer_id, ids[1].peer_id}
    assert all(b["verdict"] == "accept" for b in box.votes(cand))  # the first of ids[0]'s votes stands
    assert box.add(signed_vote(ids[2], el)) == (True, "counted")


def test_pending_is_bounded(ids):
    box = VoteBox(RUN, max_pending=3)
    el = members(ids)
    answers = [box.add(signed_vote(ids[i % 4], el, round=100 + i)) for i in range(4)]
    assert [a[1].startswith("held") for a in answers] == [True, True, True, False]
    assert box.pending_count() == 3
    per_voter = VoteBox(RUN)
    answers = [per_voter.add(signed_vote(ids[0], el, round=100 + i)) for i in range(10)]
    assert sum(a[1].startswith("held") for a in answers) == 8


def test_advance_drops_votes_no_electorate_will_judge_and_refuses_far_rounds(ids):
    box = VoteBox(RUN)
    el = members(ids)
    for r in (9, 10, 12, 2**62):  # before any commit, anything waits (bounded by max_pending)
        assert box.add(signed_vote(ids[0], el, round=r))[1].startswith("held")
    box.set_electorate(10, D1, el)  # round 10's vote is counted, the others wait
    assert box.pending_count() == 3
    box.advance(10, hold_ahead=4)  # round 9 will never get an electorate here, 2**62 is out of the window
    assert box.pending_count() == 1
    for r in (3, 9, 15, 2**62):
        counted, reason = box.add(signed_vote(ids[1], el, round=r))
        assert not counted and reason.startswith("refused") and "outside the rounds held" in reason, (r, reason)
    assert box.add(signed_vote(ids[1], el, round=14))[1].startswith("held")  # a faster peer's next candidate
    assert box.pending_count() == 2
    box.advance(14, hold_ahead=4)  # our commit of 14 came without us in its electorate: its votes go too
    assert box.pending_count() == 0
    assert box.add(signed_vote(ids[0], el, round=13))[1].startswith("refused")  # and do not come back


def test_first_snapshot_of_a_round_wins(ids):
    box = fresh_box(ids, k=2)
    box.set_electorate(10, D2, members(ids, 4))  # ignored
    assert box.electorate(10) == sorted(members(ids, 2))
    assert not box.add(signed_vote(ids[0], members(ids, 4)))[0]
    assert box.add(signed_vote(ids[0], members(ids, 2)))[0]
    with pytest.raises(ValueError):
        box.set_electorate(11, D1, [])
    with pytest.raises(ValueError):
        box.set_electorate(11, "zz", members(ids))


# --- fuzz ---------------------------------------------------------------------------------------
_BAD_VALUES = [None, True, -1, 2**63, 1.5, math.nan, math.inf, "", "x" * 200, b"\x00", [], {}, [1], {"a": 1}]


def _malformed_bodies(rng, ident, el, n):
    """Bodies that are each certainly invalid: a field removed, added or replaced by a bad value."""
    base = body_for(ident, el)
    for _ in range(n):
        body = dict(base)
        op = rng.randrange(6)
        field = rng.choice(VOTE_FIELDS)
        if op == 0:
            del body[field]
        elif op == 1:
            body[rng.choice(["extra", "Voter", "", "sig"])] = rng.choice(_BAD_VALUES + ["x"])
        elif op == 2:
            bad = [v for v in _BAD_VALUES if not (field == "metrics" and v == {})]
            body[field] = rng.choice(bad)
        elif op == 3:
            body["metrics"] = rng.choice(
                [{"a": math.nan}, {"a": 1}, {"": 0.5}, {"a" * 65: 0.5}, {f"m{i}": 0.1 for i in range(40)}, {3: 1.0}]
            )
        elif op == 4:
            body["version"] = rng.choice(["v0.1.2", "v0.2.1", "v2.0.0", "v0.1.0", "0.1", "latest"])
        else:
            body[rng.choice(["digest", "round", "run_id"])] = rng.choice([D2, 11, RUN + "z"])  # candidate mismatch
        yield body


def _mutations(rng, data, n):
    for _ in range(n):
        b = bytearray(data)
        op = rng.randrange(4)
        if op == 0:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            b = b[: rng.randrange(len(b))]
        elif op == 2:
            i = rng.randrange(len(b))
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        else:
            b = bytearray(rng.randbytes(rng.randint(0, 600)))
        if bytes(b) != data:
            yield bytes(b)


def test_fuzz_malformed_votes_never_raise_never_count(ids):
    rng = random.Random(1234)
    el = members(ids)
    box = fresh_box(ids)
    good = signed_vote(ids[0], el)
    inputs = [sign_message(ids[1], VOTE_KIND, b) for b in _malformed_bodies(rng, ids[1], el, 400)]
    inputs += list(_mutations(rng, good, 1200))
    shells = _BAD_VALUES[9:] + [{"body": b"", "signer": "", "pubkey": b"", "sig": b""}]
    inputs += [wire.envelope(VOTE_KIND, rng.choice(shells)) for _ in range(20)]
    inputs += [wire.pack(v) for v in _BAD_VALUES] + [None, 42, "vote", bytearray(b"\x80")]
    assert len(inputs) >= 1000
    for data in inputs:
        counted, reason = box.add(data)
        assert counted is False and isinstance(reason, str) and reason
    assert box.candidates() == [] and box.pending_count() == 0
    assert box.add(good) == (True, "counted")  # the box still works
