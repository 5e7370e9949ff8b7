"""Broadcast updates (node/broadcast.py) as hostile input: what a forged blob becomes on the receiving side.

The test-only attacks of byzantine.py are checked here too, so that the benchmark measures what it says: the
``nan`` forgery really carries a NaN (and every codec refuses it at decoding), the ``alie`` update really is the
honest mean minus one honest standard deviation."""

import pytest
import torch

from p2pmodel.compress import CodecError, make_codec
from p2pmodel.core.errors import WireError
from p2pmodel.core.ids import sha256_hex
from p2pmodel.node.broadcast import ALIE_Z, ATTACK_ENV, Broadcast, pack_update, unpack_update

SHAPES = [(300, 20), (7,)]
RUN = "r" * 16


class _Gossip:
    def subscribe(self, kind, handler, direct=False):
        self.handler = handler

    def unsubscribe(self, kind):
        pass


class _Identity:
    peer_id = "Qmattacker"


def _tensors(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in SHAPES]


def _broadcast(monkeypatch, attack: str, codec, fetch=None) -> Broadcast:
    monkeypatch.setenv(ATTACK_ENV, attack)
    return Broadcast(_Gossip(), _Identity(), RUN, codec, SHAPES, fetch or (lambda *a: b""), "mean", lambda: 0)


@pytest.mark.timeout(10)
def test_an_update_of_another_round_or_run_is_refused():
    codec = make_codec("int4")
    blob = pack_update(RUN, 3, codec, _tensors(0))
    assert [t.shape for t in unpack_update(blob, RUN, 3, codec, SHAPES)] == [torch.Size(s) for s in SHAPES]
    with pytest.raises(WireError):
        unpack_update(blob, RUN, 4, codec, SHAPES)
    with pytest.raises(WireError):
        unpack_update(blob, "x" * 16, 3, codec, SHAPES)
    with pytest.raises((WireError, CodecError)):
        unpack_update(blob, RUN, 3, codec, [(300, 21), (7,)])


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", ["sparse", "int4", "int8", "none", "fp16"])
def test_the_nan_forgery_is_refused_at_decoding_by_every_codec(monkeypatch, name):
    codec = make_codec(name)
    attacker = _broadcast(monkeypatch, "nan", codec)
    blob = attacker._nan_blob(1, _tensors(0))
    assert blob != pack_update(RUN, 1, codec, _tensors(0))
    with pytest.raises(CodecError, match="NaN"):
        unpack_update(blob, RUN, 1, codec, SHAPES)


@pytest.mark.timeout(10)
def test_the_alie_update_is_the_honest_mean_minus_z_standard_deviations(monkeypatch):
    codec = make_codec("none")
    honest = {f"Qmhonest{i}": _tensors(i) for i in range(3)}
    blobs = {peer: pack_update(RUN, 2, codec, t) for peer, t in honest.items()}
    by_id = {sha256_hex(b): b for b in blobs.values()}
    attacker = _broadcast(monkeypatch, "alie", codec, fetch=lambda peer, blob_id, limit, timeout: by_id[blob_id])
    for peer, b in blobs.items():
        body = {"run_id": RUN, "round": 2, "blob": sha256_hex(b), "size": len(b), "samples": 10}
        assert attacker.box.add(peer, body, committed=1)
    own = _tensors(9)
    forged = attacker._alie(2, own, set(honest), wait_s=1.0, fetch_s=1.0)
    for i, out in enumerate(forged):
        stacked = torch.stack([own[i], *(t[i] for t in honest.values())])
        assert torch.equal(out, stacked.mean(0) - ALIE_Z * stacked.std(0))
    assert all((f - o).abs().max() > 0 for f, o in zip(forged, own, strict=True))
