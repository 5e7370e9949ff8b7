"""Every DHT key and signed-message kind p2pmodel uses, in one place (the wire's vocabulary).

DHT layout (one key per topic, one subkey per signer; readers check signer == subkey == body peer_id)::

    p2pmodel/runs                        run registry: one "run_record" per peer (light clients find runs here)
    p2pmodel/{run}/peers                 "peer_record": who is in the run (swarm/records.py)
    p2pmodel/{run}/digest/{round}        "digest_record": the commit step's vote (DHT fallback of the "digest" push)
    p2pmodel/{run}/ready/{round}         "ready": a peer finished its inner phase (stored only when the push failed)
    p2pmodel/{run}/state                 "state_offer": a recent committed state a peer serves, by blob id (for
                                         late joiners; republished every few minutes, not every round)
    p2pmodel/{run}/history               "history": recent (round, val loss) pairs, for plots
    p2pmodel/{run}/tags                  "tag_index": the tags a peer holds and their certificates' blob ids
    p2pmodel/{run}/proposals             "proposal": a signed request for a MINOR/MAJOR next release

Gossip kinds (signed messages pushed to every peer of the run): "ready", "join", "leave", "vote", "tag", and
"digest": the commit step's vote {run_id, round, digest, blob, size}, which is also an offer of that round's
state package (blob id, size) to a peer that must re-sync or catch up. "ready" and "digest" go out once per
round: they are pushed straight to every peer, not flooded (``Gossip.subscribe(direct=True)``).
"""

RUNS_KEY = "p2pmodel/runs"

RUN_KIND = "run_record"
PEER_RECORD_KIND = "peer_record"
DIGEST_RECORD_KIND = "digest_record"
DIGEST_KIND = "digest"
READY_KIND = "ready"
JOIN_KIND = "join"
LEAVE_KIND = "leave"
OFFER_KIND = "state_offer"
HISTORY_KIND = "history"
TAG_INDEX_KIND = "tag_index"
PROPOSAL_KIND = "proposal"
UPDATE_KIND = "update"  # broadcast mode: a peer's delta of a round, as a blob id (node/broadcast.py)


def run_key(run_id: str, what: str, round_: int | None = None) -> str:
    """``p2pmodel/{run_id}/{what}`` or, per round, ``p2pmodel/{run_id}/{what}/{round}``."""
    return f"p2pmodel/{run_id}/{what}" + ("" if round_ is None else f"/{round_}")


def peers_key(run_id: str) -> str:
    return run_key(run_id, "peers")


def digest_key(run_id: str, round_: int) -> str:
    return run_key(run_id, "digest", round_)


def ready_key(run_id: str, round_: int) -> str:
    return run_key(run_id, "ready", round_)


def offers_key(run_id: str) -> str:
    return run_key(run_id, "state")


def history_key(run_id: str) -> str:
    return run_key(run_id, "history")


def tags_key(run_id: str) -> str:
    return run_key(run_id, "tags")


def proposals_key(run_id: str) -> str:
    return run_key(run_id, "proposals")
