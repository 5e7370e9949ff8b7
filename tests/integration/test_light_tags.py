"""The light client (versions CLI) picks, for each version, the certificate most peers index, and does not wait
twice on a peer that failed: one key serving a self-consistent forged genesis for v0.1.0 cannot replace the one
the swarm holds. Real DHTs, real signed index records and real blob transfers on 127.0.0.1."""

import math
import time

import pytest

from p2pmodel.core.ids import sha256_hex
from p2pmodel.node.light import fetch_tags
from p2pmodel.swarm.blobs import BlobServer
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.keys import TAG_INDEX_KIND, tags_key
from p2pmodel.swarm.records import publish_signed
from p2pmodel.swarm.signed import sign_message
from p2pmodel.testing.dht import identity_dhts
from p2pmodel.versioning.tag import build_tag, encode_tag
from p2pmodel.versioning.votes import VOTE_KIND, make_vote

RUN = "run-light-tags"


def _genesis(voters: list[Identity], digest: str) -> dict:
    members = [v.peer_id for v in voters]
    votes = [
        sign_message(
            v,
            VOTE_KIND,
            make_vote(
                run_id=RUN,
                round=2,
                digest=digest,
                object_sha256=digest,
                parent="",
                version="v0.1.0",
                metrics={"val_loss": 4.0, "perplexity": math.exp(4.0)},
                verdict="accept",
                bump="patch",
                voter=v.peer_id,
                electorate=members,
                time=time.time(),
            ),
        )
        for v in voters
    ]
    return build_tag(votes=votes, electorate=members, parent_cert=None)


@pytest.mark.timeout(120)
def test_the_certificate_most_peers_index_wins(tmp_path):
    with identity_dhts(4, tmp_path / "keys") as (dhts, idents):
        client, honest, forger = dhts[0], dhts[1:3], dhts[3]
        genuine = _genesis([Identity.generate() for _ in range(3)], sha256_hex(b"the swarm's state"))
        forged = _genesis([idents[3]], sha256_hex(b"the forger's state"))  # valid alone: an electorate of one
        blobs = {sha256_hex(encode_tag(c)): encode_tag(c) for c in (genuine, forged)}
        servers = [BlobServer(d, blobs.get) for d in dhts[1:]]
        try:
            published = [(forger, idents[3], forged), (honest[0], idents[1], genuine), (honest[1], idents[2], genuine)]
            for dht, ident, cert in published:  # the forger first: which index is read first must not matter
                body = {
                    "peer_id": ident.peer_id,
                    "run_id": RUN,
                    "tags": [["v0.1.0", sha256_hex(encode_tag(cert))]],
                    "time": time.time(),
                }
                assert publish_signed(dht, ident, tags_key(RUN), TAG_INDEX_KIND, body, 60)
            got = fetch_tags(client, RUN, tmp_path / "light")
            assert [(c["version"], c["digest"]) for c in got] == [("v0.1.0", genuine["digest"])]
        finally:
            for s in servers:
                s.close()
