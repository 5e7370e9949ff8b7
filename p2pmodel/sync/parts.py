"""Where each all-reduce part lives, how it is encoded, and what replaces a part whose reducer failed.

hivemind's ``TensorPartContainer`` splits the averaged tensors into parts and assigns consecutive runs of
parts to reducers. This subclass adds what "same round, same bytes" needs (DESIGN.md section 3):

- ``part_locations``: for every (reducer, part) the tensor index and flat [start, end) range, so a failed
  reducer's whole span can be zeroed and residuals can be written at the right place;
- ``encode_part``: compress one local part with the round's codec and, when error feedback is on, record
  ``local - codec.extract(sent bytes)`` in the residual buffer (float32, same shapes as the tensors);
- ``register_failed_reducer``: fill a failed reducer's missing parts with ZEROS, never with our own local
  values (stock hivemind keeps its own part, so survivors would disagree).

``ShieldedPartReducer`` fixes a hivemind reducer bug that made a killed sender take the round down with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import torch
from hivemind.averaging.partition import (
    AllreduceException,
    BannedException,
    TensorPartContainer,
    TensorPartReducer,
)
from hivemind.proto import runtime_pb2
from hivemind.utils.asyncio import amap_in_executor, as_aiter

Location = tuple[int, int, int]  # (tensor index, flat start, flat end)


class ExactPartContainer(TensorPartContainer):
    """A ``TensorPartContainer`` that returns averaged values (not deltas) and fails reducers to zero."""

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        peer_fractions: Sequence[float],
        *,
        residuals: Sequence[torch.Tensor] | None = None,
        **kwargs,
    ):
        kwargs["return_deltas"] = False
        super().__init__(tensors, peer_fractions, **kwargs)
        if residuals is not None:
            assert len(residuals) == len(tensors), "one residual buffer per averaged tensor"
        self.residuals = residuals
        self.part_locations = self._locate_parts()
        self.failed_reducers: set[int] = set()

    def _locate_parts(self) -> list[list[Location]]:
        """Parts go to reducers in tensor order, so walking them in reducer order walks the tensors."""
        flat_parts = [part for by_peer in self._input_parts_by_peer for part, _info in by_peer]
        locations: list[Location] = []
        cursor = 0
        tensors_and_counts = zip(self.local_tensors, self.num_parts_by_tensor, strict=True)
        for tensor_index, (tensor, num_parts) in enumerate(tensors_and_counts):
            offset = 0
            for part in flat_parts[cursor : cursor + num_parts]:
                locations.append((tensor_index, offset, offset + part.numel()))
                offset += part.numel()
            assert offset == tensor.numel(), "parts do not tile the tensor"
            cursor += num_parts
        by_peer, start = [], 0
        for count in self.num_parts_by_peer:
            by_peer.append(locations[start : start + count])
            start += count
        return by_peer

    def part_numel(self, peer_index: int, part_index: int) -> int:
        _, start, end = self.part_locations[peer_index][part_index]
        return end - start

    @torch.no_grad()
    def encode_part(
        self, peer_index: int, part_index: int, decode: bool
    ) -> tuple[runtime_pb2.Tensor, torch.Tensor | None]:
        """Compress one local part; decode it when asked or when a residual must be recorded."""
        part, info = self._input_parts_by_peer[peer_index][part_index]
        message = self.compression.compress(part, info, allow_inplace=False)
        decoded = None
        if decode or self.residuals is not None:
            decoded = self.compression.extract(message).reshape(-1)
        if self.residuals is not None:
            tensor_index, start, end = self.part_locations[peer_index][part_index]
            target = self.residuals[tensor_index].view(-1)[start:end]
            torch.sub(part.to(torch.float32), decoded.to(torch.float32), out=target)
        return message, decoded

    async def iterate_input_parts_for(self, peer_index: int) -> AsyncIterator[runtime_pb2.Tensor]:
        """Like the stock method, but through ``encode_part`` so residuals are recorded for remote parts."""
        assert not self._inputs_consumed_by_peer[peer_index], "input parts of this peer are already consumed"
        self._inputs_consumed_by_peer[peer_index] = True
        indices = as_aiter(*range(self.num_parts_by_peer[peer_index]))

        def encode(index: int) -> tuple[runtime_pb2.Tensor, torch.Tensor | None]:
            return self.encode_part(peer_index, index, decode=False)

        async for message, _ in amap_in_executor(encode, indices, max_prefetch=self.prefetch):
            yield message

    def register_failed_reducer(self, peer_index: int):
        """Fill the parts this reducer did not deliver with zeros; the caller zeroes the rest of its span."""
        self.failed_reducers.add(peer_index)
        first_missing = self._outputs_registered_by_peer[peer_index]
        for part_index in range(first_missing, self.num_parts_by_peer[peer_index]):
            tensor_index, start, end = self.part_locations[peer_index][part_index]
            zeros = torch.zeros(end - start, dtype=self.local_tensors[tensor_index].dtype)
            self.register_processed_part(peer_index, part_index, zeros)
            self.failed_size += end - start

    def failed_spans(self) -> list[Location]:
        """Every (tensor, start, end) owned by a reducer that failed for us, delivered parts included."""
        return [loc for peer_index in sorted(self.failed_reducers) for loc in self.part_locations[peer_index]]


class ShieldedPartReducer(TensorPartReducer):
    """hivemind's ``TensorPartReducer`` with one fix: the shared per-part future is awaited through a shield.

    Every sender's handler awaits the same ``current_part_future``. When a sender dies, p2p cancels its
    handler, and asyncio cancels the future that handler was awaiting, so every other sender (and our own
    part) got ``CancelledError`` and the whole reducer collapsed (measured: 3 peers, one killed mid-round,
    the survivors hung until allreduce_timeout). Shielding keeps the future alive for the others.
    """

    async def accumulate_part(
        self, sender_index: int, part_index: int, tensor_part: torch.Tensor, weight: float = 1.0
    ) -> torch.Tensor:
        assert 0 <= sender_index < self.num_senders, "invalid sender index"
        assert 0 <= part_index < self.num_parts, "invalid part index"
        self.num_parts_received[sender_index] += 1

        while part_index > self.current_part_index:
            finished = asyncio.create_task(self.finished.wait())
            try:
                await asyncio.wait(
                    {asyncio.shield(self.current_part_future), finished}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                finished.cancel()
            if self.finished.is_set():
                raise AllreduceException(f"attempted to aggregate part in a finalized {self.__class__.__name__}")

        if self.sender_failed_after[sender_index] != float("inf"):
            raise BannedException(f"sender {sender_index} was banned in background")
        assert part_index == self.current_part_index

        current_part_future = self.current_part_future
        if part_index < self.sender_failed_after[sender_index]:
            self.accumulator.add_(tensor_part, alpha=weight)
            self.current_part_accumulated_from += 1
            self.denominator += weight
            self.check_current_part_finished()
        return await asyncio.shield(current_part_future)
