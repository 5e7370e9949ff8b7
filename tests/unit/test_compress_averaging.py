"""Real hivemind peers on 127.0.0.1 average with Float16Codec: every peer's tensor must become the mean."""

from __future__ import annotations

import pytest
import torch

N_PEERS = 3


@pytest.mark.swarm
@pytest.mark.timeout(120)
def test_float16codec_really_averages_with_hivemind_peers():
    import hivemind
    from hivemind.averaging import DecentralizedAverager

    from p2pmodel.compress import Float16Codec

    gen = torch.Generator().manual_seed(0)
    # 3000 elements so the all-reduce splits the vector into one part per peer
    originals = [torch.randn(3000, generator=gen) + 2.0 * i for i in range(N_PEERS)]
    expected = torch.stack(originals).mean(dim=0)

    dhts, averagers = [], []
    try:
        first = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        dhts.append(first)
        initial_peers = [str(a) for a in first.get_visible_maddrs()]
        for _ in range(N_PEERS - 1):
            dhts.append(hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=initial_peers))
        for dht, tensor in zip(dhts, originals, strict=True):
            averagers.append(
                DecentralizedAverager(
                    [tensor.clone()],
                    dht,
                    start=True,
                    prefix="compress_test",
                    target_group_size=N_PEERS,
                    min_group_size=N_PEERS,
                    min_matchmaking_time=3.0,
                    request_timeout=2.0,
                    compression=Float16Codec(),
                )
            )
        controls = [a.step(wait=False, timeout=60) for a in averagers]
        groups = [c.result(timeout=90) for c in controls]
        assert all(g is not None and len(g) == N_PEERS for g in groups), f"group sizes: {groups}"

        fp16_tol = 4 * 2.0**-11 * float(expected.abs().max()) + 1e-3
        for i, averager in enumerate(averagers):
            with averager.get_tensors() as (tensor,):
                result = tensor.clone()
            assert not torch.allclose(result, originals[i], atol=0.5), f"peer {i} kept its own tensor"
            err = (result - expected).abs().max().item()
            assert err <= fp16_tol, f"peer {i}: max |avg - mean| = {err} > {fp16_tol}"
    finally:
        for a in averagers:
            a.shutdown()
        for d in dhts:
            d.shutdown()
