"""Which state a joining peer downloads: the (round, digest) most peers offer, not the highest round anyone
claims, so one hostile key cannot hand every newcomer its own weights."""

import pytest

from p2pmodel.node.state_offers import most_offered, valid_offer

A, B, Z = "a" * 64, "b" * 64, "f" * 64


def _offer(round_, digest, pid="p"):
    return {"peer_id": pid, "round": round_, "digest": digest, "blob": "c" * 64, "size": 1, "time": 0.0}


@pytest.mark.timeout(10)
def test_one_key_at_a_far_round_does_not_outvote_two_that_agree():
    honest = [_offer(7, A, "h1"), _offer(7, A, "h2"), _offer(6, B, "h3")]
    assert most_offered([*honest, _offer(2**62, Z, "x")]) == (7, A)
    assert most_offered([_offer(7, A), _offer(8, B)]) == (8, B)  # equal support: the latest round
    assert most_offered([_offer(8, B), _offer(8, A)]) == (8, A)  # then the smallest digest, the same on every peer
    assert most_offered([]) is None


@pytest.mark.timeout(10)
def test_offer_schema():
    assert valid_offer(_offer(3, A))
    for bad in (
        _offer(True, A),
        _offer(0, A),
        _offer(2**63, A),
        _offer(3, ""),
        _offer(3, A.upper()),
        {**_offer(3, A), "blob": "x" * 64},
        [],
    ):
        assert not valid_offer(bad), bad


@pytest.mark.timeout(10)
def test_package_limit_fits_a_full_package_and_little_more():
    import torch

    from p2pmodel.node.state_package import pack_state, package_limit

    names = ["tok.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "ln_f.weight" + "x" * 300]
    params = [torch.randn(256, 64), torch.randn(192, 64), torch.randn(192), torch.randn(64)]
    shapes = {n: tuple(p.shape) for n, p in zip(names, params, strict=True)}
    full = pack_state(names, params, [torch.randn_like(p) for p in params], round_=2**40)
    assert len(full) <= package_limit(shapes) < len(full) + 8192


class _Votes:
    """A CommitStep stand-in: its box holds the "digest" messages gossip delivered, its gossip records pulls."""

    def __init__(self, latest, by_round=None):
        from types import SimpleNamespace

        self.pulls = []
        self.box = SimpleNamespace(latest=lambda: [dict(o) for o in latest])
        self.gossip = SimpleNamespace(catch_up=lambda kind, n, limit=None: self.pulls.append(kind))
        self._by_round = by_round or {}

    def offers(self, round_, digest):
        return {p: o for p, o in self._by_round.items() if (o["round"], o["digest"]) == (round_, digest)}


def _offers(monkeypatch, votes, in_dht, peer_round=0, download_timeout_s=0.3, refusing=()):
    from types import SimpleNamespace

    from p2pmodel.node import state_offers

    peer = SimpleNamespace(round=peer_round, run_id="r", global_state=lambda: {}, adopt=lambda *a: None)
    so = state_offers.StateOffers(None, SimpleNamespace(peer_id="me"), peer, 600, download_timeout_s, votes=votes)
    monkeypatch.setattr(so, "offers", lambda: dict(in_dht))
    tried = []

    def download(dht, offers, shapes, digest, round_, timeout_s, seen, progress=None):
        fresh = sorted(set(offers) - seen)
        tried.append(fresh)
        seen.update(offers)
        pid = next((p for p in fresh if p not in refusing), None)
        return (pid, {}, []) if pid is not None else None

    monkeypatch.setattr(state_offers, "download_state", download)
    return so, peer, tried


@pytest.mark.timeout(10)
def test_a_joiner_takes_the_latest_digests_of_its_peers_over_older_dht_offers(monkeypatch):
    """The DHT's offers are written every few minutes; the "digest" messages peers pushed last round are newer."""
    votes = _Votes([_offer(9, A, "h1"), _offer(9, A, "h2"), _offer(9, A, "me")])
    so, peer, tried = _offers(monkeypatch, votes, {"h1": _offer(4, B, "h1"), "h3": _offer(4, B, "h3")})
    assert so.known_offers() == {"h1": _offer(9, A, "h1"), "h2": _offer(9, A, "h2"), "h3": _offer(4, B, "h3")}
    assert votes.pulls == ["digest"]  # it asked peers for their latest digests first
    assert so.catch_up() and peer.round == 9 and tried == [["h1", "h2"]]


@pytest.mark.timeout(10)
def test_a_resync_downloads_from_the_peers_that_voted_for_the_winner(monkeypatch):
    votes = _Votes([], by_round={"h1": _offer(5, A, "h1"), "h2": _offer(5, B, "h2")})
    so, _, tried = _offers(monkeypatch, votes, {})
    assert so.resync(5, A) == "download" and tried == [["h1"]]  # no DHT lookup needed
    so, _, tried = _offers(monkeypatch, _Votes([]), {"h3": _offer(5, A, "h3")})
    assert so.resync(5, A) and tried == [["h3"]]  # no vote named a package: the DHT's offers


@pytest.mark.timeout(10)  # download_timeout_s is an hour: only giving up early ends it in time
def test_a_resync_refused_by_every_peer_offering_it_gives_up_without_waiting_out_its_deadline(monkeypatch):
    """Peers keep their last few packages: a peer a few rounds behind finds the state it lost gone everywhere, and
    its caller catches up to the swarm's latest instead (node/swarm_link.py)."""
    from p2pmodel.node import state_offers

    monkeypatch.setattr(state_offers, "NONE_OFFERED_S", 1.0)
    votes = _Votes([], by_round={"h1": _offer(5, A, "h1"), "h2": _offer(5, A, "h2")})
    so, _, tried = _offers(
        monkeypatch, votes, {"h2": _offer(5, A, "h2")}, download_timeout_s=3600, refusing={"h1", "h2"}
    )
    assert not so.resync(5, A)
    assert tried[0] == ["h1", "h2"] and not any(tried[1:])  # each asked once, then nobody new offered it


@pytest.mark.timeout(10)
def test_a_download_cut_after_some_bytes_resumes_from_them_and_a_refusal_is_not_retried(monkeypatch):
    from p2pmodel.core.errors import SwarmError
    from p2pmodel.node import state_offers
    from p2pmodel.swarm.blobs import BlobNotFound

    calls = []

    def fetch(dht, pid, blob, limit, timeout_s, partial, stall_s):
        calls.append((pid, len(partial.data)))
        if pid == "h2":
            raise BlobNotFound("gone")
        if len(calls) == 1:
            partial.add(b"x" * 100)
            raise SwarmError("sent nothing")
        return b"package"

    monkeypatch.setattr(state_offers, "fetch_blob", fetch)
    monkeypatch.setattr(state_offers, "unpack_state", lambda blob, shapes, digest: ({}, [], 5))
    offers = {"h1": _offer(5, A, "h1"), "h2": _offer(5, A, "h2")}
    tried, progress = set(), state_offers.Progress()
    assert state_offers.download_state(None, offers, {}, A, 5, 10.0, tried, progress) is None
    assert tried == {"h2"} and progress.received() == 100  # h1 sent something: it may go on
    got = state_offers.download_state(None, offers, {}, A, 5, 10.0, tried, progress)
    assert got is not None and got[0] == "h1"
    assert calls == [("h1", 0), ("h2", 100), ("h1", 100)]  # one package (same blob id): h2 was asked for the rest


@pytest.mark.timeout(10)
def test_a_package_someone_downloads_outlives_the_newer_ones_up_to_one_extra():
    from types import SimpleNamespace

    from p2pmodel.node import state_offers

    so = state_offers.StateOffers(None, SimpleNamespace(peer_id="me"), SimpleNamespace(), 600, 1.0)

    def add(blob_id):  # what prepare() does with a newly packed state
        so.packages[blob_id] = blob_id.encode()
        so._evict()

    for b in "abc":
        add(b)
    assert so.serve("a") == b"a" and so.serve("zz") is None
    add("d")
    add("e")
    assert list(so.packages) == ["a", "d", "e"]  # b and c went; a was asked for, so it is the most recently used
    add("f")
    assert list(so.packages) == ["a", "d", "e", "f"]  # a is still being downloaded: one over KEEP_PACKAGES
    add("g")
    assert list(so.packages) == ["e", "f", "g"]  # never more than MAX_PACKAGES; then down to KEEP_PACKAGES
