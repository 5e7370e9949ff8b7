"""Butterfly all-reduce in which every member of a round receives the same bytes for every part.

Stock ``hivemind.averaging.allreduce.AllReduceRunner`` sends each sender its own delta
``averaged_part - tensor_part`` and keeps the reducer's own part uncompressed, so three peers end with
three different digests even with ``NoCompression``. Here the reducer of a part

1. decodes every sender's part with ``codec.extract`` (custom codecs have no slot in hivemind's global
   compression table, so ``deserialize_torch_tensor`` is never used), its own part included after an
   encode/decode round trip, so every sender is treated alike;
2. encodes the averaged part ONCE (``_encode_result``, cached per part) and sends those bytes to every
   sender, and decodes the same bytes for itself (shared futures are awaited through ``asyncio.shield``,
   see ``parts.ShieldedPartReducer``);
3. every member then REPLACES its slice with the decoded value (``return_deltas=False``).

A reducer that fails to deliver all its parts is recorded in ``container.failed_reducers``; the averager
zeroes its whole span (see ``parts.py`` and ``averager.py``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence

import torch
from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.averaging.partition import AllreduceException, BannedException
from hivemind.p2p import PeerID
from hivemind.proto import averaging_pb2, runtime_pb2
from hivemind.utils import get_logger
from hivemind.utils.asyncio import aiter_with_timeout, amap_in_executor, attach_event_on_finished

from p2pmodel.sync.parts import ExactPartContainer, ShieldedPartReducer

logger = get_logger(__name__)


class DeterministicAllReduceRunner(AllReduceRunner):
    """An ``AllReduceRunner`` whose outputs are averaged values, bitwise-identical on every member."""

    def __init__(
        self,
        *,
        tensors: Sequence[torch.Tensor],
        peer_fractions: tuple[float, ...],
        residuals: Sequence[torch.Tensor] | None = None,
        **kwargs,
    ):
        super().__init__(tensors=tensors, peer_fractions=peer_fractions, **kwargs)
        # the parent built a delta-returning container; replace it (cheap: parts are views) before any use
        passed = ("compression", "part_size_bytes", "tensor_infos", "prefetch")
        container_kwargs = {key: kwargs[key] for key in passed if key in kwargs}
        self.tensor_part_container.finalize()
        self.tensor_part_container = ExactPartContainer(
            tensors, peer_fractions, residuals=residuals, **container_kwargs
        )
        self.codec = self.tensor_part_container.compression
        own_index = self.ordered_peer_ids.index(self.peer_id)
        self.parts_for_local_averaging = self.tensor_part_container.get_raw_input_parts(own_index)
        own_inputs = self.tensor_part_container._input_parts_by_peer[own_index]
        self._own_infos = tuple(info for _part, info in own_inputs)
        self.tensor_part_reducer.finished.set()  # silence the unused parent reducer's finalize warning
        self.tensor_part_reducer = ShieldedPartReducer(
            tuple(part.shape for part in self.parts_for_local_averaging), len(self.sender_peer_ids)
        )
        self._encoded_results: dict[int, asyncio.Future] = {}

    async def _encode_result(self, part_index: int, averaged_part: torch.Tensor) -> runtime_pb2.Tensor:
        """Serialize the averaged part once; every sender (and this peer) gets these exact bytes."""
        future = self._encoded_results.get(part_index)
        if future is None:
            loop = asyncio.get_running_loop()
            info = self._own_infos[part_index]
            future = loop.run_in_executor(None, self.codec.compress, averaged_part, info, False)
            self._encoded_results[part_index] = future
        return await asyncio.shield(future)  # shared by all senders: one cancelled handler must not cancel it

    def _decode_result(self, peer_index: int, part_index: int, message: runtime_pb2.Tensor) -> torch.Tensor:
        decoded = self.codec.extract(message).reshape(-1)
        expected = self.tensor_part_container.part_numel(peer_index, part_index)
        if decoded.numel() != expected:
            raise AllreduceException(f"averaged part has {decoded.numel()} values, expected {expected}")
        return decoded

    async def _communicate_with_peer(self, peer_id: PeerID):
        peer_index = self.ordered_peer_ids.index(peer_id)
        container = self.tensor_part_container
        if peer_id == self.peer_id:
            await self._reduce_own_parts(peer_index)
            return
        part_index = 0
        try:
            done_sending = asyncio.Event()
            inputs_aiter = attach_event_on_finished(self._generate_input_for_peer(peer_index), done_sending)
            stream = await self._get_peer_stub(peer_id).rpc_aggregate_part(inputs_aiter)
            if self.should_delay_results(self.peer_id):
                await done_sending.wait()

            def _check_and_decode(msg: averaging_pb2.AveragingData, index: int) -> torch.Tensor:
                if msg.code != averaging_pb2.AVERAGED_PART:
                    raise AllreduceException(f"{peer_id} sent {averaging_pb2.MessageCode.Name(msg.code)}")
                if index >= container.num_parts_by_peer[peer_index]:
                    raise AllreduceException(f"{peer_id} sent more parts than expected")
                return self._decode_result(peer_index, index, msg.tensor_part)

            async for msg in aiter_with_timeout(stream, self.reducer_timeout):
                loop = asyncio.get_running_loop()
                averaged = await loop.run_in_executor(None, _check_and_decode, msg, part_index)
                container.register_processed_part(peer_index, part_index, averaged)
                part_index += 1
            if part_index != container.num_parts_by_peer[peer_index]:
                raise AllreduceException(
                    f"{peer_id} sent {part_index} parts, expected {container.num_parts_by_peer[peer_index]}"
                )
        except BaseException as e:
            if isinstance(e, Exception):
                logger.debug(f"Caught {e!r} when communicating to {peer_id}", exc_info=True)
            if part_index < container.num_parts_by_peer[peer_index]:
                container.register_failed_reducer(peer_index)
            raise

    async def _reduce_own_parts(self, peer_index: int):
        """Own-part branch: contribute the decoded bytes we would send, keep the decoded broadcast bytes."""
        loop = asyncio.get_running_loop()
        container = self.tensor_part_container
        sender_index = self.sender_peer_ids.index(self.peer_id)
        for part_index in range(len(self.parts_for_local_averaging)):
            _, sent = await loop.run_in_executor(None, container.encode_part, peer_index, part_index, True)
            averaged = await self.tensor_part_reducer.accumulate_part(
                sender_index, part_index, sent, weight=self.weight
            )
            message = await self._encode_result(part_index, averaged)
            decoded = await loop.run_in_executor(None, self._decode_result, peer_index, part_index, message)
            container.register_processed_part(peer_index, part_index, decoded)

    def _decode_input(self, msg: averaging_pb2.AveragingData, part_index: int) -> tuple[torch.Tensor, float]:
        """Wire input is hostile: check weight and shape before it touches the accumulator."""
        if not math.isfinite(msg.weight) or msg.weight < 0:
            raise AllreduceException(f"invalid averaging weight {msg.weight}")
        if part_index >= self.tensor_part_reducer.num_parts:
            raise AllreduceException("sender sent more parts than expected")
        part = self.codec.extract(msg.tensor_part)
        if part.shape != self.tensor_part_reducer.part_shapes[part_index]:
            raise AllreduceException(f"part of shape {tuple(part.shape)} does not match the schema")
        return part, msg.weight

    async def _accumulate_parts_streaming(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], sender_index: int
    ) -> AsyncIterator[averaging_pb2.AveragingData]:
        part_index = 0
        try:
            async for tensor_part, weight in amap_in_executor(
                self._decode_input, stream, _count(), max_prefetch=self.tensor_part_container.prefetch
            ):
                try:
                    averaged = await self.tensor_part_reducer.accumulate_part(
                        sender_index, part_index, tensor_part, weight=weight
                    )
                    part_index += 1
                except BannedException:
                    logger.debug(f"Sender {sender_index} is already banned")
                    break
                message = await self._encode_result(part_index - 1, averaged)
                yield averaging_pb2.AveragingData(code=averaging_pb2.AVERAGED_PART, tensor_part=message)
        finally:
            if part_index != self.tensor_part_reducer.num_parts:
                await self._ban_sender(self.sender_peer_ids[sender_index])


async def _count() -> AsyncIterator[int]:
    """0, 1, 2, ... as an async iterator, zipped with a stream to number its messages."""
    index = 0
    while True:
        yield index
        index += 1
