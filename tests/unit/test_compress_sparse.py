"""The top-k 2-bit sparse codec: what it keeps, its size, error feedback, and hostile messages refused."""

import pytest
import torch
from hivemind.compression.base import CompressionInfo
from hivemind.proto import runtime_pb2

from p2pmodel.compress import ErrorFeedback
from p2pmodel.compress.base import HEADER, CodecError
from p2pmodel.compress.sparse import SparseTopKCodec


def _roundtrip(codec, t):
    msg = codec.compress(t, CompressionInfo.from_tensor(t))
    return msg, codec.extract(runtime_pb2.Tensor.FromString(msg.SerializeToString()))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("numel", [1, 5, 4096, 4097, 10_000])
def test_each_chunk_keeps_its_largest_magnitudes_as_four_levels(numel):
    codec = SparseTopKCodec(density=0.02, chunk=4096)
    t = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    _, out = _roundtrip(codec, t)
    for start in range(0, numel, 4096):
        piece, dec = t[start : start + 4096], out[start : start + 4096]
        kept = dec != 0
        k = -(-len(piece) * 2 // 100)  # ceil(2 % of the chunk)
        assert int(kept.sum()) == min(k, len(piece))
        if not kept.all():
            assert float(piece[kept].abs().min()) >= float(piece[~kept].abs().max())
        scale = float(piece[kept].abs().max()) / 1.5
        assert set((dec[kept] / scale).round(decimals=3).tolist()) <= {-1.5, -0.5, 0.5, 1.5}
        assert torch.equal(torch.sign(dec[kept]), torch.sign(piece[kept]))


@pytest.mark.timeout(10)
def test_size_is_a_tenth_of_int4_at_two_percent():
    t = torch.randn(512, 1024)
    msg, _ = _roundtrip(SparseTopKCodec(), t)
    per_param = len(msg.buffer) / t.numel()
    assert 0.04 < per_param < 0.05, per_param  # 2 % x (2 bytes + 2 bits) + 4 bytes per 4096; int4 is 0.56


@pytest.mark.timeout(10)
def test_the_same_bytes_decode_to_the_same_bits_and_zeros_stay_zero():
    codec = SparseTopKCodec()
    t = torch.randn(3, 5000)
    msg, a = _roundtrip(codec, t)
    assert torch.equal(a, codec.extract(msg)) and a.shape == t.shape
    _, z = _roundtrip(codec, torch.zeros(7000))
    assert torch.equal(z, torch.zeros(7000))
    _, h = _roundtrip(codec, t.half())
    assert h.dtype == torch.float16


@pytest.mark.timeout(20)
def test_error_feedback_sends_everything_eventually():
    """With feedback, the sum of what was sent over rounds approaches the sum of the deltas (nothing is lost)."""
    codec, ef = SparseTopKCodec(density=0.05, chunk=1024), ErrorFeedback()
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(4096, generator=g)
    sent_total, true_total = torch.zeros(4096), torch.zeros(4096)
    for _ in range(200):
        delta = signal + 0.5 * torch.randn(4096, generator=g)
        c = ef.compensate(0, delta)
        _, sent = _roundtrip(codec, c)
        ef.update(0, c, sent)
        sent_total += sent
        true_total += delta
    rel = float((sent_total - true_total).norm() / true_total.norm())
    assert rel < 0.05, rel  # only the last residual is missing
    _, once = _roundtrip(codec, signal)
    assert float((once - signal).norm() / signal.norm()) > 0.5  # one round alone drops most of it


@pytest.mark.timeout(10)
def test_hostile_messages_are_refused():
    codec = SparseTopKCodec(density=0.02, chunk=64)
    t = torch.randn(200)
    msg, _ = _roundtrip(codec, t)
    buf = bytearray(msg.buffer)
    n_chunks, total = 4, 2 + 2 + 2 + 1  # ceil(2 % of 64) = 2 per full chunk, ceil(2 % of 8) = 1
    scales_end = HEADER.size + 4 * n_chunks

    def refused(buffer, match, **fields):
        bad = runtime_pb2.Tensor()
        bad.CopyFrom(msg)
        bad.buffer = bytes(buffer)
        for k, v in fields.items():
            setattr(bad, k, v)
        with pytest.raises(CodecError, match=match):
            codec.extract(bad)

    refused(buf[:-1], "expected")  # truncated
    refused(buf + b"\0", "expected")  # trailing bytes
    out = bytearray(buf)
    out[scales_end : scales_end + 2] = (64).to_bytes(2, "little")  # offset 64 in a chunk of 64
    refused(out, "outside its chunk")
    dup = bytearray(buf)
    dup[scales_end + 2 : scales_end + 4] = dup[scales_end : scales_end + 2]  # the same offset twice
    refused(dup, "strictly increasing")
    neg = bytearray(buf)
    neg[HEADER.size : HEADER.size + 4] = torch.tensor([-1.0]).numpy().tobytes()
    refused(neg, "negative")
    nan = bytearray(buf)
    nan[HEADER.size : HEADER.size + 4] = torch.tensor([float("nan")]).numpy().tobytes()
    refused(nan, "NaN")
    pad = bytearray(buf)
    pad[-1] |= 0b11000000  # total = 7 codes: the 8th is padding
    refused(pad, "padding")
    with pytest.raises(CodecError, match="differ"):
        SparseTopKCodec(density=0.03, chunk=64).extract(msg)
    refused(buf, "compression type", compression=102)
    assert total == 7


@pytest.mark.timeout(10)
def test_bad_settings_are_errors():
    for kwargs in ({"density": 0.0}, {"density": 1.0}, {"chunk": 1}, {"chunk": 1 << 17}):
        with pytest.raises(ValueError):
            SparseTopKCodec(**kwargs)


@pytest.mark.timeout(10)
def test_make_codec_builds_it_by_name():
    from p2pmodel.compress import make_codec

    assert isinstance(make_codec("sparse"), SparseTopKCodec)
