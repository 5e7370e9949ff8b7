"""OuterOptimizer: same bits as an op-by-op float32 hand computation, close to torch's SGD, resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pmodel.sync import OuterOptimizer


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(33, 17, generator=gen), torch.randn(1001, generator=gen)]
    deltas = [[torch.randn(p.shape, generator=gen) * 0.01 for p in params] for _ in range(4)]
    return params, deltas


def _by_hand(params, deltas, lr, m, nesterov):
    """numpy float32, one IEEE operation at a time: buf = m*buf + d; u = d + m*buf; p = p - lr*u."""
    lr32, m32 = np.float32(lr), np.float32(m)
    ps = [p.numpy().copy() for p in params]
    bufs = [None] * len(ps)
    for step in deltas:
        for i, d in enumerate(step):
            d = d.numpy()
            bufs[i] = d.copy() if bufs[i] is None else m32 * bufs[i] + d
            update = d + m32 * bufs[i] if nesterov else bufs[i]
            ps[i] = ps[i] - lr32 * update
    return ps


@pytest.mark.timeout(20)
@pytest.mark.parametrize("nesterov", [True, False])
def test_bitwise_equal_to_hand_computation(nesterov):
    params, deltas = _problem()
    expected = _by_hand(params, deltas, 0.7, 0.9, nesterov)
    opt = OuterOptimizer(params, lr=0.7, momentum=0.9, nesterov=nesterov)
    for step in deltas:
        opt.step(step)
    for got, want in zip(params, expected, strict=True):
        assert np.array_equal(got.numpy(), want)


@pytest.mark.timeout(20)
def test_close_to_torch_sgd_and_float64_formula():
    params, deltas = _problem(1)
    reference = [p.clone().requires_grad_(True) for p in params]
    sgd = torch.optim.SGD(reference, lr=0.7, momentum=0.9, nesterov=True)
    exact = [p.double() for p in params]
    bufs = [None] * len(params)
    opt = OuterOptimizer(params)
    for step in deltas:
        opt.step(step)
        for p, d in zip(reference, step, strict=True):
            p.grad = d.clone()
        sgd.step()
        for i, d in enumerate(step):
            d = d.double()
            bufs[i] = d.clone() if bufs[i] is None else 0.9 * bufs[i] + d
            exact[i] = exact[i] - 0.7 * (d + 0.9 * bufs[i])
    for got, ref, ex in zip(params, reference, exact, strict=True):
        torch.testing.assert_close(got, ref.detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(got.double(), ex, rtol=0, atol=1e-6)


@pytest.mark.timeout(20)
def test_state_dict_resumes_with_the_same_bits():
    params, deltas = _problem(2)
    twin = [p.clone() for p in params]
    first = OuterOptimizer(params)
    for step in deltas[:2]:
        first.step(step)
    resumed = OuterOptimizer([p.clone() for p in params])
    resumed.load_state_dict(first.state_dict())
    for step in deltas[2:]:
        first.step(step)
        resumed.step(step)
    straight = OuterOptimizer(twin)
    for step in deltas:
        straight.step(step)
    for a, b, c in zip(first.params, resumed.params, straight.params, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert resumed.steps == 4


@pytest.mark.timeout(20)
def test_rejects_bad_input():
    params, deltas = _problem()
    with pytest.raises(ValueError):
        OuterOptimizer([p.double() for p in params])
    with pytest.raises(ValueError):
        OuterOptimizer(params, momentum=1.0)
    opt = OuterOptimizer(params)
    with pytest.raises(ValueError):
        opt.step(deltas[0][:1])
    with pytest.raises(ValueError):
        opt.step([torch.zeros(3), torch.zeros(3)])


def test_peek_is_the_step_it_does_not_take():
    from p2pmodel.sync.outer import OuterOptimizer

    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    for nesterov, momentum in ((True, 0.9), (False, 0.5), (False, 0.0)):
        live = [p.clone() for p in params]
        opt = OuterOptimizer(live, lr=0.7, momentum=momentum, nesterov=nesterov)
        for _ in range(2):  # with and without a momentum buffer
            delta = [torch.randn(p.shape, generator=gen) for p in params]
            before = [p.clone() for p in live], opt.state_dict()
            peeked = opt.peek(delta)
            assert all(torch.equal(a, b) for a, b in zip(live, before[0], strict=True))  # untouched
            assert opt.state_dict()["steps"] == before[1]["steps"]
            opt.step(delta)
            assert all(torch.equal(a, b) for a, b in zip(peeked, live, strict=True))  # the same bits
