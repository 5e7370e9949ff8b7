"""``p2pmodel versions propose``: ask a live swarm for a MINOR or MAJOR next version, or (``--state DIR``) offer a
whole state for review like a pull request: a merge, a fork folded back in. The swarm's peers fetch the state from
this process (verified by digest), evaluate it as the candidate of their next release round and vote; if a quorum
accepts, every peer adopts it two rounds later and trains on from it (node/proposals.py). This command serves the
state and waits for the verdict: exit 0 when a tag names the state, 1 when the swarm tagged another state on top of
the same parent instead (rejected) or nothing was decided within ``--wait-s``."""

import time
from pathlib import Path

import typer

from p2pmodel.cli.output import default_is, emit_json
from p2pmodel.cli.versions import ALLOW, PEERS, RUN, _allowlist
from p2pmodel.core.errors import SwarmError, UsageError


def propose(
    bump: str = typer.Option(..., "--bump", help="minor (grown, backward compatible) or major (breaking)."),
    initial_peers: list[str] = PEERS,
    state: Path = typer.Option(
        None, "--state", help="A `versions pull`/`merge` directory to offer as the next version (patch allowed)."
    ),
    reason: str = typer.Option("", "--reason", help="Why (shown to operators)."),
    identity: Path = typer.Option(None, "--identity", help="Key to sign with. " + default_is("a throwaway key")),
    ttl_h: float = typer.Option(24.0, "--ttl-hours", min=0.1, max=24 * 30, help="How long the proposal stays open."),
    listen: list[str] = typer.Option(
        None, "--listen", help="--state: multiaddr the peers fetch the state from. " + default_is("/ip4/0.0.0.0/tcp/0")
    ),
    wait_s: float = typer.Option(900.0, "--wait-s", min=1, help="--state: how long to serve it and wait."),
    run_id: str = RUN,
    allow: list[str] = ALLOW,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Propose the next version: a MINOR or MAJOR bump (MAJOR needs a supermajority), or a whole state (--state)."""
    from p2pmodel.swarm.identity import Identity

    if bump not in (("patch", "minor", "major") if state else ("minor", "major")):
        raise UsageError(f"--bump must be minor or major, not {bump!r} (PATCH needs no proposal unless --state)")
    me = Identity.load_or_create(identity) if identity else Identity.generate()
    if state is None:
        body = _propose_bump(me, bump, initial_peers, reason, ttl_h, run_id, allow)
        if as_json:
            emit_json(body)
        else:
            typer.echo(f"proposed a {bump} release on top of {body['after'] or 'the genesis'} for run {body['run_id']}")
        return
    result = _propose_state(me, state, bump, initial_peers, reason, ttl_h, listen or ["/ip4/0.0.0.0/tcp/0"], wait_s,
                            run_id, allow)  # fmt: skip
    if as_json:
        emit_json(result)
    else:
        head = f"proposed state {result['state'][:12]} on top of {result['after'] or 'the genesis'}"
        typer.echo(f"{head}: {result['result']}" + (f" as {result['version']}" if result.get("version") else ""))
    if result["result"] != "accepted":
        raise typer.Exit(1)


def _propose_bump(me, bump, initial_peers, reason, ttl_h, run_id, allow) -> dict:
    from p2pmodel.cli.versions import _reading
    from p2pmodel.swarm.keys import PROPOSAL_KIND, proposals_key
    from p2pmodel.swarm.records import publish_signed

    with _reading(initial_peers, run_id, allow) as (dht, rid, _, certs):
        body = {
            "peer_id": me.peer_id,
            "run_id": rid,
            "bump": bump,
            "after": certs[-1]["version"] if certs else "",
            "reason": reason[:500],
            "time": time.time(),
        }
        if not publish_signed(dht, me, proposals_key(rid), PROPOSAL_KIND, body, ttl_h * 3600):
            raise SwarmError("no peer stored the proposal (is the swarm reachable?)")
    return body


def _propose_state(me, path, bump, initial_peers, reason, ttl_h, listen, wait_s, run_id, allow) -> dict:
    import tempfile

    from p2pmodel.core.logging import setup_logging
    from p2pmodel.eval.digest import canonical_bytes, state_digest
    from p2pmodel.node.light import fetch_tags, light_client, pick_run
    from p2pmodel.swarm.blobs import BlobServer
    from p2pmodel.swarm.keys import PROPOSAL_KIND, proposals_key
    from p2pmodel.swarm.records import list_peer_records, publish_signed
    from p2pmodel.versioning.pulled import read_pulled

    try:
        _, weights = read_pulled(path)
    except ValueError as e:
        raise UsageError(f"--state: {e}") from None
    blob, digest = canonical_bytes(weights), state_digest(weights)
    allowlist = _allowlist(allow)
    setup_logging("warning")
    with light_client(initial_peers, listen=listen) as dht, tempfile.TemporaryDirectory() as tmp:
        server = BlobServer(dht, lambda want: blob if want == digest else None)
        try:
            rid, _ = pick_run(dht, run_id)
            certs = fetch_tags(dht, rid, tmp, allowlist)
            after = certs[-1]["version"] if certs else ""
            tagged = certs[-1]["round"] if certs else 0  # fresher than the peer records, refreshed every few minutes
            current = max([tagged, *(r.get("round", 0) for r in list_peer_records(dht, rid))])
            body = {
                "peer_id": me.peer_id,
                "run_id": rid,
                "bump": bump,
                "after": after,
                "reason": reason[:500],
                "time": time.time(),
                "state": digest,
                "provider": str(dht.peer_id),
                "round": current + 2,  # voted at the peers' first release round from then: time to read it
            }
            _touch_peers(dht, rid)
            if not publish_signed(dht, me, proposals_key(rid), PROPOSAL_KIND, body, ttl_h * 3600):
                raise SwarmError("no peer stored the proposal (is the swarm reachable?)")
            typer.echo(f"proposed {digest[:12]} on top of {after or 'the genesis'}; serving it until the swarm decides",
                       err=True)  # fmt: skip
            verdict = _wait(dht, rid, tmp, allowlist, digest, body["round"], wait_s)
        finally:
            server.close()
    return {**body, **verdict}


def _wait(dht, rid, workdir, allowlist, digest, from_round, wait_s) -> dict:
    """Poll the tags until one names ``digest`` (accepted) or two release rounds from ``from_round`` on tagged other
    states: the peers vote on a proposal once, at their first release round from then (the second, if they read it
    late), so by then it was rejected (or could not be fetched)."""
    from p2pmodel.node.light import fetch_tags

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        _touch_peers(dht, rid)
        time.sleep(3.0)
        try:
            certs = fetch_tags(dht, rid, workdir, allowlist)
        except Exception:  # the DHT may be briefly unreachable: ask again
            continue
        newer = [c for c in certs if c["round"] >= from_round]
        for c in newer:
            if c["digest"] == digest:
                return {"result": "accepted", "version": c["version"], "tag_round": c["round"]}
        if len(newer) >= 2:
            return {"result": "rejected", "version": None, "tagged_instead": newer[-1]["version"]}
    return {"result": "undecided", "version": None}


def _touch_peers(dht, rid: str) -> None:
    """Open (or keep open) a connection to every peer of the run, so that each can fetch the state over it without
    dialing this process (a dial can fail: NAT, a firewall, libp2p's backoff after an early failed attempt)."""
    from p2pmodel.core.errors import P2PModelError
    from p2pmodel.swarm.blobs import BlobNotFound, fetch_blob
    from p2pmodel.swarm.records import list_peer_records

    try:
        peers = [r["peer_id"] for r in list_peer_records(dht, rid)]
    except Exception:
        return
    for peer in peers:
        try:  # a digest nobody has: the answer is "not found", the connection stays
            fetch_blob(dht, peer, "0" * 64, 1, timeout_s=5.0)
        except (BlobNotFound, P2PModelError, ValueError):
            pass
