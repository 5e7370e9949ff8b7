"""ExactPartContainer: part locations tile the tensors, residuals are local - decoded, failures are zeros."""

from __future__ import annotations

import pytest
import torch
from hivemind.compression import Float16Compression

from p2pmodel.sync.parts import ExactPartContainer


def _container(residuals=None):
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(40, 30, generator=gen), torch.randn(777, generator=gen), torch.randn(5, 5, generator=gen)]
    container = ExactPartContainer(
        tensors, (1.0, 2.0, 1.0), compression=Float16Compression(), part_size_bytes=1024, residuals=residuals
    )
    return tensors, container


@pytest.mark.timeout(20)
def test_locations_tile_every_tensor_in_reducer_order():
    tensors, container = _container()
    seen = [torch.zeros(t.numel(), dtype=torch.int32) for t in tensors]
    for peer_index, locations in enumerate(container.part_locations):
        assert len(locations) == container.num_parts_by_peer[peer_index]
        for part_index, (tensor_index, start, end) in enumerate(locations):
            part, _ = container._input_parts_by_peer[peer_index][part_index]
            assert torch.equal(part, tensors[tensor_index].view(-1)[start:end])
            seen[tensor_index][start:end] += 1
    assert all(bool((s == 1).all()) for s in seen)


@pytest.mark.timeout(20)
def test_encode_part_records_local_minus_decoded():
    residuals = [torch.full((40, 30), 9.0), torch.full((777,), 9.0), torch.full((5, 5), 9.0)]
    tensors, container = _container(residuals)
    for peer_index, locations in enumerate(container.part_locations):
        for part_index in range(len(locations)):
            _, decoded = container.encode_part(peer_index, part_index, decode=True)
            assert decoded.dtype == torch.float32
    for residual, tensor in zip(residuals, tensors, strict=True):
        assert torch.equal(residual, tensor - tensor.half().float())


@pytest.mark.timeout(20)
def test_failed_reducer_parts_are_zeros_never_our_own():
    tensors, container = _container()
    container.register_processed_part(1, 0, torch.ones(container.part_numel(1, 0)))
    container.register_failed_reducer(1)
    assert container.failed_reducers == {1}
    parts = list(container._output_parts_by_peer[1])
    assert torch.equal(parts[0], torch.ones_like(parts[0]))  # delivered before the failure: zeroed by the caller
    assert all(not p.any() for p in parts[1:])
    assert container.failed_spans() == container.part_locations[1]
