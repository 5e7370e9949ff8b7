"""Peer / digest record schemas refuse every malformed field before a record is believed."""

import pytest

from p2pmodel.core.errors import WireError
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.records import DIGEST_RECORD_FIELDS, PEER_RECORD_FIELDS, check_schema, make_peer_record

IDENT = Identity.generate()


def _good():
    return make_peer_record(IDENT, "run", 3, 10.0, "ab" * 32, ["/ip4/127.0.0.1/tcp/1"])


def test_make_peer_record_is_valid():
    record = _good()
    assert check_schema(record, PEER_RECORD_FIELDS, "peer record") is record
    assert record["peer_id"] == IDENT.peer_id and record["protocol"] >= 1


@pytest.mark.parametrize(
    "field,value",
    [
        ("peer_id", ""),
        ("peer_id", "x" * 500),
        ("run_id", 5),
        ("protocol", True),
        ("protocol", -1),
        ("round", 1.5),
        ("samples_per_s", float("nan")),
        ("samples_per_s", -1.0),
        ("digest", "AB" * 32),
        ("digest", "ab" * 31),
        ("addrs", "/ip4/1.2.3.4/tcp/1"),
        ("addrs", ["x"] * 100),
        ("addrs", [b"bytes"]),
        ("time", "now"),
    ],
)
def test_bad_field_refused(field, value):
    record = _good() | {field: value}
    with pytest.raises(WireError, match=field):
        check_schema(record, PEER_RECORD_FIELDS, "peer record")


def test_missing_or_extra_fields_refused():
    record = _good()
    del record["addrs"]
    with pytest.raises(WireError, match="expected"):
        check_schema(record, PEER_RECORD_FIELDS, "peer record")
    with pytest.raises(WireError, match="expected"):
        check_schema(_good() | {"admin": True}, PEER_RECORD_FIELDS, "peer record")
    with pytest.raises(WireError):
        check_schema([], DIGEST_RECORD_FIELDS, "digest record")
