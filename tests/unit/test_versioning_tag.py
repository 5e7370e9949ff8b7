"""Tags: build_tag / verify_tag round trip and every way a certificate must fail to verify."""

import copy

import pytest

from p2pmodel.core import wire
from p2pmodel.core.errors import IntegrityError, WireError
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.signed import sign_message
from p2pmodel.versioning.quorum import VoteBox
from p2pmodel.versioning.semver import Version, next_version
from p2pmodel.versioning.tag import TAG_FIELDS, build_tag, decode_tag, encode_tag, tag_id, verify_tag
from p2pmodel.versioning.votes import VOTE_KIND, candidate_id, make_vote

RUN = "run-0123456789abcdef"
D1, D2, D3, OBJ = "1" * 64, "2" * 64, "3" * 64, "f" * 64


@pytest.fixture(scope="module")
def ids():
    return sorted((Identity.generate() for _ in range(6)), key=lambda i: i.peer_id)


def vote(ident, electorate, *, round, digest, parent, bump="patch", verdict="accept", loss=3.0, run_id=RUN):
    body = make_vote(
        run_id=run_id, round=round, digest=digest, object_sha256=OBJ, parent=parent,
        version=str(next_version(Version.parse(parent) if parent else None, bump)),
        metrics={"val_loss": loss, "ppl": 2 * loss}, verdict=verdict, bump=bump, voter=ident.peer_id,
        electorate=[m for m in electorate], time=1000.0 + round,
    )  # fmt: skip
    return sign_message(ident, VOTE_KIND, body)


def peers(ids, k):
    return [i.peer_id for i in ids[:k]]


@pytest.fixture(scope="module")
def genesis(ids):
    el = peers(ids, 4)
    votes = [vote(i, el, round=10, digest=D1, parent="", loss=3.0 + n) for n, i in enumerate(ids[:3])]
    return build_tag(votes=votes, electorate=el, parent_cert=None, major_fraction=0.8)


def child_votes(ids, k=4, voters=None, **kw):
    el = peers(ids, k)
    kw = {"round": 20, "digest": D2, "parent": "v0.1.0", **kw}
    return el, [vote(i, el, **kw) for i in (voters if voters is not None else ids[:k])]


def test_genesis_round_trip(ids, genesis):
    assert sorted(genesis) == sorted(TAG_FIELDS)
    assert genesis["version"] == "v0.1.0" and genesis["parent"] == "" and genesis["bump"] == "patch"
    assert genesis["candidate"] == candidate_id(RUN, 10, D1) and genesis["round"] == 10
    assert genesis["electorate"] == sorted(peers(ids, 4)) and genesis["required"] == 3
    assert len(genesis["votes"]) == 3 and genesis["metrics"] == {"ppl": 8.0, "val_loss": 4.0}
    assert genesis["time"] == 1010.0
    verify_tag(genesis, None)
    assert decode_tag(encode_tag(genesis)) == genesis
    verify_tag(decode_tag(encode_tag(genesis)), None)
    assert len(tag_id(genesis)) == 64


def test_child_round_trip_and_tag_id(ids, genesis):
    el, votes = child_votes(ids)
    cert = build_tag(votes=votes, electorate=el, parent_cert=genesis, major_fraction=0.8)
    assert cert["version"] == "v0.1.1" and cert["parent"] == "v0.1.0" and len(cert["votes"]) == 4
    verify_tag(cert, genesis)
    verify_tag(cert, genesis, allowlist=set(peers(ids, 4)))
    fewer = build_tag(votes=votes[1:], electorate=el, parent_cert=genesis, major_fraction=0.8)
    assert tag_id(fewer) == tag_id(cert)  # same assertion, another vote subset
    other = build_tag(
        votes=child_votes(ids, digest=D3, round=30)[1], electorate=el, parent_cert=genesis, major_fraction=0.8
    )
    assert tag_id(other) != tag_id(cert)


def test_build_tag_from_a_vote_box(ids, genesis):
    el = peers(ids, 4)
    box = VoteBox(RUN)
    box.set_electorate(20, D2, el)
    for i in ids[:3]:
        assert box.add(vote(i, el, round=20, digest=D2, parent="v0.1.0"))[0]
    assert box.add(vote(ids[3], el, round=20, digest=D2, parent="v0.1.0", verdict="reject"))[0]
    cert = build_tag(
        votes=box.accepting(candidate_id(RUN, 20, D2)), electorate=el, parent_cert=genesis, major_fraction=0.8
    )
    assert len(cert["votes"]) == 3
    verify_tag(cert, genesis)


def test_build_tag_leaves_out_bad_votes_and_refuses_without_quorum(ids, genesis):
    el, votes = child_votes(ids)
    outsider = vote(ids[5], el, round=20, digest=D2, parent="v0.1.0")
    reject = vote(ids[3], el, round=20, digest=D2, parent="v0.1.0", verdict="reject")
    other = vote(ids[2], el, round=20, digest=D3, parent="v0.1.0")
    cert = build_tag(
        votes=votes[:2] + [outsider, reject, other, b"junk", votes[0], votes[2]],
        electorate=el, parent_cert=genesis, major_fraction=0.8,
    )  # fmt: skip
    assert cert["votes"] == sorted(votes[:3], key=lambda v: wire.open_envelope(v)["signer"])
    with pytest.raises(ValueError, match="quorum"):
        build_tag(votes=votes[:2] + [reject, outsider, other], electorate=el, parent_cert=genesis, major_fraction=0.8)
    with pytest.raises(ValueError, match="quorum"):
        build_tag(votes=[], electorate=el, parent_cert=genesis, major_fraction=0.8)
    with pytest.raises(ValueError, match="quorum"):  # votes that name another parent
        build_tag(votes=votes, electorate=el, parent_cert=None, major_fraction=0.8)


def test_halves_cannot_tag(ids, genesis):
    # the 4-voter swarm that tagged v0.1.0 splits in halves of 2: each needs accepts of 3 of the parent's 4 voters
    for half in (ids[:2], ids[2:4]):
        el = [i.peer_id for i in half]
        votes = [vote(i, el, round=20, digest=D2, parent="v0.1.0") for i in half]
        with pytest.raises(ValueError, match="quorum"):
            build_tag(votes=votes, electorate=el, parent_cert=genesis, major_fraction=0.8)
        forged = {
            "version": "v0.1.1", "run_id": RUN, "digest": D2, "object_sha256": OBJ, "parent": "v0.1.0",
            "round": 20, "candidate": candidate_id(RUN, 20, D2), "bump": "patch", "electorate": sorted(el),
            "required": 2, "metrics": {"ppl": 6.0, "val_loss": 3.0}, "votes": votes, "time": 1020.0,
        }  # fmt: skip
        with pytest.raises(IntegrityError, match="2 accepting votes of the parent's 4 voters, 3 required"):
            verify_tag(forged, genesis)  # each half's own quorum (2 of 2) is there, continuity is not
        with pytest.raises(IntegrityError, match="required is 3, expected 2"):
            verify_tag({**forged, "required": 3}, genesis)


def test_survivors_of_a_crash_keep_tagging(ids, genesis):
    # one of the 4 voters of v0.1.0 crashed: the 3 others (electorate 3) tag v0.1.1 with 3 of the parent's 4;
    # after that the electorate of v0.1.1 is the parent, and 2 of its 3 may tag again if one more leaves
    el = [i.peer_id for i in ids[:3]]
    cert = build_tag(votes=[vote(i, el, round=20, digest=D2, parent="v0.1.0") for i in ids[:3]], electorate=el,
                     parent_cert=genesis)  # fmt: skip
    verify_tag(cert, genesis)
    el2 = [i.peer_id for i in ids[:2]]
    votes2 = [vote(i, el2, round=22, digest=D1, parent="v0.1.1") for i in ids[:2]]
    child = build_tag(votes=votes2, electorate=el2, parent_cert=cert)
    assert child["version"] == "v0.1.2" and child["required"] == 2
    # but two newcomers alone cannot continue the parent's lineage, whatever their own quorum
    newcomers = [i.peer_id for i in ids[3:5]]
    with pytest.raises(ValueError, match="quorum"):
        build_tag(votes=[vote(i, newcomers, round=22, digest=D1, parent="v0.1.1") for i in ids[3:5]],
                  electorate=newcomers, parent_cert=cert)  # fmt: skip


def test_major_needs_the_supermajority(ids, genesis):
    el, votes = child_votes(ids, k=5, bump="major")
    with pytest.raises(ValueError, match="quorum"):
        build_tag(votes=votes[:4], electorate=el, parent_cert=genesis, major_fraction=0.8)  # 4 of 5 < 5
    cert = build_tag(votes=votes, electorate=el, parent_cert=genesis, major_fraction=0.8)
    assert cert["version"] == "v1.0.0" and cert["required"] == 5
    verify_tag(cert, genesis)
    with pytest.raises(IntegrityError, match="required"):
        verify_tag(cert, genesis, major_fraction=2 / 3)  # a verifier with another policy disagrees


@pytest.fixture(scope="module")
def child(ids, genesis):
    el, votes = child_votes(ids)
    return build_tag(votes=votes[:3], electorate=el, parent_cert=genesis, major_fraction=0.8)


def _with(cert, **changes):
    out = copy.deepcopy(cert)
    out.update(changes)
    return out


def test_verify_rejects(ids, genesis, child):
    el = peers(ids, 4)
    v = child["votes"]
    reject = vote(ids[3], el, round=20, digest=D2, parent="v0.1.0", verdict="reject")
    other_candidate = vote(ids[3], el, round=21, digest=D2, parent="v0.1.0")
    outsider = vote(ids[5], el, round=20, digest=D2, parent="v0.1.0")
    wrong_el = vote(ids[3], el[:3] + [ids[5].peer_id], round=20, digest=D2, parent="v0.1.0")
    forged = wire.open_envelope(v[0], VOTE_KIND)
    forged["sig"] = bytes([forged["sig"][0] ^ 1]) + forged["sig"][1:]
    cases = {
        "too few votes": (_with(child, votes=v[:2]), "2 accepting votes, 3 required"),
        "duplicated voter": (_with(child, votes=v + [v[0]]), "twice"),
        "another candidate's vote": (_with(child, votes=v + [other_candidate]), "candidate"),
        "version arithmetic": (_with(child, version="v0.2.0"), "is not patch"),
        "bump does not give the version": (_with(child, bump="minor"), "is not minor"),
        "wrong parent field": (_with(child, parent="v0.1.5"), "parent"),
        "reject counted as accept": (_with(child, votes=v + [reject]), "not an accept"),
        "outsider's vote": (_with(child, votes=v + [outsider]), "outside the electorate"),
        "vote with another electorate": (_with(child, votes=v + [wrong_el]), "another electorate"),
        "forged signature": (_with(child, votes=[wire.envelope(VOTE_KIND, forged)] + v[1:]), "signature"),
        "garbage vote": (_with(child, votes=v + [b"\x00" * 10]), "vote 3"),
        "metrics not the median": (_with(child, metrics={"ppl": 6.0, "val_loss": 1.0}), "median"),
        "injected metric": (_with(child, metrics={**child["metrics"], "acc": 1.0}), "median"),
        "required understated": (_with(child, required=2), "required"),
        "candidate mismatch": (_with(child, digest=D3), "candidate"),
        "run mismatch": (_with(child, run_id=RUN + "x"), "run"),
        "electorate unsorted": (_with(child, electorate=child["electorate"][::-1]), "electorate"),
        "electorate enlarged": (_with(child, electorate=sorted(child["electorate"] + [ids[5].peer_id])), "required"),
        "extra field": (_with(child, extra=1), "fields"),
        "missing field": ({k: x for k, x in child.items() if k != "time"}, "fields"),
        "version spelling": (_with(child, version="0.1.1"), "vX.Y.Z"),
        "not a dict": ([], "fields"),
    }
    for name, (cert, match) in cases.items():
        with pytest.raises(IntegrityError, match=match):
            verify_tag(cert, genesis)
        assert name
    verify_tag(child, genesis)  # the original is untouched


def test_verify_rejects_wrong_parent_cert(ids, genesis, child):
    with pytest.raises(IntegrityError, match="parent"):
        verify_tag(child, None)  # claims a parent, none given
    with pytest.raises(IntegrityError, match="parent"):
        verify_tag(genesis, child)  # the genesis has no parent
    with pytest.raises(IntegrityError, match="parent"):
        verify_tag(child, _with(genesis, version="v0.1.1"))
    with pytest.raises(IntegrityError, match="another run"):
        verify_tag(child, _with(genesis, run_id=RUN + "x"))
    with pytest.raises(IntegrityError, match="round"):
        verify_tag(child, _with(genesis, round=20))


def test_verify_allowlist(ids, genesis, child):
    with pytest.raises(IntegrityError, match="allowlist"):
        verify_tag(child, genesis, allowlist=set(peers(ids, 4)) - {ids[1].peer_id})


def test_decode_tag_refuses_bad_bytes(child):
    with pytest.raises(WireError):
        decode_tag(b"\xc1")
    with pytest.raises(IntegrityError):
        decode_tag(wire.pack({"version": "v0.1.1"}))
