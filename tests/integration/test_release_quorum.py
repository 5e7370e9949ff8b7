"""Releases by quorum among real peers on 127.0.0.1, in-process: real hivemind DHTs, real ``Gossip`` and the
real ``Releases`` class (its votes, VoteBox, tags, ledger), with light stand-ins only for the trainer-side
objects it reads (``peer``: run_id, digest, last_report, store; ``link``: dht, identity, peer_ids, providers).

Covers: a deliberately damaged candidate is rejected by the honest peers and never tagged, even with a
dishonest voter accepting it; a candidate regressing on one named eval set is rejected though the rest improve;
forged, outsider, replayed and repeated votes sent through gossip count nowhere;
a swarm split in two halves cannot tag in either half, and a ledger refuses a second certificate for a version;
the survivors of a crash keep tagging, and a peer that joins later fetches the ledger before it votes.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from p2pmodel.config import load_config
from p2pmodel.core import wire
from p2pmodel.core.errors import IntegrityError
from p2pmodel.core.ids import sha256_hex
from p2pmodel.eval import EvalReport, evaluate, state_digest
from p2pmodel.gossip import Gossip, frames
from p2pmodel.node.release import Releases
from p2pmodel.swarm.aio import run_sync
from p2pmodel.swarm.blobs import BlobServer
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.signed import sign_message
from p2pmodel.testing.dht import identity_dhts
from p2pmodel.versioning.ledger import Ledger
from p2pmodel.versioning.quorum import continuity_votes, required_votes
from p2pmodel.versioning.store import Store
from p2pmodel.versioning.tag import build_tag, tag_id
from p2pmodel.versioning.votes import VOTE_KIND, candidate_id, make_vote

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.toml"
FAST = ["eval.batches=2", "data.max_corpus_bytes=2000000", "versioning.release_every=2"]
N_DHTS = 4


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """N_DHTS real DHT peers on 127.0.0.1 whose libp2p keys are also their signing identities."""
    with identity_dhts(N_DHTS, tmp_path_factory.mktemp("keys")) as pair:
        yield pair


class StubPeer:
    """What Releases reads from a training peer: the committed state's digest, its eval, a real Store."""

    def __init__(self, run_id: str, data_dir: Path):
        self.run_id, self.store = run_id, Store(data_dir)
        self.digest: str | None = None
        self.last_report: EvalReport | None = None

    def commit(self, digest: str, report: EvalReport) -> None:
        self.digest, self.last_report = digest, report

    def patch_refs(self, parent, round_):  # no round objects here: votes name no patch
        return None, None


class StubLink:
    """What Releases reads from the SwarmLink: the real DHT and identity, and whom to gossip with."""

    def __init__(self, dht, identity: Identity, peers: list[str]):
        self.dht, self.identity, self.peers, self.providers = dht, identity, list(peers), []
        self.gossip = Gossip(dht, identity, peers=self.peer_ids)

    def peer_ids(self) -> list[str]:
        return [p for p in self.peers if p != self.identity.peer_id]


class Node:
    def __init__(self, releases: Releases, peer: StubPeer, link: StubLink):
        self.releases, self.peer, self.link = releases, peer, link
        self.id = link.identity.peer_id

    @property
    def versions(self) -> list[str]:
        return [c["version"] for c in self.releases.ledger.all()]


def _start_nodes(net, which: list[int], run_id: str, root: Path, overrides=(), peers: list[int] | None = None):
    dhts, idents = net
    cfg = load_config(TINY, [*FAST, *overrides])
    gossip_with = [idents[i].peer_id for i in (which if peers is None else peers)]
    nodes = []
    try:
        for i in which:
            peer = StubPeer(run_id, root / f"peer{i}")
            link = StubLink(dhts[i], idents[i], gossip_with)
            try:
                nodes.append(Node(Releases(cfg, peer, link, root / f"peer{i}"), peer, link))
            except BaseException:
                link.gossip.close()  # the link owns its gossip, as SwarmLink does
                raise
    except BaseException:
        _close(nodes)
        raise
    return nodes


def _close(nodes) -> None:
    for n in nodes:
        n.releases.close()
        n.link.gossip.close()


def _wait(cond, timeout_s: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def _report(val_loss: float, digest: str) -> EvalReport:
    return EvalReport(val_loss=val_loss, perplexity=math.exp(val_loss), tokens=4096, digest=digest)


def _commit_all(nodes, round_: int, digest: str, reports, members: list[str]) -> None:
    """Every node committed ``round_`` on ``digest``: set its eval, then run its commit hook (votes)."""
    for n, rep in zip(nodes, reports, strict=True):
        n.peer.commit(digest, rep)
    for n in nodes:
        n.releases.on_commit(round_, members)


def _counted(node: Node, round_: int, digest: str) -> list[dict]:
    return node.releases.box.votes(candidate_id(node.peer.run_id, round_, digest))


@pytest.mark.timeout(150)
def test_damaged_candidate_is_rejected_and_never_tagged(net, tmp_path):
    """v0.1.0 is tagged for a good state; a later candidate whose parameters were scaled by noise evaluates far
    worse, the three honest peers vote reject, a dishonest fourth voter (in the electorate, signing with its
    own key) accepts it: 1 accepting vote of the 3 required, so v0.1.1 never appears anywhere."""
    cfg = load_config(TINY, FAST)
    from p2pmodel.data import load_corpus
    from p2pmodel.models import build_model

    d = cfg.data
    corpus = load_corpus(d.source, d.paths, d.max_corpus_bytes, d.val_fraction, cfg.model.seq_len + 2)
    model = build_model(cfg.model, cfg.train.seed)
    good_state = {k: v.detach().clone() for k, v in model.named_parameters()}

    def eval_state(state) -> EvalReport:
        m = build_model(cfg.model, cfg.train.seed)
        m.load_state_dict(state, strict=False)  # head.weight is tok.weight (tied)
        return evaluate(m, corpus.val, cfg.model.seq_len, cfg.eval.batches, cfg.eval.batch_size)

    gen = torch.Generator().manual_seed(7)
    bad_state = {k: v * (1 + 4 * torch.randn(v.shape, generator=gen)) for k, v in good_state.items()}
    good_digest, bad_digest = state_digest(good_state), state_digest(bad_state)

    dhts, idents = net
    honest, liar = [0, 1, 2], 3
    nodes = _start_nodes(net, [*honest, liar], "run-damaged", tmp_path)
    a, b, c, m = nodes
    try:
        # round 2: the three honest peers commit a good state, each evaluates it itself; all accept
        members2 = [a.id, b.id, c.id]
        _commit_all([a, b, c], 2, good_digest, [eval_state(good_state) for _ in range(3)], members2)
        assert _wait(lambda: all(n.versions == ["v0.1.0"] for n in nodes), 20), [n.versions for n in nodes]
        v010 = a.releases.ledger.get("v0.1.0")
        assert v010["digest"] == good_digest and len(v010["votes"]) >= 2 and len(v010["electorate"]) == 3

        # round 4: the candidate is the damaged state; the honest peers measure it, the liar claims a fine loss
        honest_reports = [eval_state(bad_state) for _ in range(3)]
        assert honest_reports[0].val_loss > 1.5 * v010["metrics"]["val_loss"], honest_reports[0]
        members4 = [a.id, b.id, c.id, m.id]
        lie = _report(v010["metrics"]["val_loss"] * 0.9, bad_digest)
        _commit_all(nodes, 4, bad_digest, [*honest_reports, lie], members4)

        # every vote reached every peer and was counted: 3 rejects + the liar's accept
        assert _wait(lambda: all(len(_counted(n, 4, bad_digest)) == 4 for n in nodes), 20), [
            len(_counted(n, 4, bad_digest)) for n in nodes
        ]
        for n in nodes:
            verdicts = {v["voter"]: v["verdict"] for v in _counted(n, 4, bad_digest)}
            assert verdicts == {a.id: "reject", b.id: "reject", c.id: "reject", m.id: "accept"}
            assert all(v["version"] == "v0.1.1" and v["parent"] == "v0.1.0" for v in _counted(n, 4, bad_digest))
        assert required_votes(4, "patch", cfg.versioning.major_fraction) == 3
        time.sleep(3.0)  # give a (wrong) tag every chance to form and spread
        for n in nodes:
            assert n.versions == ["v0.1.0"], (n.id, n.versions)
            assert n.releases.ledger.get("v0.1.1") is None
            with pytest.raises(ValueError, match="quorum"):  # the liar's own box cannot build it either
                build_tag(
                    votes=n.releases.box.accepting(candidate_id("run-damaged", 4, bad_digest)),
                    electorate=members4,
                    parent_cert=v010,
                )
        # and the ledgers on disk hold exactly v0.1.0
        for i in [*honest, liar]:
            assert [x["version"] for x in Ledger(tmp_path / f"peer{i}" / "ledger.bin").all()] == ["v0.1.0"]
    finally:
        _close(nodes)


@pytest.mark.timeout(120)
def test_a_candidate_regressing_on_one_named_eval_set_is_rejected_though_the_rest_improve(net, tmp_path):
    """Two named eval sets (the original corpus's and a fork's, as ``eval.sets``): v0.1.0 is tagged with both sets'
    metrics; a candidate whose val_loss and fork set improve but whose orig set regresses 5 % (tolerance 1 %) is
    rejected by every voter and never tagged; the next candidate, within tolerance on both, is tagged v0.1.1."""
    sets = [
        {"name": "orig", "data": {"source": "text", "paths": ["/o/*.txt"]}, "tolerance": 0.01},
        {"name": "fork", "data": {"source": "text", "paths": ["/f/*.txt"]}, "tolerance": 0.05},
    ]
    overrides = [f"eval.sets={json.dumps(sets)}"]
    nodes = _start_nodes(net, [0, 1, 2], "run-eval-sets", tmp_path, overrides)
    members = [n.id for n in nodes]
    d1, d2, d3 = (sha256_hex(x) for x in (b"first", b"orig regressed", b"within tolerance"))

    def reports(digest: str, val: float, orig: float, fork: float) -> list[EvalReport]:
        rep = EvalReport(val, math.exp(val), 4096, digest, sets={"orig": orig, "fork": fork})
        return [rep] * len(nodes)

    try:
        _commit_all(nodes, 2, d1, reports(d1, 3.0, 2.0, 4.0), members)
        assert _wait(lambda: all(n.versions == ["v0.1.0"] for n in nodes), 20), [n.versions for n in nodes]
        v010 = nodes[0].releases.ledger.get("v0.1.0")
        assert v010["metrics"]["val_loss/orig"] == 2.0 and v010["metrics"]["val_loss/fork"] == 4.0

        _commit_all(nodes, 4, d2, reports(d2, 2.5, 2.1, 3.0), members)
        assert _wait(lambda: all(len(_counted(n, 4, d2)) == 3 for n in nodes), 20)
        for n in nodes:
            votes = _counted(n, 4, d2)
            assert {v["verdict"] for v in votes} == {"reject"}
            assert all(v["metrics"]["val_loss/orig"] == 2.1 and v["metrics"]["val_loss/fork"] == 3.0 for v in votes)
        time.sleep(1.0)  # a (wrong) tag would have formed by now
        assert all(n.versions == ["v0.1.0"] for n in nodes), [n.versions for n in nodes]

        _commit_all(nodes, 6, d3, reports(d3, 2.9, 2.015, 4.15), members)  # +0.75 % and +3.75 %: within
        assert _wait(lambda: all(n.versions == ["v0.1.0", "v0.1.1"] for n in nodes), 20), [n.versions for n in nodes]
        v011 = nodes[0].releases.ledger.get("v0.1.1")
        assert v011["digest"] == d3 and v011["metrics"]["val_loss/orig"] == 2.015
    finally:
        _close(nodes)


def _reseal(data: bytes, **changes) -> bytes:
    outer = wire.open_envelope(data, VOTE_KIND)
    return wire.envelope(VOTE_KIND, {**outer, **changes})


def _vote(ident: Identity, *, run_id, round_, digest, parent, version, members, verdict="accept", loss=4.0):
    body = make_vote(
        run_id=run_id,
        round=round_,
        digest=digest,
        object_sha256=digest,
        parent=parent,
        version=version,
        metrics={"val_loss": loss, "perplexity": math.exp(loss)},
        verdict=verdict,
        bump="patch",
        voter=ident.peer_id,
        electorate=members,
        time=time.time(),
    )
    return sign_message(ident, VOTE_KIND, body)


@pytest.mark.timeout(120)
def test_hostile_votes_through_gossip_count_nowhere(net, tmp_path):
    """A real Releases peer T (allowlist T, A, B, X) and an attacker on another DHT that relays, through the real
    gossip transport: a forged signature, a tampered body, an outsider's own vote, a vote by an allowlisted key
    outside the round's membership, A's vote replayed from another run, from another state of the round and from
    an earlier round, A's second vote on a candidate, and B's second accept for a version slot (on the next
    candidate). None is counted; A's and B's genuine votes are."""
    dhts, idents = net
    ident_a, ident_b, ident_x = Identity.generate(), Identity.generate(), Identity.generate()
    target, attacker_ident = idents[0], idents[3]
    allow = [target.peer_id, ident_a.peer_id, ident_b.peer_id, ident_x.peer_id]
    run = "run-hostile"
    (t,) = _start_nodes(net, [0], run, tmp_path, overrides=[f"versioning.allowlist={allow}".replace("'", '"')])
    assert t.releases.box.allowlist == frozenset(allow)
    attacker = Gossip(dhts[3], attacker_ident, peers=lambda: [target.peer_id])
    attacker.subscribe(VOTE_KIND, lambda msg: True)  # relays whatever it is given

    def push(*msgs: bytes) -> None:
        for data in msgs:
            answer = run_sync(attacker._transport.call(target.peer_id, frames.encode("push", {"msgs": [data]}), 5), 10)
            assert frames.decode(answer, 1 << 20, frames.RESPONSES).type == "ack"

    def drops() -> dict:
        return t.releases.gossip.stats()["drops"]

    try:
        members = [target.peer_id, ident_a.peer_id, ident_b.peer_id]
        d2, d4, fork4 = sha256_hex(b"round 2 state"), sha256_hex(b"round 4 state"), sha256_hex(b"a forked state")
        v = dict(run_id=run, members=members)
        # round 2: T, A and B accept: v0.1.0 (the genuine votes travel the same path as the hostile ones)
        t.peer.commit(d2, _report(4.0, d2))
        t.releases.on_commit(2, members)
        a_round2 = _vote(ident_a, round_=2, digest=d2, parent="", version="v0.1.0", **v)
        push(a_round2, _vote(ident_b, round_=2, digest=d2, parent="", version="v0.1.0", **v))
        assert _wait(lambda: t.versions == ["v0.1.0"], 10), t.versions
        t.releases.on_commit(2, members)  # a late commit hook of an already tagged round casts no second vote
        assert "v0.1.1" not in t.releases._accepted

        # round 4: T votes accept on d4; A votes reject (genuinely)
        t.peer.commit(d4, _report(3.9, d4))
        t.releases.on_commit(4, members)
        cand = candidate_id(run, 4, d4)
        a_reject = _vote(ident_a, round_=4, digest=d4, parent="v0.1.0", version="v0.1.1", verdict="reject", **v)
        push(a_reject)
        assert _wait(lambda: len(t.releases.box.votes(cand)) == 2, 10)
        before_accepting = t.releases.box.accepting(cand)
        assert len(before_accepting) == 1  # T's own
        before_drops = dict(drops())

        r4 = dict(round_=4, parent="v0.1.0", version="v0.1.1")
        b_genuine = _vote(ident_b, digest=d4, **r4, **v)
        a_second = _vote(ident_a, digest=d4, **r4, **v)  # accept, after A's counted reject
        hostile = {
            "forged signature": _reseal(b_genuine, sig=os.urandom(len(wire.open_envelope(b_genuine)["sig"]))),
            # A's reject turned into an accept, under A's key and A's signature of the reject
            "tampered body": _reseal(a_reject, body=wire.open_envelope(a_second)["body"]),
            "allowlisted key outside the round": _vote(ident_x, digest=d4, **r4, **v),
            "vote from another run": _vote(ident_a, digest=d4, **r4, run_id="run-other", members=members),
            "another state of the same round": _vote(ident_a, digest=fork4, **r4, **v),
            "replayed earlier round": a_round2,
            "second vote for the slot": a_second,
        }
        push(*hostile.values())
        outsider = wire.open_envelope(_vote(attacker_ident, digest=d4, **r4, **v))["body"]
        attacker.publish(VOTE_KIND, wire.unpack(outsider))  # the outsider's own vote, spread by its gossip

        # two refused by gossip's signature check, the replay as a duplicate, the other five by the VoteBox
        def delta(reason: str) -> int:
            return drops().get(reason, 0) - before_drops.get(reason, 0)

        assert _wait(lambda: delta("bad_signature") >= 2 and delta("rejected") >= 5 and delta("duplicate") >= 1, 15)
        time.sleep(0.5)
        assert delta("bad_signature") == 2 and delta("rejected") == 5, (drops(), before_drops)
        for name in ("replayed earlier round", "second vote for the slot", "another state of the same round"):
            counted, reason = t.releases.box.add(hostile[name])  # straight into the box: refused there too
            assert not counted, (name, reason)
        assert t.releases.box.accepting(cand) == before_accepting
        counted = {x["voter"]: x["verdict"] for x in t.releases.box.votes(cand)}
        assert counted == {target.peer_id: "accept", ident_a.peer_id: "reject"}
        assert t.releases.box.votes(candidate_id("run-other", 4, d4)) == []
        assert t.releases.box.votes(candidate_id(run, 4, fork4)) == []
        assert {x["voter"] for x in t.releases.box.votes(candidate_id(run, 2, d2))} == set(members)  # unchanged

        # positive control: B's genuine accept is counted; 2 of 3 required, so still no v0.1.1 (A's second
        # vote would have made the quorum had it counted)
        push(b_genuine)
        assert _wait(lambda: len(t.releases.box.accepting(cand)) == 2, 10)

        # round 6, a new candidate for the same slot v0.1.1: B already accepted round 4's, so B's second accept
        # for the slot is refused; A only rejected, so A's accept counts (a reject does not use up the slot); T
        # itself accepted round 4's and does not vote again. 1 of 3: still no tag.
        d6 = sha256_hex(b"round 6 state")
        t.peer.commit(d6, _report(3.8, d6))
        t.releases.on_commit(6, members)
        cand6 = candidate_id(run, 6, d6)
        r6 = dict(round_=6, digest=d6, parent="v0.1.0", version="v0.1.1")
        b_second_slot = _vote(ident_b, **r6, **v)
        push(b_second_slot, _vote(ident_a, **r6, **v))
        assert _wait(lambda: t.releases.box.accepting(cand6) != [], 10)
        time.sleep(1.0)
        assert {x["voter"] for x in t.releases.box.votes(cand6)} == {ident_a.peer_id}
        counted, reason = t.releases.box.add(b_second_slot)
        assert not counted and "slot" in reason, reason
        assert t.versions == ["v0.1.0"]
        assert [c["version"] for c in Ledger(tmp_path / "peer0" / "ledger.bin").all()] == ["v0.1.0"]
    finally:
        attacker.close()
        _close([t])


@pytest.mark.timeout(150)
def test_split_halves_cannot_tag_and_versions_never_fork(net, tmp_path):
    """Four peers tag v0.1.0 together (electorate 4). Then the swarm splits into two halves of two that cannot
    reach each other; each half commits its own round-4 state and all its members accept it, yet neither half
    can tag v0.1.1: a tag needs accepts from more than half (3) of the parent's 4 voters. A second, different
    certificate for v0.1.0 (validly signed by all four keys, for another state) is refused by every ledger as a
    conflict."""
    run = "run-split"
    dhts, idents = net
    four = [0, 1, 2, 3]
    nodes = _start_nodes(net, four, run, tmp_path)
    ids = [n.id for n in nodes]
    d2 = sha256_hex(b"shared round 2 state")
    try:
        _commit_all(nodes, 2, d2, [_report(4.0, d2)] * 4, ids)
        assert _wait(lambda: all(n.versions == ["v0.1.0"] for n in nodes), 20), [n.versions for n in nodes]
        assert _wait(lambda: all(len(_counted(n, 2, d2)) == 4 for n in nodes), 10)  # all four voted
        v010 = nodes[0].releases.ledger.get("v0.1.0")
        assert len(v010["electorate"]) == 4 and v010["required"] == 3
    finally:
        _close(nodes)

    # the split: each half restarts its releases (ledgers persist on disk) and gossips only within itself
    halves = {"A": [0, 1], "B": [2, 3]}
    digests = {"A": sha256_hex(b"half A round 4"), "B": sha256_hex(b"half B round 4")}
    parts = {}
    try:
        for h, which in halves.items():
            parts[h] = _start_nodes(net, which, run, tmp_path, peers=which)
        for h, part in parts.items():
            assert all(n.versions == ["v0.1.0"] for n in part)
            _commit_all(part, 4, digests[h], [_report(3.8, digests[h])] * 2, [n.id for n in part])
        for h, part in parts.items():  # both members of each half accepted its candidate ...
            assert _wait(lambda part=part, h=h: all(len(_counted(n, 4, digests[h])) == 2 for n in part), 10)
            for n in part:
                assert {x["verdict"] for x in _counted(n, 4, digests[h])} == {"accept"}
                assert _counted(n, 4, digests["B" if h == "A" else "A"]) == []  # ... and nothing crossed over
        assert continuity_votes(4) == 3  # each half holds 2 of the parent's 4 voters
        time.sleep(2.0)
        everyone = [n for part in parts.values() for n in part]
        for h, part in parts.items():  # ... but 2 < 3: no tag in either half
            for n in part:
                assert n.versions == ["v0.1.0"], (h, n.versions)
                with pytest.raises(ValueError, match="quorum"):
                    build_tag(
                        votes=n.releases.box.accepting(candidate_id(run, 4, digests[h])),
                        electorate=[x.id for x in part],
                        parent_cert=v010,
                    )

        # a second certificate for v0.1.0: all four keys sign accepts for another state at round 6
        other = sha256_hex(b"another genesis candidate")
        forged_votes = [
            _vote(idents[i], run_id=run, round_=6, digest=other, parent="", version="v0.1.0", members=ids) for i in four
        ]
        rival = build_tag(votes=forged_votes, electorate=ids, parent_cert=None)  # valid on its own
        assert rival["version"] == "v0.1.0" and tag_id(rival) != tag_id(v010)
        for n in everyone:
            with pytest.raises(IntegrityError, match="conflict"):
                n.releases.ledger.append(rival)
            assert not _deliver(n, rival)
        for i in four:  # on disk: one certificate per version, the same one everywhere
            certs = Ledger(tmp_path / f"peer{i}" / "ledger.bin").all()
            assert [tag_id(c) for c in certs] == [tag_id(v010)]
    finally:
        for part in parts.values():
            _close(part)


def _encode(cert: dict) -> bytes:
    from p2pmodel.versioning.tag import encode_tag

    return encode_tag(cert)


def _deliver(node: Node, cert: dict) -> bool:
    """Hand ``cert`` to the node's tag handler as gossip would (True: kept or held, and forwarded)."""
    return node.releases._on_tag(type("Msg", (), {"body": {"cert": _encode(cert)}, "signer": "x"})())


@pytest.mark.timeout(120)
def test_one_key_cannot_tag_a_genesis_and_early_tags_wait_for_the_commit(net, tmp_path):
    """Before the first tag, any key can sign a self-consistent genesis certificate naming itself as the
    electorate. A far round is refused outright; a near one waits until the peer commits that round and is
    refused there because its digest is not the committed one. A genuine tag that reaches a peer before its own
    commit waits the same way and is kept."""
    dhts, idents = net
    run, x = "run-forged-genesis", Identity.generate()
    a, b, c, d = nodes = _start_nodes(net, [0, 1, 2, 3], run, tmp_path)
    good, bad = sha256_hex(b"the committed state"), sha256_hex(b"the forger's state")

    def forged(round_: int) -> dict:
        votes = [_vote(x, run_id=run, round_=round_, digest=bad, parent="", version="v0.1.0", members=[x.peer_id])]
        return build_tag(votes=votes, electorate=[x.peer_id], parent_cert=None)

    try:
        _commit_all(nodes, 1, good, [_report(4.0, good)] * 4, [n.id for n in nodes])  # not a release round
        far, near = forged(2**40), forged(2)
        for n in nodes:
            assert not _deliver(n, far)  # refused: not forwarded either
            assert _deliver(n, near)  # held until round 2 commits here
            assert n.versions == []
        members = [a.id, b.id, c.id]  # d is not in round 2's electorate, and commits it last
        _commit_all([a, b, c], 2, good, [_report(4.0, good)] * 3, members)
        assert _wait(lambda: all(n.versions == ["v0.1.0"] for n in (a, b, c)), 20), [n.versions for n in nodes]
        assert _wait(lambda: any(t["digest"] == good for t in d.releases._held_tags), 20)  # reached d: waits
        assert d.versions == []
        d.peer.commit(good, _report(4.0, good))
        d.releases.on_commit(2, members)
        for n in nodes:
            assert n.versions == ["v0.1.0"] and n.releases.ledger.get("v0.1.0")["digest"] == good
            assert n.releases._held_tags == []
    finally:
        _close(nodes)


@pytest.mark.timeout(120)
def test_minor_and_major_only_by_proposal_and_major_needs_the_supermajority(net, tmp_path):
    """Without a proposal the next version is a PATCH; a signed MINOR proposal (any key, e.g. the CLI's) makes the
    next tag v0.2.0 and is used up by it; a MAJOR proposal lets voters accept a regression, but a MAJOR tag
    needs ⌊0.8·N⌋+1 votes: with 3 of 4 members voting it does not form, with all 4 it does (v1.0.0)."""
    from p2pmodel.swarm.keys import PROPOSAL_KIND, proposals_key
    from p2pmodel.swarm.records import publish_signed

    dhts, idents = net
    nodes = _start_nodes(net, [0, 1, 2, 3], "run-propose", tmp_path)
    members = [n.id for n in nodes]
    proposer = Identity.generate()

    def propose(bump: str, after: str) -> None:
        body = {
            "peer_id": proposer.peer_id,
            "run_id": "run-propose",
            "bump": bump,
            "after": after,
            "reason": "test",
            "time": time.time(),
        }
        assert publish_signed(dhts[3], proposer, proposals_key("run-propose"), PROPOSAL_KIND, body, 600)

    def release(round_: int, loss: float, voters=nodes) -> str:
        digest = sha256_hex(f"state-{round_}".encode())
        _commit_all(voters, round_, digest, [_report(loss, digest) for _ in voters], members)
        return digest

    try:
        release(2, 3.0)
        assert _wait(lambda: all(n.versions == ["v0.1.0"] for n in nodes), 20), [n.versions for n in nodes]
        propose("minor", "v0.1.0")
        release(4, 2.9)
        assert _wait(lambda: all(n.versions == ["v0.1.0", "v0.2.0"] for n in nodes), 20), [n.versions for n in nodes]
        assert nodes[0].releases.ledger.get("v0.2.0")["bump"] == "minor"
        release(6, 2.8)  # the proposal was used up by v0.2.0: back to PATCH
        assert _wait(lambda: all(n.versions[-1] == "v0.2.1" for n in nodes), 20), [n.versions for n in nodes]

        propose("major", "v0.2.1")
        release(8, 3.5, voters=nodes[:3])  # a regression, accepted for a MAJOR; 3 of 4 < ⌊0.8·4⌋+1 = 4
        votes8 = lambda: _counted(nodes[0], 8, sha256_hex(b"state-8"))  # noqa: E731
        assert _wait(lambda: len(votes8()) == 3, 20)
        assert all(v["verdict"] == "accept" and v["version"] == "v1.0.0" for v in votes8())
        time.sleep(1.5)
        assert all(n.versions[-1] == "v0.2.1" for n in nodes), [n.versions for n in nodes]
        release(12, 3.4)  # all four accept the next MAJOR candidate (a new slot window: 12 // 4 > 8 // 4)
        assert _wait(lambda: all(n.versions[-1] == "v1.0.0" for n in nodes), 20), [n.versions for n in nodes]
        assert nodes[1].releases.ledger.get("v1.0.0")["bump"] == "major"
    finally:
        _close(nodes)


def _serve_certs(node: Node) -> BlobServer:
    """What SwarmLink's BlobServer does for Releases: serve the certificates it indexes, by blob id."""
    return BlobServer(node.link.dht, lambda blob_id: next((b for p in node.link.providers if (b := p(blob_id))), None))


@pytest.mark.scenario
@pytest.mark.timeout(150)
def test_survivors_of_a_crash_keep_tagging_and_a_joiner_fetches_the_ledger(net, tmp_path):
    """Three peers tag v0.1.0 (electorate 3); one crashes. The two survivors tag v0.1.1: 2 of 2 in their round,
    and 2 of the parent's 3 voters (before: a quorum over the parent's 3 needed 3 votes, and no tag ever came
    again). A fourth peer then joins with an empty ledger: it fetches v0.1.0 and v0.1.1 (verified) before it
    votes, so all three vote for v0.1.2 and it is tagged (without the ledger it voted for "v0.1.0" and no name
    reached a quorum)."""
    run = "run-churn"
    a, b, c = nodes = _start_nodes(net, [0, 1, 2], run, tmp_path, overrides=["versioning.release_every=2"])
    servers, joiner = [], []
    d2, d4, d6 = (sha256_hex(f"round {r}".encode()) for r in (2, 4, 6))
    try:
        _commit_all(nodes, 2, d2, [_report(4.0, d2)] * 3, [n.id for n in nodes])
        assert _wait(lambda: all(n.versions == ["v0.1.0"] for n in nodes), 20), [n.versions for n in nodes]
        _close([c])  # c crashes
        _commit_all([a, b], 4, d4, [_report(3.9, d4)] * 2, [a.id, b.id])
        assert _wait(lambda: all(n.versions == ["v0.1.0", "v0.1.1"] for n in (a, b)), 20), [a.versions, b.versions]
        v011 = a.releases.ledger.get("v0.1.1")
        assert v011["electorate"] == sorted([a.id, b.id]) and len(v011["votes"]) == 2

        servers = [_serve_certs(n) for n in (a, b)]
        for n in (a, b):
            n.releases.publish_index()
        (d,) = joiner = _start_nodes(net, [3], run, tmp_path, ["versioning.release_every=2"], peers=[0, 1, 3])
        for n in (a, b):
            n.link.peers.append(d.id)
        assert d.versions == []
        assert d.releases.sync_ledger() == 2
        assert d.versions == ["v0.1.0", "v0.1.1"]
        members = [a.id, b.id, d.id]
        _commit_all([a, b, d], 6, d6, [_report(3.8, d6)] * 3, members)
        assert _wait(lambda: all(n.versions[-1:] == ["v0.1.2"] for n in (a, b, d)), 20), [n.versions for n in (a, b, d)]
        assert all(v["version"] == "v0.1.2" for v in _counted(a, 6, d6)) and len(_counted(a, 6, d6)) == 3
    finally:
        for s in servers:
            s.close()
        _close([a, b, *joiner])


@pytest.mark.scenario
@pytest.mark.timeout(90)
def test_the_tag_index_outlives_its_dht_lifetime(net, tmp_path):
    """The tag index is a DHT record with a lifetime (10 × swarm.record_ttl_s); a peer republishes it at a commit
    once a third of it has passed. Before, it was published at start and on a new tag only, so after ten minutes
    without a tag `versions list` showed nothing and `versions pull` of a tagged version failed."""
    from p2pmodel.node.light import sync_tags
    from p2pmodel.swarm.keys import TAG_INDEX_KIND, tags_key
    from p2pmodel.swarm.records import get_signed
    from p2pmodel.versioning.ledger import Ledger

    run = "run-index"
    a, b, c = nodes = _start_nodes(net, [0, 1, 2], run, tmp_path, ["swarm.record_ttl_s=1.2"])  # index lives 12 s
    d2 = sha256_hex(b"round 2")
    servers = []
    try:
        _commit_all(nodes, 2, d2, [_report(4.0, d2)] * 3, [n.id for n in nodes])
        assert _wait(lambda: all(n.versions == ["v0.1.0"] for n in nodes), 20)
        servers = [_serve_certs(n) for n in nodes]
        started = time.monotonic()
        round_ = 1
        while time.monotonic() - started < 15:  # past the first index's lifetime, commits of non-release rounds
            round_ += 2
            _commit_all(nodes, round_, d2, [_report(4.0, d2)] * 3, [n.id for n in nodes])
            time.sleep(1.0)
        assert get_signed(a.link.dht, tags_key(run), TAG_INDEX_KIND), "no peer indexes its tags any more"
        fresh = Ledger(tmp_path / "light" / "ledger.bin")
        assert sync_tags(b.link.dht, run, fresh) == 1 and [c["version"] for c in fresh.all()] == ["v0.1.0"]
    finally:
        for s in servers:
            s.close()
        _close(nodes)
