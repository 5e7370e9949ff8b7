"""Content-addressed store: round trips, digests verified on load, commits durable with HEAD written last,
pruning keeps what is pinned or current."""

import json

import pytest
import torch

from p2pmodel.core.errors import IntegrityError
from p2pmodel.eval import state_digest
from p2pmodel.versioning import store as store_mod
from p2pmodel.versioning.store import Store, state_from_bytes

pytestmark = pytest.mark.timeout(30)


def make_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"b.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(5, generator=g), "c": torch.zeros(())}


def commit_state(store: Store, round_: int, state, keep: int = 3, private=None, meta=None) -> str:
    digest = store.put_state(state)
    store.commit(round_, digest, private or {}, meta or {"round": round_}, keep=keep)
    return digest


# --- objects --------------------------------------------------------------------------------------
def test_put_get_round_trip(tmp_path):
    s = Store(tmp_path)
    state = make_state()
    digest = s.put_state(state)
    assert digest == state_digest(state)
    assert s.has_state(digest) and s.object_path(digest).exists()
    back = s.get_state(digest)
    assert set(back) == set(state)
    for k in state:
        assert back[k].dtype == torch.float32 and torch.equal(back[k], state[k])
    assert s.put_state(state) == digest  # idempotent
    assert len(list(s.objects.iterdir())) == 1


def test_put_canonicalises_dtype(tmp_path):
    s = Store(tmp_path)
    state = {"w": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)}
    digest = s.put_state(state)
    assert digest == state_digest({"w": state["w"].float()})
    assert s.get_state(digest)["w"].dtype == torch.float32


@pytest.mark.parametrize("where", ["data", "header"])
def test_flipped_byte_is_refused(tmp_path, where):
    s = Store(tmp_path)
    digest = s.put_state(make_state())
    path = s.object_path(digest)
    blob = bytearray(path.read_bytes())
    i = len(blob) - 3 if where == "data" else 12
    blob[i] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError):
        s.get_state(digest)


def test_missing_and_malformed_digests(tmp_path):
    s = Store(tmp_path)
    with pytest.raises(IntegrityError):
        s.get_state("0" * 64)
    for bad in ["../../etc/passwd", "ABC", "0" * 63, "g" * 64]:
        with pytest.raises(IntegrityError):
            s.object_path(bad)
    assert s.state_bytes("0" * 64) is None


def test_import_state_bytes_verifies_before_storing(tmp_path):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    digest = src.put_state(make_state(1))
    blob = src.state_bytes(digest)
    other = state_digest(make_state(2))
    with pytest.raises(IntegrityError):
        dst.import_state_bytes(blob, other)
    assert not dst.has_state(other)
    with pytest.raises(IntegrityError):
        dst.import_state_bytes(b"garbage", digest)
    assert not dst.has_state(digest)
    state = dst.import_state_bytes(blob, digest)
    assert dst.has_state(digest) and state_digest(state) == digest


def test_non_float32_state_bytes_refused():
    from safetensors.torch import save

    t = {"w": torch.ones(3, dtype=torch.float64)}
    with pytest.raises(IntegrityError, match="float32"):
        state_from_bytes(save(t), state_digest(t))


# --- commits ----------------------------------------------------------------------------------------
def test_commit_head_resume(tmp_path):
    s = Store(tmp_path)
    assert s.head() is None
    state = make_state()
    private = {"inner.0.exp_avg": torch.randn(4, 3), "outer.1": torch.randn(5)}
    meta = {"inner": {"step": 30}, "run_id": "abc", "samples_total": 240}
    digest = commit_state(s, 1, state, private=private, meta=meta)
    head = Store(tmp_path).head()  # a fresh process reads the same
    assert head["round"] == 1 and head["digest"] == digest and head["meta"] == meta
    assert all(torch.equal(head["state"][k], state[k]) for k in state)
    assert set(head["private"]) == set(private)
    assert all(torch.equal(head["private"][k], private[k]) for k in private)
    digest2 = commit_state(s, 2, make_state(1))
    head = s.head()
    assert head["round"] == 2 and head["digest"] == digest2 and head["private"] == {}


def test_commit_requires_stored_state(tmp_path):
    s = Store(tmp_path)
    with pytest.raises(IntegrityError):
        s.commit(1, state_digest(make_state()), {}, {}, keep=3)
    assert s.head() is None


def test_stray_tmp_and_uncommitted_round_leave_head_alone(tmp_path):
    s = Store(tmp_path)
    d1 = commit_state(s, 1, make_state(1))
    # a crash mid-commit of round 2: object and round files written, HEAD not updated, temp files left over
    d2 = s.put_state(make_state(2))
    from safetensors.torch import save

    (s.rounds / "2.safetensors").write_bytes(save({"x": torch.ones(2)}))
    (s.rounds / "2.json").write_text(json.dumps({"round": 2, "digest": d2, "private_sha256": "0", "meta": {}}))
    (tmp_path / ".HEAD.json.abc123.tmp").write_text('{"round": 2}')
    (s.rounds / ".3.json.xyz.tmp").write_text("{")
    head = Store(tmp_path).head()
    assert head["round"] == 1 and head["digest"] == d1


def test_crash_before_head_write_keeps_previous_commit(tmp_path, monkeypatch):
    s = Store(tmp_path)
    d1 = commit_state(s, 1, make_state(1))
    real = store_mod.atomic_write
    written = []

    def crash_on_head(path, data):
        if path.name == "HEAD.json":
            raise OSError("simulated power cut")
        written.append(path.name)
        real(path, data)

    monkeypatch.setattr(store_mod, "atomic_write", crash_on_head)
    with pytest.raises(OSError):
        commit_state(s, 2, make_state(2))
    assert written[-2:] == ["2.safetensors", "2.json"]  # everything else went first
    head = s.head()
    assert head["round"] == 1 and head["digest"] == d1


def test_corrupted_resume_state_is_refused(tmp_path):
    s = Store(tmp_path)
    commit_state(s, 1, make_state(), private={"inner.0.exp_avg": torch.ones(8)})
    f = s.rounds / "1.safetensors"
    blob = bytearray(f.read_bytes())
    blob[-1] ^= 0xFF
    f.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError):
        s.head()


# --- pruning ------------------------------------------------------------------------------------------
def test_pruning_keeps_pinned_and_current(tmp_path):
    s = Store(tmp_path)
    digests = {}
    for r in range(1, 3):
        digests[r] = commit_state(s, r, make_state(r), keep=2)
    s.pin(digests[1])
    for r in range(3, 6):
        digests[r] = commit_state(s, r, make_state(r), keep=2)
    assert sorted(int(p.stem) for p in s.rounds.glob("*.json")) == [4, 5]
    assert sorted(int(p.stem) for p in s.rounds.glob("*.safetensors")) == [4, 5]
    assert s.has_state(digests[1])  # pinned (a tagged version)
    assert not s.has_state(digests[2]) and not s.has_state(digests[3])
    assert s.has_state(digests[4]) and s.has_state(digests[5])
    assert s.pinned() == {digests[1]}
    assert s.head()["round"] == 5


def test_pruning_keeps_a_digest_still_referenced(tmp_path):
    s = Store(tmp_path)
    state = make_state()
    for r in range(1, 5):  # a peer whose state did not change between rounds
        d = commit_state(s, r, state, keep=1)
    assert s.has_state(d) and s.head()["round"] == 4
    assert [p.stem for p in s.rounds.glob("*.json")] == ["4"]
