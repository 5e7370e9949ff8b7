"""The global run registry (``p2pmodel/runs``): each peer signs a run record there, so light clients find runs
without a config, and so a peer whose settings differ from a swarm of the same run_name learns which ones.

The record carries the shared spec (``Config.shared_spec``: everything the run id hashes, as flat fields). A
peer of another run id cannot average with the swarm (the averager, records and offers are keyed by run id),
so a user who changed, say, ``compress.codec`` would silently train alone: at startup such a peer stops with
one line naming the field when only the other swarm is online (``check_joinable``), and the swarm's peers log
one warning line per such peer when they next publish (every ``versioning.release_every`` rounds).

Records are hostile input (any key can sign one): each is schema-checked before a field of it is read."""

import collections
import json
import logging
import math
import re
import time
from dataclasses import dataclass

from p2pmodel.config.schema import Config, SpecValue
from p2pmodel.core.errors import UsageError, WireError
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.keys import HISTORY_KIND, RUN_KIND, RUNS_KEY, history_key
from p2pmodel.swarm.records import check_schema, get_signed, list_peer_records, publish_signed

log = logging.getLogger("p2pmodel.swarm")

MAX_SPEC_FIELDS = 256
MAX_SHOWN_FIELDS = 3  # a line names at most this many differing fields, then "and N more"
_FIELD = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}", re.ASCII)
_RUN_ID = re.compile(r"[0-9a-f]{16}", re.ASCII)


def _short_str(v) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 128


def _scalar(v) -> bool:
    if v is None or isinstance(v, bool):
        return True
    if isinstance(v, int):
        return -(2**63) <= v < 2**63
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, str) and len(v) <= 4096


def _spec(v) -> bool:
    return (
        isinstance(v, dict)
        and 0 < len(v) <= MAX_SPEC_FIELDS
        and all(isinstance(k, str) and _FIELD.fullmatch(k) and _scalar(x) for k, x in v.items())
    )


RUN_RECORD_FIELDS = {
    "peer_id": _short_str,  # signer's PeerID
    "run_id": lambda v: isinstance(v, str) and _RUN_ID.fullmatch(v) is not None,
    "run_name": _short_str,
    "model": lambda v: isinstance(v, dict),  # the model section, shown by `versions show`
    "spec": _spec,  # Config.shared_spec: {"compress.codec": "int4", ...}
    "time": lambda v: type(v) in (int, float) and math.isfinite(v) and v >= 0,
}


@dataclass(frozen=True)
class Mismatch:
    """A peer registered under our run_name with another run id, and how its spec differs from ours."""

    peer_id: str
    run_id: str
    fields: tuple[tuple[str, SpecValue, SpecValue], ...]  # (field, theirs, ours), sorted by field


def run_record(peer_id: str, cfg: Config, run_id: str, spec: dict[str, SpecValue]) -> dict:
    """This peer's run record (the same schema readers check)."""
    body = {
        "peer_id": peer_id,
        "run_id": run_id,
        "run_name": cfg.run_name,
        "model": cfg.model.model_dump(),
        "spec": spec,
        "time": time.time(),
    }
    return check_schema(body, RUN_RECORD_FIELDS, "run record")


def find_mismatches(bodies, run_name: str, run_id: str, spec: dict[str, SpecValue], own_peer_id: str) -> list[Mismatch]:
    """Valid run records of ``run_name`` with another run id than ours (other peers only), sorted by peer."""
    found = []
    for body in bodies:
        try:
            check_schema(body, RUN_RECORD_FIELDS, "run record")
        except WireError as e:
            log.debug("dropping run record: %s", e)
            continue
        if body["run_name"] != run_name or body["run_id"] == run_id or body["peer_id"] == own_peer_id:
            continue
        theirs = body["spec"]
        fields = tuple(
            (k, theirs.get(k), spec.get(k))
            for k in sorted(set(theirs) | set(spec))
            if type(theirs.get(k)) is not type(spec.get(k)) or theirs.get(k) != spec.get(k)
        )
        found.append(Mismatch(body["peer_id"], body["run_id"], fields))
    return sorted(found, key=lambda m: (m.peer_id, m.run_id))


def _show(v: SpecValue) -> str:
    """A spec value as one would write it in --set; hostile text is quoted and cut short."""
    text = v if isinstance(v, str) else json.dumps(v)
    return text if text.isprintable() and len(text) <= 48 else repr(text[:48])


def _listed(m: Mismatch, one) -> str:
    parts = [one(k, theirs, ours) for k, theirs, ours in m.fields[:MAX_SHOWN_FIELDS]]
    more = len(m.fields) - MAX_SHOWN_FIELDS
    if more > 0:
        parts.append(f"and {more} more")
    return ", ".join(parts) or f"the same settings but run id {m.run_id} (other software?)"


def describe(m: Mismatch, run_name: str) -> str:
    """The warning line of a peer that cannot join our run."""
    fields = _listed(m, lambda k, theirs, ours: f"{k}={_show(theirs)} (this peer: {_show(ours)})")
    return f'peer {m.peer_id} runs "{run_name}" with {fields}: it cannot join this run'


def refusal(m: Mismatch, run_name: str) -> str:
    """The one error line of a peer whose config does not match the swarm of its run_name."""
    fields = _listed(m, lambda k, theirs, ours: f"{k} is {_show(ours)} here, {_show(theirs)} in the swarm")
    return (
        f'this config does not match the swarm running "{run_name}" (peer {m.peer_id}): {fields}; '
        "use the swarm's settings or another run_name"
    )


# runs whose startup check has run in this process, and (peer, run id) pairs already reported: the startup
# check speaks first (one error line, not a warning too), later publishes report newcomers once each
_checked: set[str] = set()
_reported: set[tuple[str, str]] = set()


def _report(found: list[Mismatch], run_name: str) -> None:
    for m in found:
        if (m.peer_id, m.run_id) not in _reported and len(_reported) < 10_000:
            _reported.add((m.peer_id, m.run_id))
            log.warning(describe(m, run_name))


def _read(dht, cfg: Config, run_id: str, spec: dict[str, SpecValue], own_peer_id: str) -> list[Mismatch]:
    return find_mismatches(get_signed(dht, RUNS_KEY, RUN_KIND).values(), cfg.run_name, run_id, spec, own_peer_id)


def publish_run(
    dht,
    identity: Identity,
    cfg: Config,
    run_id: str,
    val_fingerprint: str,
    history: list[list],
    ttl_s: float,
    set_fingerprints: dict[str, str] | None = None,
) -> None:
    """Sign our run record and recent history into the DHT, then warn about peers of our run_name that cannot
    join (once each). Never raises: the registry is for finding runs, training goes on without it."""
    spec = cfg.shared_spec(val_fingerprint, set_fingerprints)
    rounds = {"peer_id": identity.peer_id, "run_id": run_id, "rounds": history[-256:], "time": time.time()}
    try:
        publish_signed(dht, identity, RUNS_KEY, RUN_KIND, run_record(identity.peer_id, cfg, run_id, spec), ttl_s)
        publish_signed(dht, identity, history_key(run_id), HISTORY_KIND, rounds, ttl_s)
        if run_id in _checked:
            _report(_read(dht, cfg, run_id, spec, identity.peer_id), cfg.run_name)
    except Exception as e:
        log.debug("run record publish failed: %s", e)


def _online(dht, run_id: str, max_age_s: float) -> dict[str, int]:
    """{peer_id: last committed round} of fresh peer records of ``run_id``: online now, unlike a run record."""
    return {r["peer_id"]: r["round"] for r in list_peer_records(dht, run_id, max_age_s=max_age_s)}


def check_joinable(
    dht,
    own_peer_id: str,
    cfg: Config,
    run_id: str,
    val_fingerprint: str,
    set_fingerprints: dict[str, str] | None = None,
) -> None:
    """At startup: UsageError (one line naming the fields) when a swarm of our run_name with other settings is
    online and no other peer of our run id is; a warning per such peer when both are. A DHT failure passes."""
    spec = cfg.shared_spec(val_fingerprint, set_fingerprints)
    live_s = cfg.swarm.record_ttl_s
    try:
        found = _read(dht, cfg, run_id, spec, own_peer_id)
        live = {}  # other run id -> its peers online that committed a round (a refused peer never does)
        for rid, _ in collections.Counter(m.run_id for m in found).most_common(8):  # a DHT get each
            live[rid] = {p for p, r in _online(dht, rid, live_s).items() if r >= 1}
        online = [m for m in found if live.get(m.run_id)]
        ours = bool(online) and bool(set(_online(dht, run_id, live_s)) - {own_peer_id})
    except Exception as e:
        log.debug("run registry check failed: %s", e)
        return
    finally:
        _checked.add(run_id)
    _reported.update((m.peer_id, m.run_id) for m in found)  # known now: said below or already gone
    if online and not ours:
        biggest = max(live, key=lambda rid: (len(live[rid]), rid))
        cite = [m for m in online if m.run_id == biggest]
        raise UsageError(refusal(next((m for m in cite if m.peer_id in live[biggest]), cite[0]), cfg.run_name))
    for m in {m.run_id: m for m in reversed(online)}.values():  # one line per other run
        log.warning(describe(m, cfg.run_name))
