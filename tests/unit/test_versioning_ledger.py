"""The on-disk ledger of tags: append/get/latest/all, torn writes, conflicts, duplicates, other processes."""

import os
import subprocess
import sys

import pytest

from p2pmodel.core.errors import IntegrityError
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.signed import sign_message
from p2pmodel.versioning.ledger import Ledger, MissingParentError
from p2pmodel.versioning.semver import Version, next_version
from p2pmodel.versioning.tag import build_tag, tag_id
from p2pmodel.versioning.votes import VOTE_KIND, make_vote

RUN = "run-0123456789abcdef"
D1, D2, D3, D4, OBJ = "1" * 64, "2" * 64, "3" * 64, "4" * 64, "f" * 64


@pytest.fixture(scope="module")
def ids():
    return [Identity.generate() for _ in range(4)]


def make_cert(ids, parent_cert, *, round, digest, bump="patch", voters=None):
    el = [i.peer_id for i in ids]
    parent = parent_cert["version"] if parent_cert else ""
    version = str(next_version(Version.parse(parent) if parent else None, bump))
    votes = [
        sign_message(
            i,
            VOTE_KIND,
            make_vote(
                run_id=RUN,
                round=round,
                digest=digest,
                object_sha256=OBJ,
                parent=parent,
                version=version,
                metrics={"val_loss": 3.0 - round / 100},
                verdict="accept",
                bump=bump,
                voter=i.peer_id,
                electorate=el,
                time=float(round),
            ),  # fmt: skip
        )
        for i in (voters or ids)
    ]
    return build_tag(votes=votes, electorate=el, parent_cert=parent_cert, major_fraction=0.8)


@pytest.fixture(scope="module")
def chain(ids):
    g = make_cert(ids, None, round=10, digest=D1)
    c1 = make_cert(ids, g, round=20, digest=D2)
    c2 = make_cert(ids, c1, round=30, digest=D3, bump="minor")
    return g, c1, c2


def test_append_get_latest_all(tmp_path, chain):
    g, c1, c2 = chain
    ledger = Ledger(tmp_path / "ledger" / "tags.log")
    assert len(ledger) == 0 and ledger.latest() is None and ledger.all() == [] and ledger.get("v0.1.0") is None
    assert ledger.append(g) is True
    assert ledger.append(c1) is True
    assert ledger.append(c2) is True
    assert len(ledger) == 3
    assert ledger.get("v0.1.0") == g and ledger.get(Version(0, 1, 1)) == c1 and ledger.get("0.2.0") == c2
    assert ledger.get("v9.9.9") is None and ledger.get("nonsense") is None
    assert ledger.latest() == c2
    assert [c["version"] for c in ledger.all()] == ["v0.1.0", "v0.1.1", "v0.2.0"]
    assert ledger.versions() == [Version(0, 1, 0), Version(0, 1, 1), Version(0, 2, 0)]
    assert ledger.tag_id("v0.1.1") == tag_id(c1) and "v0.1.1" in ledger
    ledger.get("v0.1.0")["votes"].clear()  # callers get copies
    assert len(ledger.get("v0.1.0")["votes"]) == 4
    again = Ledger(tmp_path / "ledger" / "tags.log")
    assert again.all() == ledger.all()


def test_duplicate_is_ignored(tmp_path, ids, chain):
    g, c1, _ = chain
    ledger = Ledger(tmp_path / "tags.log")
    assert ledger.append(g) and ledger.append(c1)
    size = os.path.getsize(tmp_path / "tags.log")
    assert ledger.append(g) is False and ledger.append(c1) is False
    subset = make_cert(ids, g, round=20, digest=D2, voters=ids[:3])  # same tag, other votes
    assert tag_id(subset) == tag_id(c1) and subset != c1
    assert ledger.append(subset) is False
    assert os.path.getsize(tmp_path / "tags.log") == size and ledger.get("v0.1.1") == c1


def test_no_two_certificates_for_one_version(tmp_path, ids, chain):
    g, c1, _ = chain
    ledger = Ledger(tmp_path / "tags.log")
    ledger.append(g)
    ledger.append(c1)
    rival = make_cert(ids, g, round=40, digest=D4)  # a valid, different v0.1.1 (voters equivocated)
    assert rival["version"] == "v0.1.1" and tag_id(rival) != tag_id(c1)
    size = os.path.getsize(tmp_path / "tags.log")
    with pytest.raises(IntegrityError, match="conflict"):
        ledger.append(rival)
    assert os.path.getsize(tmp_path / "tags.log") == size
    assert ledger.get("v0.1.1")["digest"] == D2
    assert Ledger(tmp_path / "tags.log").get("v0.1.1")["digest"] == D2
    other_genesis = make_cert(ids, None, round=5, digest=D4)
    with pytest.raises(IntegrityError, match="conflict"):
        ledger.append(other_genesis)


def test_invalid_and_orphan_certs_are_refused(tmp_path, ids, chain):
    g, c1, c2 = chain
    ledger = Ledger(tmp_path / "tags.log")
    with pytest.raises(MissingParentError):
        ledger.append(c1)
    assert len(ledger) == 0
    ledger.append(g)
    with pytest.raises(IntegrityError, match="accepting votes"):
        ledger.append({**c1, "votes": c1["votes"][:2]})
    with pytest.raises(IntegrityError):
        ledger.append({**c1, "extra": 1})
    assert len(ledger) == 1 and len(Ledger(tmp_path / "tags.log")) == 1
    assert ledger.extend([c2, c1, g]) == 2 and len(ledger) == 3


@pytest.mark.parametrize("tail", ["half_record", "garbage", "header_only", "bad_checksum"])
def test_torn_tail_is_dropped_and_earlier_tags_kept(tmp_path, chain, tail):
    g, c1, c2 = chain
    path = tmp_path / "tags.log"
    ledger = Ledger(path)
    ledger.append(g)
    ledger.append(c1)
    good_size = os.path.getsize(path)
    # the bytes a third append would write, cut or damaged as a crash or a bad disk would leave them
    probe = Ledger(tmp_path / "probe.log")
    probe.extend([g, c1, c2])
    record = (tmp_path / "probe.log").read_bytes()[good_size:]
    damaged = {
        "half_record": record[: len(record) // 2],
        "garbage": os.urandom(1000),
        "header_only": record[:20],
        "bad_checksum": record[:-1] + bytes([record[-1] ^ 0xFF]),
    }[tail]
    with open(path, "ab") as f:
        f.write(damaged)
    reader = Ledger(path)
    assert [c["version"] for c in reader.all()] == ["v0.1.0", "v0.1.1"]
    assert os.path.getsize(path) == good_size  # the tail was truncated
    assert reader.append(c2) is True
    assert [c["version"] for c in Ledger(path).all()] == ["v0.1.0", "v0.1.1", "v0.2.0"]


@pytest.mark.swarm
def test_another_instance_and_process_see_the_same_tags(tmp_path, chain):
    g, c1, c2 = chain
    path = tmp_path / "tags.log"
    a, b = Ledger(path), Ledger(path)
    a.append(g)
    assert b.get("v0.1.0") == g  # b picks up a's append
    b.append(c1)
    assert a.latest() == c1 and len(a) == 2
    assert a.append(c1) is False  # b stored it; a notices before writing
    a.append(c2)
    script = (
        "import sys; from p2pmodel.versioning.ledger import Ledger; "
        "print(' '.join(c['version'] for c in Ledger(sys.argv[1]).all()))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["v0.1.0", "v0.1.1", "v0.2.0"]


def test_records_failing_policy_are_skipped_not_deleted(tmp_path, ids, chain):
    g, c1, _ = chain
    path = tmp_path / "tags.log"
    ledger = Ledger(path)
    ledger.append(g)
    ledger.append(c1)
    size = os.path.getsize(path)
    strict = Ledger(path, allowlist={i.peer_id for i in ids[:2]})  # fewer than a quorum of these voters allowed
    assert len(strict) == 0
    assert os.path.getsize(path) == size and len(Ledger(path)) == 2
