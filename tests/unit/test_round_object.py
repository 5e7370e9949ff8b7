"""Round objects and patches (versioning/round_object.py, versioning/patch_store.py, node/patch_pull.py): an
all-reduce aggregate stored small and exact, replay bit-identical to the peers' outer step, and every way a
patch can be wrong (forged, damaged, not from this state, not smaller) refused."""

import pytest
import torch
from hivemind.averaging.partition import DEFAULT_PART_SIZE_BYTES, TensorPartContainer
from hivemind.compression.base import CompressionInfo

from p2pmodel.compress import make_codec
from p2pmodel.core.errors import IntegrityError, WireError
from p2pmodel.core.ids import sha256_hex
from p2pmodel.eval.digest import canonical_bytes, state_digest
from p2pmodel.node.patch_pull import PatchUnavailable, patch, path_between
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.signed import sign_message
from p2pmodel.sync.outer import OuterOptimizer
from p2pmodel.versioning.patch_store import PatchStore
from p2pmodel.versioning.round_object import (
    PART_SIZE_BYTES,
    decode_round,
    encode_round,
    on_grid,
    part_sizes,
    replay,
)
from p2pmodel.versioning.tag import build_tag, patch_refs, verify_tag
from p2pmodel.versioning.votes import VOTE_KIND, check_vote_body, make_vote

RUN = "run-0123456789abcdef"
OUTER = {"lr": 0.7, "momentum": 0.9, "nesterov": True}
SHAPES = {"a.weight": (300,), "b.weight": (20, 70), "c.big": (1_100_000,)}  # c.big spans two all-reduce parts
LIMIT = 16 << 20


def _allreduced(shapes, seed, codec_name="int4", block_size=64):
    """What DeterministicAverager leaves in every peer's buffers: each hivemind part decoded from the codec bytes."""
    g = torch.Generator().manual_seed(seed)
    codec = make_codec(codec_name, block_size)
    out = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        flat = torch.randn(shape, generator=g).reshape(-1) * 1e-3
        parts, start = [], 0
        for size in part_sizes(flat.numel(), codec, i):
            part = flat[start : start + size]
            start += size
            parts.append(codec.extract(codec.compress(part, CompressionInfo.from_tensor(part))).reshape(-1))
        out[name] = torch.cat(parts).reshape(shape)
    return out


def _state(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in shapes.items()}


def _step(state, momentum, aggregate):
    """The peers' outer step (sync/outer.py), by parameter name."""
    names = sorted(state)
    params = [state[n].clone() for n in names]
    outer = OuterOptimizer(params, **OUTER)
    outer.momentum_buffers = [momentum[n].clone() if n in momentum else None for n in names]
    outer.step([aggregate[n] for n in names])
    return dict(zip(names, params, strict=True)), dict(zip(names, outer.momentum_buffers, strict=True))


def _object(round_, parent_state, child_state, aggregate, contributors=None):
    return encode_round(
        run_id=RUN, round_=round_, parent=state_digest(parent_state), child=state_digest(child_state), outer=OUTER,
        codec_name="int4", block_size=64, contributors=contributors or {"peerA": 40, "peerB": 20}, aggregate=aggregate,
    )  # fmt: skip


@pytest.mark.timeout(30)
def test_part_layout_is_hivemind_s():
    """The parts the object re-encodes are the ones hivemind's TensorPartContainer cuts (else every part would be
    stored raw): pinned against the installed hivemind, which must fail loudly on an upgrade that changes them."""
    assert DEFAULT_PART_SIZE_BYTES == PART_SIZE_BYTES
    codec = make_codec("int4", 64)
    tensors = [torch.zeros(1_100_000), torch.zeros(300)]
    container = TensorPartContainer(tensors, peer_fractions=[1.0], compression=codec)
    cut = [len(p) for p, _ in container._input_parts_by_peer[0]]
    assert cut == part_sizes(1_100_000, codec, 0) + part_sizes(300, codec, 1)
    assert len(part_sizes(1_100_000, codec, 0)) == 2


@pytest.mark.timeout(60)
def test_an_allreduce_aggregate_is_stored_at_codec_size_and_decodes_bit_for_bit():
    aggregate = _allreduced(SHAPES, seed=1)
    parent = _state(SHAPES, 2)
    child, _ = _step(parent, {}, aggregate)
    blob = _object(3, parent, child, aggregate)
    raw = 4 * sum(t.numel() for t in aggregate.values())
    assert len(blob) < 0.15 * raw, (len(blob), raw)  # int4 + a scale per 64 values: 0.14 of float32
    obj = decode_round(blob, SHAPES, LIMIT)
    for name, t in aggregate.items():
        assert torch.equal(obj.aggregate[name].view(torch.int32), t.view(torch.int32)), name
    assert (obj.round, obj.parent, obj.child, obj.outer) == (3, state_digest(parent), state_digest(child), OUTER)
    assert obj.contributors == [["peerA", 40], ["peerB", 20]]


@pytest.mark.timeout(60)
def test_a_lone_peer_s_delta_moved_on_the_grid_is_what_an_all_reduce_leaves_and_is_stored_small():
    """SwarmLink applies ``on_grid`` of its own delta when it averages alone, so a peer that lost to that round
    replays a small object (node/swarm_link.py ``_alone``)."""
    g = torch.Generator().manual_seed(1)
    delta = {n: torch.randn(s, generator=g) * 1e-3 for n, s in sorted(SHAPES.items())}
    moved = on_grid(delta, "int4", 64)
    expected = _allreduced(SHAPES, seed=1)  # the same draws, each part through the codec once
    assert all(torch.equal(moved[n], expected[n]) and moved[n].shape == delta[n].shape for n in SHAPES)
    assert not torch.equal(moved["c.big"], delta["c.big"])  # it did move
    blob = _object(2, _state(SHAPES, 0), _state(SHAPES, 1), moved)
    assert len(blob) < 0.15 * 4 * sum(t.numel() for t in moved.values())
    assert on_grid(delta, "none", 64)["c.big"] is delta["c.big"]  # no grid: untouched


@pytest.mark.timeout(60)
def test_an_aggregate_off_the_grid_is_stored_raw_and_still_exact():
    g = torch.Generator().manual_seed(5)
    aggregate = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}  # e.g. a robust broadcast aggregate
    aggregate["a.weight"][7] = float("nan")  # never applied by a peer, but the object must not choke on it
    blob = _object(1, _state(SHAPES, 0), _state(SHAPES, 1), aggregate)
    assert len(blob) > 4 * sum(t.numel() for t in aggregate.values())
    with pytest.raises(IntegrityError, match="non-finite"):
        decode_round(blob, SHAPES, LIMIT)
    aggregate["a.weight"][7] = 0.5
    obj = decode_round(_object(1, _state(SHAPES, 0), _state(SHAPES, 1), aggregate), SHAPES, LIMIT)
    assert all(torch.equal(obj.aggregate[n], aggregate[n]) for n in SHAPES)


@pytest.mark.timeout(60)
def test_replay_gives_the_peers_bits_and_refuses_another_parent_or_a_forged_aggregate():
    aggregate = _allreduced(SHAPES, seed=3)
    parent, momentum = _state(SHAPES, 4), _state(SHAPES, 6)
    child, child_momentum = _step(parent, momentum, aggregate)
    obj = decode_round(_object(5, parent, child, aggregate), SHAPES, LIMIT)
    got, got_momentum = replay(parent, momentum, obj)
    assert state_digest(got) == state_digest(child)
    assert canonical_bytes(got_momentum) == canonical_bytes(child_momentum)
    with pytest.raises(IntegrityError, match="does not start from this state"):
        replay(child, momentum, obj)
    forged = _allreduced(SHAPES, seed=99)  # another aggregate, claiming the same parent and child
    with pytest.raises(IntegrityError, match="another state than its child"):
        replay(parent, momentum, decode_round(_object(5, parent, child, forged), SHAPES, LIMIT))
    with pytest.raises(IntegrityError, match="another state"):  # the right aggregate with another momentum
        replay(parent, _state(SHAPES, 7), obj)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("outer", [{"momentum": 0.0}, {"lr": -0.7}, {"lr": float("nan")}])
def test_outer_settings_the_outer_step_would_refuse_are_refused_at_decoding(outer):
    """A forged object must fail as an IntegrityError (a re-sync then downloads the state), never as the
    optimizer's ValueError in the round thread: Nesterov with momentum 0 is one (sync/outer.py)."""
    small = {"a.weight": (300,)}
    blob = encode_round(
        run_id=RUN, round_=2, parent="a" * 64, child="b" * 64, outer={**OUTER, **outer}, codec_name="int4",
        block_size=64, contributors={}, aggregate=_allreduced(small, seed=3),
    )  # fmt: skip
    with pytest.raises(IntegrityError, match="outer-step settings"):
        decode_round(blob, small, LIMIT)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("damage", ["truncate", "flip", "shape", "garbage"])
def test_damaged_objects_are_refused_at_decoding(damage):
    small = {"a.weight": (300,), "b.weight": (20, 70)}
    aggregate = _allreduced(small, seed=8)
    blob = _object(2, _state(small, 0), _state(small, 1), aggregate)
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":  # a nibble 0 in a code: outside int4's symmetric range
        blob = blob[:-40] + bytes(40)
    elif damage == "shape":
        small = {"a.weight": (301,), "b.weight": (20, 70)}
    else:
        blob = b"\x93" + bytes(100)
    with pytest.raises(IntegrityError):
        decode_round(blob, small, LIMIT)
    with pytest.raises((IntegrityError, WireError)):
        decode_round(_object(2, _state(small, 0), _state(small, 1), _allreduced(small, 1)), small, 100)  # too big


@pytest.mark.timeout(30)
def test_the_patch_store_keeps_a_chain_of_its_own_rounds_and_prunes_old_ones(tmp_path):
    store = PatchStore(tmp_path, keep_rounds=3)
    d = [c * 64 for c in "abcdef"]
    ids = [store.put_round(r, f"object {r}".encode(), d[r - 1], d[r]) for r in (1, 2, 3)]
    assert store.chain(d[0], d[3], 1, 3) == [[i, len(b"object 1")] for i in ids]
    assert store.chain(d[0], d[2], 1, 3) is None  # does not end at that child
    assert store.chain(d[1], d[3], 1, 3) is None  # does not start at that parent
    store.put_round(2, b"object 2 again", d[4], d[2])  # a later incarnation of round 2, after a re-sync
    assert store.chain(d[0], d[3], 1, 3) is None
    mid = store.put_momentum(3, b"momentum 3")
    assert store.get(mid) == b"momentum 3" and store.get(ids[0]) == b"object 1"
    store.put_round(5, b"object 5", d[4], d[5])  # rounds 1 and 2 fall out of the window
    reopened = PatchStore(tmp_path, keep_rounds=3)
    assert reopened.get(ids[0]) is None and reopened.get(ids[2]) == b"object 3" and reopened.get(mid)
    assert reopened.chain(d[2], d[3], 3, 3) == [[ids[2], len(b"object 3")]]
    assert reopened.get("../../etc/passwd") is None


# --- patches between tags ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ids():
    return sorted((Identity.generate() for _ in range(3)), key=lambda i: i.peer_id)


def _vote(ident, electorate, round_, digest, parent, version, rounds=None, momentum=None):
    body = make_vote(
        run_id=RUN, round=round_, digest=digest, object_sha256=digest, parent=parent, version=version,
        metrics={"val_loss": 3.0}, verdict="accept", bump="patch", voter=ident.peer_id, electorate=electorate,
        time=1000.0, rounds=rounds, momentum=momentum,
    )  # fmt: skip
    return sign_message(ident, VOTE_KIND, body)


class Lineage:
    """v0.1.0 at round 2 (state A), two all-reduced rounds, v0.1.1 at round 4 (state C); blobs by id."""

    def __init__(self, ids, shapes, forged_votes=0, corrupt=None):
        electorate = [i.peer_id for i in ids]
        self.a, self.ma = _state(shapes, 10), _state(shapes, 11)
        agg3, agg4 = _allreduced(shapes, 12), _allreduced(shapes, 13)
        b, mb = _step(self.a, self.ma, agg3)
        self.c, self.mc = _step(b, mb, agg4)
        objects = [_object(3, self.a, b, agg3), _object(4, b, self.c, agg4)]
        self.blobs = {sha256_hex(o): o for o in objects}
        refs = [[sha256_hex(o), len(o)] for o in objects]
        momentum_id = sha256_hex(canonical_bytes(self.mc))
        fake = _object(3, self.a, self.c, _allreduced(shapes, 66))  # one round straight to C: a lie
        self.blobs[sha256_hex(fake)] = fake
        fake_refs = [[sha256_hex(fake), len(fake)]]
        self.ma_id = sha256_hex(canonical_bytes(self.ma))  # a genesis tag: momentum, no rounds before it
        a_votes = [_vote(i, electorate, 2, state_digest(self.a), "", "v0.1.0", momentum=self.ma_id) for i in ids]
        self.v0 = build_tag(votes=a_votes, electorate=electorate, parent_cert=None)
        c_votes = [
            _vote(i, electorate, 4, state_digest(self.c), "v0.1.0", "v0.1.1", *(
                (fake_refs, momentum_id) if k < forged_votes else (refs, momentum_id)
            ))
            for k, i in enumerate(ids)
        ]  # fmt: skip
        self.v1 = build_tag(votes=c_votes, electorate=electorate, parent_cert=self.v0)
        verify_tag(self.v0, None)
        verify_tag(self.v1, self.v0)
        self.corrupt = corrupt
        self.fetched: list[str] = []

    def fetch(self, blob_id, max_bytes):
        self.fetched.append(blob_id)
        blob = self.blobs[blob_id]
        assert len(blob) <= max_bytes
        return self.corrupt(blob) if self.corrupt else blob

    def path(self):
        return path_between([self.v0, self.v1], "v0.1.0", state_digest(self.a), "v0.1.1")


@pytest.mark.timeout(60)
def test_a_patch_between_tags_reaches_the_tag_s_state_and_momentum_for_a_fraction_of_the_bytes(ids):
    line = Lineage(ids, SHAPES)
    full = len(canonical_bytes(line.c))
    got = patch(line.path(), line.a, line.ma, line.fetch, full)
    assert state_digest(got.state) == line.v1["digest"] == state_digest(line.c)
    assert canonical_bytes(got.momentum) == canonical_bytes(line.mc)
    assert got.rounds == 2 and got.fetched_bytes == sum(len(line.blobs[b]) for b in line.fetched)
    assert got.fetched_bytes < 0.3 * full, (got.fetched_bytes, full)  # two int4 rounds: ~0.28 of the state


@pytest.mark.timeout(60)
def test_the_patch_most_votes_name_is_used_and_a_forged_one_is_refused(ids):
    minority = Lineage(ids, SHAPES, forged_votes=1)  # one voter names a forged object: outvoted
    assert patch_refs(minority.v1) == patch_refs(Lineage(ids, SHAPES).v1)
    assert patch_refs(minority.v0) == (None, minority.ma_id)  # what a whole pull of it fetches for a later patch
    got = patch(minority.path(), minority.a, minority.ma, minority.fetch, 1 << 30)
    assert state_digest(got.state) == minority.v1["digest"]
    majority = Lineage(ids, SHAPES, forged_votes=2)  # most voters name it: replay refuses it all the same
    with pytest.raises(IntegrityError, match="another state than its child"):
        patch(majority.path(), majority.a, majority.ma, majority.fetch, 1 << 30)


@pytest.mark.timeout(60)
def test_a_damaged_object_a_bigger_patch_or_a_tag_without_one_is_not_used(ids):
    small = {"a.weight": (300,), "b.weight": (20, 70)}
    damaged = Lineage(ids, small, corrupt=lambda b: b[:-40] + bytes(40))
    with pytest.raises(IntegrityError):
        patch(damaged.path(), damaged.a, damaged.ma, damaged.fetch, 1 << 30)
    line = Lineage(ids, small)
    with pytest.raises(PatchUnavailable, match="not smaller"):
        patch(line.path(), line.a, line.ma, line.fetch, 1000)
    assert line.fetched == []  # decided before downloading anything
    electorate = [i.peer_id for i in ids]
    bare = build_tag(
        votes=[_vote(i, electorate, 4, state_digest(line.c), "v0.1.0", "v0.1.1") for i in ids],
        electorate=electorate,
        parent_cert=line.v0,
    )
    assert patch_refs(bare) == (None, None)
    with pytest.raises(PatchUnavailable, match="record no patch"):
        patch([bare], line.a, line.ma, line.fetch, 1 << 30)
    with pytest.raises(PatchUnavailable, match="not a tag"):
        path_between([line.v0, line.v1], "v0.1.0", "0" * 64, "v0.1.1")


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "field,value",
    [("rounds", []), ("rounds", [["x" * 64, 10]]), ("rounds", [["a" * 64, 0]]), ("rounds", [["a" * 64, 1]] * 33),
     ("momentum", "nope"), ("momentum", 7)],
)  # fmt: skip
def test_a_vote_with_malformed_patch_fields_is_refused(ids, field, value):
    body = make_vote(
        run_id=RUN, round=4, digest="1" * 64, object_sha256="1" * 64, parent="", version="v0.1.0",
        metrics={"val_loss": 3.0}, verdict="accept", bump="patch", voter=ids[0].peer_id,
        electorate=[ids[0].peer_id], time=1000.0, rounds=[["a" * 64, 100]], momentum="b" * 64,
    )  # fmt: skip
    assert check_vote_body(dict(body)) == body
    with pytest.raises(WireError, match=field):
        check_vote_body({**body, field: value})
