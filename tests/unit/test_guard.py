"""The all-reduce safety net (aggregate/guard.py) and the codecs' refusal of values that overflow when decoded:
together they keep a non-finite or runaway mean out of every peer's state in all-reduce mode."""

import struct

import pytest
import torch
from hivemind.compression.base import CompressionInfo

from p2pmodel.aggregate.guard import MIN_HISTORY, RATIO, NormGuard
from p2pmodel.compress import make_codec
from p2pmodel.compress.base import HEADER, CodecError


def _delta(scale: float, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(100, generator=g) * scale, torch.randn(3, 7, generator=g) * scale]


@pytest.mark.timeout(10)
def test_a_non_finite_mean_is_refused_from_the_first_round():
    guard = NormGuard()
    for bad in (float("nan"), float("inf")):
        delta = _delta(1.0)
        delta[1][2, 3] = bad
        assert "not finite" in guard.check(delta)
    assert list(guard.recent) == []  # nothing refused is remembered


@pytest.mark.timeout(10)
def test_a_runaway_norm_is_refused_once_there_is_a_history_and_slow_drift_is_not():
    guard = NormGuard()
    assert guard.check(_delta(100.0)) == ""  # no history yet: only finiteness is checked
    guard = NormGuard()
    for i in range(MIN_HISTORY):
        assert guard.check(_delta(1.0, seed=i)) == ""
    assert "above 10 x the recent median" in guard.check(_delta(RATIO * 1.5))  # x100 scaling: far above
    for i in range(10):  # warmup-like growth, 1.5x a round, stays within the bound
        assert guard.check(_delta(1.5**i, seed=i)) == "", i
    same = [NormGuard(), NormGuard()]  # the same bytes and history give the same verdict, bit for bit
    for g in same:
        for i in range(4):
            g.check(_delta(1.0, seed=i))
    assert same[0].check(_delta(9.0)) == same[1].check(_delta(9.0))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", ["int4", "int8", "sparse"])
def test_a_forged_scale_that_overflows_when_decoded_is_refused(name):
    codec = make_codec(name)
    x = torch.randn(4096)
    message = codec.compress(x, CompressionInfo.from_tensor(x))
    buffer = bytearray(message.buffer)
    buffer[HEADER.size : HEADER.size + 4] = struct.pack("<f", 3.0e38)  # finite, but x7 (or x1.5) is not
    message.buffer = bytes(buffer)
    with pytest.raises(CodecError, match="NaN/Inf values"):
        codec.extract(message)
