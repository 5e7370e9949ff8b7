"""Compatibility: the run id covers what peers must share to average and commit the same bits (codec, outer
optimizer, H, ...) and nothing local; the run registry names the field a peer of the same run_name differs in,
refuses to start beside a swarm it cannot join, warns the swarm once, and survives hostile records."""

import logging
import math
from pathlib import Path

import pytest
from hivemind.utils.timed_storage import ValueWithExpiration, get_dht_time

from p2pmodel.config import load_config
from p2pmodel.core.errors import UsageError
from p2pmodel.node import run_registry
from p2pmodel.node.peer import compute_run_id
from p2pmodel.node.run_registry import (
    check_joinable,
    describe,
    find_mismatches,
    publish_run,
    refusal,
    run_record,
)
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.keys import RUN_KIND, RUNS_KEY
from p2pmodel.swarm.records import make_peer_record, publish_peer_record
from p2pmodel.swarm.signed import sign_message

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
VAL = "ab" * 32
ME, THEM, THIRD = Identity.generate(), Identity.generate(), Identity.generate()


def cfg(*overrides):
    return load_config(TINY, list(overrides))


def run_id(*overrides) -> str:
    return compute_run_id(cfg(*overrides), VAL)


SHARED = [
    "compress.codec=int8",
    "compress.block_size=128",
    "compress.error_feedback=false",
    "sync.outer_lr=0.5",
    "sync.outer_momentum=0.9",
    "sync.nesterov=false",
    "train.inner_steps=10",
    "train.seed=1",
    "model.n_layer=2",
]
LOCAL = [
    "logging.level=debug",
    "logging.format=json",
    "observability.status_port=8080",
    "sync.matchmaking_time_s=9",
    "sync.request_timeout_s=4",
    "sync.allreduce_timeout_s=99",
    "sync.chunk_timeout_s=9",
    "sync.download_timeout_s=9",
    "sync.target_group_size=8",
    "sync.min_group_size=3",
    "train.device=cpu",
    "train.torch_threads=2",
    "train.lr=0.01",
    "train.batch_size=16",
    "train.grad_accum_steps=2",
    "swarm.client_mode=true",
    "swarm.record_ttl_s=30",
    "versioning.keep_checkpoints=9",
]


@pytest.mark.parametrize("override", SHARED)
def test_run_id_covers_what_peers_share(override):
    assert run_id(override) != run_id()


@pytest.mark.parametrize("override", LOCAL)
def test_run_id_ignores_local_settings(override):
    assert run_id(override) == run_id()


def test_run_id_covers_the_validation_set_and_protocol(monkeypatch):
    assert compute_run_id(cfg(), "cd" * 32) != run_id()
    base = run_id()
    monkeypatch.setattr("p2pmodel.config.schema.PROTOCOL_VERSION", 99)
    assert run_id() != base


def test_shared_spec_names_fields_like_set():
    spec = cfg().shared_spec(VAL)
    assert spec["compress.codec"] == "int4" and spec["sync.outer_lr"] == 0.7 and spec["train.inner_steps"] == 50
    assert spec["data.val_fingerprint"] == VAL and isinstance(spec["protocol"], int)
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in spec.values())
    assert "train.lr" not in spec and "sync.matchmaking_time_s" not in spec and "logging.level" not in spec


def record(who: Identity, *overrides, **changes) -> dict:
    c = cfg(*overrides)
    return run_record(who.peer_id, c, compute_run_id(c, VAL), c.shared_spec(VAL)) | changes


def mismatches(bodies, *overrides):
    c = cfg(*overrides)
    return find_mismatches(bodies, c.run_name, compute_run_id(c, VAL), c.shared_spec(VAL), ME.peer_id)


def test_mismatch_finder_names_the_field():
    (m,) = mismatches([record(THEM, "compress.codec=int8")])
    assert m.peer_id == THEM.peer_id and m.fields == (("compress.codec", "int8", "int4"),)
    assert describe(m, "tiny") == (
        f'peer {THEM.peer_id} runs "tiny" with compress.codec=int8 (this peer: int4): it cannot join this run'
    )
    line = refusal(m, "tiny")
    assert "compress.codec is int4 here, int8 in the swarm" in line and "\n" not in line

    (m,) = mismatches([record(THEM, "sync.outer_lr=0.5", "sync.nesterov=false")])
    assert [f[0] for f in m.fields] == ["sync.nesterov", "sync.outer_lr"]
    assert "sync.nesterov=false (this peer: true), sync.outer_lr=0.5 (this peer: 0.7)" in describe(m, "tiny")

    (m,) = mismatches([record(THEM, *SHARED)])
    assert describe(m, "tiny").endswith(f"and {len(m.fields) - 3} more: it cannot join this run")


def test_mismatch_finder_skips_our_run_other_names_and_ourselves():
    same = record(THEM)
    other_name = record(THEM, "compress.codec=int8", "run_name=other")
    mine = record(ME, "compress.codec=int8")  # our own record of an earlier config
    assert mismatches([same, other_name, mine]) == []


def test_mismatch_finder_compares_types_too():
    theirs = record(THEM, "compress.codec=int8")
    theirs["spec"] = cfg().shared_spec(VAL) | {"sync.outer_lr": 1, "compress.error_feedback": 1}
    (m,) = mismatches([theirs], "sync.outer_lr=1.0")
    assert [f[0] for f in m.fields] == ["compress.error_feedback", "sync.outer_lr"]


def _hostile():
    good = record(THEM, "compress.codec=int8")
    spec = good["spec"]
    return [
        None,
        "text",
        [good],
        {k: v for k, v in good.items() if k != "spec"},  # an old peer's record: no spec
        good | {"admin": True},
        good | {"run_id": "not-a-run-id"},
        good | {"run_id": 7},
        good | {"run_name": ["tiny"]},
        good | {"peer_id": ""},
        good | {"time": "now"},
        good | {"time": math.nan},
        good | {"model": "gpt"},
        good | {"spec": []},
        good | {"spec": {}},
        good | {"spec": spec | {"compress.codec\nWARNING fake": "x"}},
        good | {"spec": spec | {"Compress.Codec": "x"}},
        good | {"spec": spec | {"compress.codec": ["int8"]}},
        good | {"spec": spec | {"compress.codec": {"a": 1}}},
        good | {"spec": spec | {"sync.outer_lr": math.inf}},
        good | {"spec": spec | {"compress.block_size": 2**70}},
        good | {"spec": spec | {"compress.codec": "x" * 5000}},
        good | {"spec": {f"f.k{i}": 1 for i in range(300)}},
    ]


@pytest.mark.parametrize("body", _hostile())
def test_hostile_records_are_ignored(body):
    assert mismatches([body]) == []


def test_hostile_text_within_the_schema_stays_on_one_line():
    theirs = record(THEM, "compress.codec=int8")
    theirs["spec"] = theirs["spec"] | {"compress.codec": "int8\nERROR forged line " + "y" * 100}
    (m,) = mismatches([theirs])
    for line in (describe(m, "tiny"), refusal(m, "tiny")):
        assert "\n" not in line and len(line) < 400


# --- the registry over an in-memory DHT (real signatures, real record checks) ---------------------------------
class MemoryDHT:
    def __init__(self, fail: bool = False):
        self.data: dict[str, dict] = {}
        self.fail = fail

    def store(self, key, value, expiration_time, subkey=None):
        self.data.setdefault(key, {})[subkey] = ValueWithExpiration(value, expiration_time)
        return True

    def get(self, key, latest=True):
        if self.fail:
            raise RuntimeError("DHT down")
        found = self.data.get(key)
        return None if found is None else ValueWithExpiration(dict(found), get_dht_time() + 60)


@pytest.fixture(autouse=True)
def fresh_registry_state(monkeypatch):
    monkeypatch.setattr(run_registry, "_checked", set())
    monkeypatch.setattr(run_registry, "_reported", set())


def join(dht, who: Identity, *overrides, round_: int | None = 0):
    """``who`` publishes its run record and a fresh peer record at ``round_`` (None: offline), as peers do."""
    c = cfg(*overrides)
    rid = compute_run_id(c, VAL)
    publish_run(dht, who, c, rid, VAL, [], 600)
    if round_ is not None:
        publish_peer_record(dht, who, make_peer_record(who, rid, round_, 0.0, "", []), 60)
    return c, rid


def test_a_peer_beside_another_swarm_of_its_run_name_is_refused_with_the_field(caplog):
    dht = MemoryDHT()
    theirs, their_rid = join(dht, THEM, round_=3)
    check_joinable(dht, THEM.peer_id, theirs, their_rid, VAL)  # the swarm's peer started alone: fine
    c, rid = join(dht, ME, "compress.codec=int8")
    with caplog.at_level(logging.WARNING), pytest.raises(UsageError) as err:
        check_joinable(dht, ME.peer_id, c, rid, VAL)
    assert "compress.codec is int8 here, int4 in the swarm" in str(err.value) and THEM.peer_id in str(err.value)
    assert caplog.records == []  # one line: the error, no warning besides it

    # the swarm's peer: its next publish warns once about the refused peer, later ones do not repeat it
    with caplog.at_level(logging.WARNING):
        publish_run(dht, THEM, theirs, their_rid, VAL, [[1, 2.0]], 600)
        publish_run(dht, THEM, theirs, their_rid, VAL, [[2, 1.9]], 600)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f'peer {ME.peer_id} runs "tiny" with compress.codec=int8 (this peer: int4): it cannot join this run'
    ]


def test_a_peer_starts_when_the_other_swarm_is_gone_new_or_beside_its_own(caplog):
    dht = MemoryDHT()
    join(dht, THEM, round_=None)  # a run record outlives its peer: nobody of that run is online now
    c, rid = join(dht, ME, "compress.codec=int8")
    check_joinable(dht, ME.peer_id, c, rid, VAL)
    join(dht, THEM, round_=0)  # online but never committed: a peer refused itself looks like this
    check_joinable(dht, ME.peer_id, c, rid, VAL)
    assert caplog.records == []

    join(dht, THEM, round_=5)  # the other swarm trains, but a peer of our run is online too: a warning, no refusal
    join(dht, THIRD, "compress.codec=int8")
    run_registry._reported.clear()
    with caplog.at_level(logging.WARNING):
        check_joinable(dht, ME.peer_id, c, rid, VAL)
    expected = f'peer {THEM.peer_id} runs "tiny" with compress.codec=int4 (this peer: int8): it cannot join this run'
    assert [r.getMessage() for r in caplog.records] == [expected]


def test_registry_failures_never_stop_a_peer():
    c, rid = cfg(), run_id()
    check_joinable(MemoryDHT(fail=True), ME.peer_id, c, rid, VAL)
    publish_run(MemoryDHT(fail=True), ME, c, rid, VAL, [], 600)  # publishes, then the read fails: logged only


def test_a_hostile_signed_record_in_the_dht_is_ignored():
    dht = MemoryDHT()
    junk = record(THEM, "compress.codec=int8") | {"spec": {"compress.codec": ["x"]}}
    dht.store(RUNS_KEY, sign_message(THEM, RUN_KIND, junk), get_dht_time() + 60, subkey=THEM.peer_id)
    publish_peer_record(dht, THEM, make_peer_record(THEM, junk["run_id"], 4, 0.0, "", []), 60)
    c, rid = join(dht, ME)
    check_joinable(dht, ME.peer_id, c, rid, VAL)  # no refusal, no crash
    valid = record(THEM, "compress.codec=int8")  # the same peer with a well-formed record is refused
    dht.store(RUNS_KEY, sign_message(THEM, RUN_KIND, valid), get_dht_time() + 60, subkey=THEM.peer_id)
    with pytest.raises(UsageError, match="compress.codec"):
        check_joinable(dht, ME.peer_id, c, rid, VAL)
