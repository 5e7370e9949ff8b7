"""A light client for the CLI: joins the DHT in client mode (no training, no GPU), with an ephemeral identity."""

import math
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

from p2pmodel.config import load_config
from p2pmodel.core.ids import is_hex64

MAX_CLOCK_SKEW_S = 600.0


@contextmanager
def light_client(initial_peers: list[str], timeout_s: float = 15.0, listen: list[str] | None = None):
    """The DHT of a light client; with ``listen`` (multiaddrs) it accepts connections there, so that peers can
    fetch what it serves (``versions propose --state``), else it only dials out."""
    from p2pmodel.swarm.node import start_dht, stop_dht

    dht = start_dht(
        None,
        initial_peers,
        list(listen) if listen else ["/ip4/127.0.0.1/tcp/0"],
        None,
        client_mode=not listen,
        wait_timeout_s=min(timeout_s, 10.0),
        startup_timeout_s=timeout_s,
    )
    try:
        yield dht
    finally:
        stop_dht(dht)


def resolve_run_id(config_path) -> str:
    """The run id a peer with this config would have (needs the validation data, and the named eval sets', to
    fingerprint them)."""
    from p2pmodel.data.corpus import load_data
    from p2pmodel.eval.sets import load_eval_sets, set_fingerprints
    from p2pmodel.node.peer import compute_run_id

    cfg = load_config(config_path)
    corpus = load_data(cfg.data, cfg.model.seq_len + 2, cfg.model.vocab_size)
    return compute_run_id(cfg, corpus.fingerprint, set_fingerprints(load_eval_sets(cfg, corpus)))


def find_runs(dht) -> dict[str, dict]:
    """Runs registered in the DHT by live peers: {run_id: newest run record}."""
    from p2pmodel.swarm.keys import RUN_KIND, RUNS_KEY
    from p2pmodel.swarm.records import get_signed

    return newest_runs(get_signed(dht, RUNS_KEY, RUN_KIND).values())


def newest_runs(bodies) -> dict[str, dict]:
    """{run_id: the newest well-stamped record} of signed run records; a record "from the future" is ignored."""
    runs: dict[str, dict] = {}
    latest = time.time() + MAX_CLOCK_SKEW_S
    for body in bodies:
        rid, stamp = body.get("run_id"), body.get("time")
        if not isinstance(rid, str) or type(stamp) not in (int, float) or not 0 <= stamp <= latest:
            continue  # NaN fails the range check too
        if rid not in runs or stamp > runs[rid]["time"]:
            runs[rid] = body
    return runs


def pick_run(dht, run_id: str | None) -> tuple[str, dict]:
    from p2pmodel.core.errors import SwarmError, UsageError

    runs = find_runs(dht)
    if run_id:
        if run_id not in runs:
            raise SwarmError(f"no live peer of run {run_id} found (runs online: {', '.join(runs) or 'none'})")
        return run_id, runs[run_id]
    if not runs:
        raise SwarmError("no run found in this swarm (no training peer online?)")
    if len(runs) > 1:
        names = ", ".join(f"{r} ({b.get('run_name')})" for r, b in runs.items())
        raise UsageError(f"several runs online, choose one with --run-id: {names}")
    return next(iter(runs.items()))


def fetch_tags(dht, run_id: str, workdir, allowlist: set[str] | None = None) -> list[dict]:
    """Every tag of ``run_id`` that some peer indexes, each certificate downloaded and verified in chain order
    (with ``allowlist``, only votes of those PeerIDs count towards a tag's quorum)."""
    from p2pmodel.versioning.ledger import Ledger

    ledger = Ledger(Path(workdir) / "ledger.bin", allowlist=allowlist)
    sync_tags(dht, run_id, ledger)
    return ledger.all()


def sync_tags(dht, run_id: str, ledger) -> int:
    """Append to ``ledger`` every tag of ``run_id`` that some peer indexes and ``ledger`` lacks, verified in chain
    order (the ledger checks every signature, the quorum and the parent link); → how many were appended.

    For each version the certificate most peers index is tried first, so one key indexing a forgery first does not
    win; a peer that failed once is not waited for again. A joining peer runs this before it votes."""
    import logging

    from p2pmodel.core.errors import P2PModelError
    from p2pmodel.node.release import MAX_CERT_BYTES
    from p2pmodel.swarm.blobs import fetch_blob
    from p2pmodel.swarm.keys import TAG_INDEX_KIND, tags_key
    from p2pmodel.swarm.records import get_signed
    from p2pmodel.versioning.semver import Version
    from p2pmodel.versioning.tag import decode_tag

    log = logging.getLogger(__name__)
    holders: dict[Version, dict[str, list[str]]] = {}  # version -> certificate blob id -> peers indexing it
    for peer, body in get_signed(dht, tags_key(run_id), TAG_INDEX_KIND).items():
        if body.get("run_id") != run_id or not isinstance(body.get("tags"), list):
            continue
        for item in body["tags"][:256]:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                continue
            try:
                version = Version.parse(item[0])
            except ValueError:
                continue
            if str(version) == item[0] and is_hex64(item[1]):
                holders.setdefault(version, {}).setdefault(item[1], []).append(peer)
    unreachable: set[str] = set()  # a peer that failed once is not waited for again
    appended = 0
    for version in sorted(holders):  # parents first; for each version the certificate most peers index first
        for blob_id, peers in sorted(holders[version].items(), key=lambda kv: (-len(kv[1]), kv[0])):
            if ledger.get(str(version)) is not None:
                break
            for peer in [p for p in peers if p not in unreachable]:
                try:
                    cert = decode_tag(fetch_blob(dht, peer, blob_id, MAX_CERT_BYTES, timeout_s=10.0), MAX_CERT_BYTES)
                except P2PModelError as e:
                    unreachable.add(peer)
                    log.debug("certificate %s from %s: %s", version, peer, e)
                    continue
                if cert.get("version") != str(version) or cert.get("run_id") != run_id:
                    unreachable.add(peer)
                    continue
                try:
                    appended += bool(ledger.append(cert))  # verifies every signature, the quorum and the parent
                except P2PModelError as e:
                    log.warning("refusing tag %s: %s", version, e)
                break  # the blob is what its id says: other holders have the same bytes
    return appended


def pull_state(dht, run_id: str, cert: dict, timeout_s: float = 300.0) -> dict:
    """Download the tagged state from a peer holding it; verified by digest (the canonical bytes' sha256)."""
    from p2pmodel.eval.digest import parse_canonical

    what = cert["version"]
    return parse_canonical(pull_blob(dht, run_id, cert["digest"], 16 << 30, what, cert["electorate"], timeout_s))


def pull_blob(dht, run_id: str, blob_id: str, max_bytes: int, what: str, prefer=(), timeout_s: float = 300.0):
    """The blob ``blob_id`` (its sha256, checked) from the first of the run's peers that serves it, the peers in
    ``prefer`` first; SwarmError naming each peer's failure when none does."""
    from p2pmodel.core.errors import P2PModelError, SwarmError
    from p2pmodel.swarm.blobs import fetch_blob
    from p2pmodel.swarm.records import list_peer_records

    candidates = [r["peer_id"] for r in list_peer_records(dht, run_id)]
    first = set(prefer)
    candidates.sort(key=lambda p: p not in first)
    errors = []
    for peer in candidates:
        try:
            return fetch_blob(dht, peer, blob_id, max_bytes, timeout_s=timeout_s)
        except (P2PModelError, ValueError) as e:
            errors.append(f"{peer[:12]}: {e}")
    raise SwarmError(f"no peer could serve {what} ({'; '.join(errors) or 'no peer online'})")


def fetch_history(dht, run_id: str) -> dict[int, float]:
    """Median validation loss per round over the peers' signed history records."""
    from p2pmodel.swarm.keys import HISTORY_KIND
    from p2pmodel.swarm.records import get_signed

    return median_loss_by_round(get_signed(dht, f"p2pmodel/{run_id}/history", HISTORY_KIND).values(), run_id)


def median_loss_by_round(bodies, run_id: str) -> dict[int, float]:
    """Median of the finite ``[round, val_loss]`` pairs of ``run_id`` in signed history bodies; the rest is ignored."""
    per_round: dict[int, list[float]] = {}
    for body in bodies:
        rounds = body.get("rounds") if body.get("run_id") == run_id else None
        for item in rounds if isinstance(rounds, list) else []:
            if (
                isinstance(item, list)
                and len(item) == 2
                and type(item[0]) is int  # bools are ints to isinstance; a signed record is still hostile input
                and type(item[1]) in (int, float)
                and math.isfinite(item[1])
            ):
                per_round.setdefault(item[0], []).append(float(item[1]))
    return {r: statistics.median(v) for r, v in sorted(per_round.items())}
