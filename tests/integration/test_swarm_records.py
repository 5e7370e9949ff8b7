"""Signed peer / digest records between three real DHT peers on 127.0.0.1."""

import logging
import time

import pytest

from p2pmodel import PROTOCOL_VERSION
from p2pmodel.core import wire
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.node import start_dht, visible_maddrs
from p2pmodel.swarm.records import (
    PEER_RECORD_KIND,
    get_digests,
    list_peer_records,
    make_peer_record,
    peers_key,
    publish_digest,
    publish_peer_record,
    publish_signed,
)
from p2pmodel.swarm.refresher import RecordRefresher
from p2pmodel.swarm.signed import sign_message

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def swarm():
    dhts = [start_dht(None, [], LOCAL, wait_timeout_s=3)]
    try:
        first = visible_maddrs(dhts[0])
        dhts.append(start_dht(None, first, LOCAL, wait_timeout_s=3))
        dhts.append(start_dht(None, first, LOCAL, client_mode=True, wait_timeout_s=3))
        yield dhts
    finally:
        for dht in dhts:
            dht.shutdown()


def _record(ident, run_id, round=3, **changes):
    record = make_peer_record(ident, run_id, round, 123.5, DIGEST, ["/ip4/127.0.0.1/tcp/1"])
    record.update(changes)
    return record


@pytest.mark.timeout(60)
def test_peer_records_round_trip(swarm):
    a, b, c = swarm
    ia, ib = Identity.generate(), Identity.generate()
    assert publish_peer_record(a, ia, _record(ia, "run1"), ttl_s=30)
    assert publish_peer_record(c, ib, _record(ib, "run1", round=4), ttl_s=30)  # a client-mode peer publishes too
    for reader in (a, b, c):
        records = list_peer_records(reader, "run1")
        assert {r["peer_id"]: r["round"] for r in records} == {ia.peer_id: 3, ib.peer_id: 4}
    got = next(r for r in list_peer_records(b, "run1") if r["peer_id"] == ia.peer_id)
    assert got == _record(ia, "run1", time=got["time"])
    assert list_peer_records(b, "another-run") == []
    # republishing replaces the old record of the same peer
    assert publish_peer_record(a, ia, _record(ia, "run1", round=5), ttl_s=30)
    assert {r["round"] for r in list_peer_records(b, "run1") if r["peer_id"] == ia.peer_id} == {5}


@pytest.mark.timeout(60)
def test_foreign_run_and_protocol_refused_with_peer_named(swarm, caplog):
    a, b, _ = swarm
    good, foreign, future, v2, liar = (Identity.generate() for _ in range(5))
    publish_peer_record(a, good, _record(good, "run2"), 30)
    # a well-signed record of another run, stored under our run's key
    publish_signed(a, foreign, peers_key("run2"), PEER_RECORD_KIND, _record(foreign, "other-run"), 30)
    publish_peer_record(a, future, _record(future, "run2", protocol=PROTOCOL_VERSION + 1), 30)
    # an envelope of another protocol version altogether
    inner = wire.open_envelope(sign_message(v2, PEER_RECORD_KIND, _record(v2, "run2")), PEER_RECORD_KIND)
    raw = wire.pack({"v": PROTOCOL_VERSION + 1, "t": PEER_RECORD_KIND, "b": inner})
    a.store(peers_key("run2"), raw, time.time() + 30, subkey=v2.peer_id)
    # a valid signature stored under somebody else's subkey
    a.store(
        peers_key("run2"),
        sign_message(liar, PEER_RECORD_KIND, _record(liar, "run2")),
        time.time() + 30,
        subkey=good.peer_id + "x",
    )
    a.store(peers_key("run2"), b"\x93garbage", time.time() + 30, subkey="junk")
    with caplog.at_level(logging.DEBUG, logger="p2pmodel.swarm.records"):
        records = list_peer_records(b, "run2")
    assert [r["peer_id"] for r in records] == [good.peer_id]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(foreign.peer_id in w and "other-run" in w for w in warnings)
    assert any(future.peer_id in w and "protocol" in w for w in warnings)
    assert any(v2.peer_id in w and "protocol" in w for w in warnings)


@pytest.mark.timeout(60)
def test_expiry_and_max_age(swarm):
    a, b, _ = swarm
    short, old = Identity.generate(), Identity.generate()
    publish_peer_record(a, short, _record(short, "run3"), ttl_s=1.0)
    publish_peer_record(a, old, _record(old, "run3", time=time.time() - 600), ttl_s=30)
    assert {r["peer_id"] for r in list_peer_records(b, "run3")} == {short.peer_id, old.peer_id}
    assert [r["peer_id"] for r in list_peer_records(b, "run3", max_age_s=60)] == [short.peer_id]
    time.sleep(1.5)
    assert [r["peer_id"] for r in list_peer_records(b, "run3")] == [old.peer_id]


@pytest.mark.timeout(60)
def test_digest_records_and_refresher(swarm):
    a, b, c = swarm
    ids = [Identity.generate() for _ in range(3)]
    for dht, ident, digest in zip(swarm, ids, [DIGEST, DIGEST, "cd" * 32], strict=True):
        assert publish_digest(dht, ident, "run4", 7, digest, ttl_s=30)
    got = get_digests(b, "run4", 7)
    assert got == {ids[0].peer_id: DIGEST, ids[1].peer_id: DIGEST, ids[2].peer_id: "cd" * 32}
    assert get_digests(b, "run4", 8) == {}

    rounds = iter(range(100))
    ident = ids[0]
    with RecordRefresher(c, ident, lambda: _record(ident, "run5", round=next(rounds)), ttl_s=1.5) as refresher:
        time.sleep(2.5)  # past one ttl: still listed because it was republished
        assert [r["peer_id"] for r in list_peer_records(a, "run5")] == [ident.peer_id]
        assert refresher.published >= 3
    time.sleep(1.6)
    assert list_peer_records(a, "run5") == []
