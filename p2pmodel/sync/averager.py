"""``DeterministicAverager``: hivemind's averager with an exchange that leaves every member the same bits.

Reuses hivemind's matchmaking, P2P streams and timeouts (DESIGN.md section 3, "Same round, same bytes").
What changes against ``hivemind.averaging.DecentralizedAverager``:

- all-reduce runs through ``DeterministicAllReduceRunner`` (one encoding per averaged part, sent to all);
- results REPLACE the local tensors (``copy_``), and only after the whole round finished, so a failed
  round leaves the tensors untouched and the node can apply its own delta;
- a reducer that did not deliver all its parts to us has its WHOLE span set to zero (a zero update for
  that slice: the averaged tensors are outer deltas). Survivors that saw the failure agree on zeros; a
  survivor that got every part before the reducer died keeps the true average, which is what the
  commit step's majority digest resolves (DESIGN.md "Commit step"). Never "keep your own";
- optional sender-side error feedback: ``residuals[i] = local - decoded(bytes we sent)`` in float32, and
  the full local value on spans zeroed by a failed reducer (nothing of it got through);
- matchmaking declares this averager straight to the peers the node expects in the round (``step(members=)``),
  not in the DHT, and the leader search reads the declarations received (``matchmaking.py``);
- ``step(weight, timeout)`` returns an ``AveragingResult`` and never raises for network failures.

Notes for callers: hivemind names RPC handlers after the averager's class, so every peer of a swarm must
run this exact class (a subclass, or a stock averager, never meets it in matchmaking; faults are injected
through ``runner_class`` on the instance instead). Construct it from the main thread (hivemind sets SIGINT to
"ignore" in the calling process before it forks the averager; this class puts the caller's handler back). The
averager process ends with the process that started it (core/lifeline.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.allreduce import AveragingMode
from hivemind.averaging.control import AveragingStage, StepControl
from hivemind.averaging.group_info import GroupInfo
from hivemind.compression import CompressionBase, NoCompression
from hivemind.dht import DHT
from hivemind.p2p import P2PContext, PeerID
from hivemind.utils import get_logger
from hivemind.utils.timed_storage import get_dht_time

from p2pmodel.core.lifeline import arm_child
from p2pmodel.sync.allreduce import DeterministicAllReduceRunner
from p2pmodel.sync.matchmaking import Declaration, DirectDeclarations, install
from p2pmodel.sync.result import AveragingResult, RoundReport

__all__ = ["AveragingResult", "DeterministicAllReduceRunner", "DeterministicAverager"]

logger = get_logger(__name__)
_HOST_GRACE_S = 10.0  # extra host-side wait beyond timeout + allreduce_timeout before giving up on the child
_POLL_S = 0.1  # how often step() asks its give_up callback while looking for a group
_NO_GROUP_YET = (AveragingStage.IDLE, AveragingStage.LOOKING_FOR_GROUP)
GAVE_UP = "gave up looking for a group"


class _GaveUp(Exception):
    pass


ROUND_KEY_BITS = 20  # rounds further apart than 2**20 never meet in matchmaking anyway (records expire)


def round_group_bits(round_: int) -> str:
    """The matchmaking bucket of a round: its number in binary (``0b...`` is the group key's suffix)."""
    return format(round_ % (1 << ROUND_KEY_BITS), f"0{ROUND_KEY_BITS}b")


class DeterministicAverager(DecentralizedAverager):
    """Decentralized averaging whose result is bitwise-identical on every member of a round.

    :param codec: a hivemind ``CompressionBase`` (``compress``/``extract``); used for every part on the wire,
      decoded with ``codec.extract`` directly, so codecs outside hivemind's compression table work
    :param error_feedback: keep float32 residual buffers (see ``residuals``)
    :param next_chunk_timeout: a peer silent this long during all-reduce is dropped (senders) or failed
      (reducers, after twice this); must be set so a killed peer cannot stall the round
    Other arguments are those of ``DecentralizedAverager``; ``compression=`` and ``averaging_alpha`` are
    refused.
    """

    runner_class: type[DeterministicAllReduceRunner] = DeterministicAllReduceRunner  # tests inject faults here
    _rpc_handlers = None  # hivemind caches a servicer's handlers per class: collect this class's own (rpc_declare)
    _stub_type = None

    def __init__(
        self,
        averaged_tensors: Sequence[torch.Tensor],
        dht: DHT,
        *,
        prefix: str,
        codec: CompressionBase | None = None,
        error_feedback: bool = False,
        start: bool = True,
        target_group_size: int | None = None,
        min_group_size: int = 2,
        min_matchmaking_time: float = 5.0,
        request_timeout: float = 3.0,
        allreduce_timeout: float = 60.0,
        next_chunk_timeout: float = 5.0,
        **kwargs: Any,
    ):
        if "compression" in kwargs:
            raise TypeError("pass the codec as codec=, not compression=")
        if kwargs.get("averaging_alpha", 1.0) != 1.0:
            raise ValueError("DeterministicAverager replaces tensors; averaging_alpha must be 1.0")
        if not (allreduce_timeout > 0 and next_chunk_timeout > 0):
            raise ValueError("allreduce_timeout and next_chunk_timeout must be positive")
        tensors = tuple(averaged_tensors)
        super().__init__(
            tensors,
            dht,
            start=False,
            prefix=prefix,
            target_group_size=target_group_size,
            min_group_size=min_group_size,
            min_matchmaking_time=min_matchmaking_time,
            request_timeout=request_timeout,
            allreduce_timeout=allreduce_timeout,
            next_chunk_timeout=next_chunk_timeout,
            compression=codec if codec is not None else NoCompression(),
            **kwargs,
        )
        self.codec = self.allreduce_kwargs["compression"]
        self._min_matchmaking_time = min_matchmaking_time
        # shared memory: written by the averager process, read by the node in the host process
        self._residuals = (
            tuple(torch.zeros(t.shape, dtype=torch.float32).share_memory_() for t in tensors)
            if error_feedback
            else None
        )
        self._reports: dict[bytes, RoundReport] = {}  # lives in the averager process
        if start:
            self.run_in_background(await_ready=True)

    def run_in_background(self, await_ready: bool = True, timeout: float | None = None) -> None:
        """Start the averager process; the caller's SIGINT handler (Ctrl-C stops the peer) survives it."""
        previous = signal.getsignal(signal.SIGINT)
        try:
            super().run_in_background(await_ready=await_ready, timeout=timeout)  # SIG_IGN here, then fork
        finally:
            if previous is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, previous)

    def start(self) -> None:
        self._lifeline_parent = os.getpid()
        super().start()

    def run(self) -> None:  # in the averager process
        arm_child(self._lifeline_parent)
        super().run()

    def shutdown(self, grace_s: float = 2.0) -> None:
        """Stop the averager process; quiet if it is gone already (a SIGTERM to the whole group ends it too), and
        never left running for multiprocessing's exit handler to wait on without a deadline."""
        if self.is_alive():
            super().shutdown()
        if self.is_alive():
            self.join(grace_s)
        if self.is_alive():
            self.kill()
            self.join(1)

    async def _shutdown(self, timeout: float | None) -> None:  # in the averager process
        try:
            await super()._shutdown(timeout)
        except Exception as e:  # p2pd is gone (Ctrl-C reaches it too): nothing left to unregister from
            logger.debug(f"averager shutdown: {type(e).__name__}: {e}")

    @property
    def residuals(self) -> tuple[torch.Tensor, ...] | None:
        """Error-feedback residuals of the last step (float32, shapes of the averaged tensors), or None.

        After a successful step: ``local - decoded(sent)`` per value, and the full local value where a failed
        reducer's span was zeroed. After a failed step: zeros (the node keeps its own delta in full).
        Add them to the next round's delta before it is written into the averaged tensors.
        """
        return self._residuals

    def _zero_residuals(self) -> None:
        if self._residuals is not None:
            for residual in self._residuals:
                residual.zero_()

    def step(  # type: ignore[override]
        self,
        weight: float = 1.0,
        timeout: float = 30.0,
        gather: Any = None,
        expected_size: int | None = None,
        round_: int | None = None,
        give_up: Callable[[], bool] | None = None,
        members: Sequence[str] = (),
    ) -> AveragingResult:
        """Find a group within ``timeout`` s and average with it, weighted by ``weight`` (samples processed).

        ``expected_size``: the group forms as soon as this many peers (this one included) are in, instead of at
        the end of the matchmaking window (capped by ``target_group_size``, at least 2).

        ``round_``: only peers averaging the same round meet (it becomes the matchmaking group key, which
        hivemind's leaders check on every join request). Without it a peer still looking for a group of round
        r joined the others' group of round r + 1, and the whole group failed its gather check.

        ``members``: the peers (base58 ids) expected in the group; this averager declares itself to them, and to any
        other peer that declares itself to it (``matchmaking.py``: nothing goes through the DHT).

        ``give_up``: polled every ``_POLL_S`` while this peer is still looking for a group; True ends the search
        at once (e.g. the others already committed the round: their group formed without us, and waiting out
        the matchmaking timeout would only delay our commit). Never consulted once a group is found: leaving a
        formed group would fail the others' all-reduce.

        Blocks at most ``timeout + allreduce_timeout`` (+ a small grace). Never raises for a network failure:
        returns ``AveragingResult(succeeded=False, reason=...)`` with the tensors untouched. (If the host-side
        grace runs out first, the step is cancelled; hivemind cannot cancel a running all-reduce, but that
        one is itself bounded by ``allreduce_timeout``, which the grace exceeds.)
        """
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be finite and >= 0, got {weight}")
        if not timeout > self._min_matchmaking_time:
            minimum = self._min_matchmaking_time
            raise ValueError(f"timeout ({timeout}s) must exceed min_matchmaking_time ({minimum}s)")
        self._zero_residuals()
        started = time.monotonic()
        configured = self.matchmaking_kwargs["target_group_size"] or expected_size
        target = None if expected_size is None else max(2, min(int(expected_size), configured))
        bits = None if round_ is None else round_group_bits(round_)
        # handled in the averager process before the step, in pipe order
        self._outer_pipe.send(("_expect_group", [target, bits, list(members)], {}))
        control = None
        try:
            control = super().step(gather=gather, weight=float(weight), timeout=timeout, wait=False)
            report = self._wait(control, started + timeout + self._allreduce_timeout + _HOST_GRACE_S, give_up)
        except _GaveUp:
            control.cancel()
            self._zero_residuals()
            return AveragingResult.failure(GAVE_UP, weight=weight, elapsed_s=time.monotonic() - started)
        except Exception as e:  # a failed round is data: no group, timeout, peers gone
            if control is not None and not control.done():
                control.cancel()
            self._zero_residuals()
            reason = "no group found" if "could not find a group" in str(e) else f"{type(e).__name__}: {e}"
            return AveragingResult.failure(reason, weight=weight, elapsed_s=time.monotonic() - started)
        return AveragingResult.from_report(report, weight=weight, elapsed_s=time.monotonic() - started)

    @staticmethod
    def _wait(control: StepControl, deadline: float, give_up: Callable[[], bool] | None) -> RoundReport:
        """``control``'s report; ``_GaveUp`` if ``give_up()`` turns True while no group is found yet."""
        if give_up is None:
            return control.result(timeout=max(0.0, deadline - time.monotonic()))
        while True:
            try:
                return control.result(timeout=max(0.0, min(_POLL_S, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
            # give_up() first, the stage second: a stage read after the verdict still says "no group yet"
            if give_up() and control.stage in _NO_GROUP_YET:
                raise _GaveUp

    async def _expect_group(  # in the averager process
        self, size: int | None, group_bits: str | None, members: Sequence[str] = ()
    ) -> None:
        """Assemble at ``size``; look for a group under the key of ``group_bits`` (hivemind's bucket bits), among
        ``members``."""
        self._matchmaking.target_group_size = size or self.matchmaking_kwargs["target_group_size"]
        keys = self._declarations()
        if group_bits is not None:
            keys.group_bits = group_bits
        keys.set_members(members)

    def _declarations(self) -> DirectDeclarations:  # in the averager process, once _matchmaking exists
        return install(self._matchmaking, self._declare_to, self._ask_for_declarations, self.request_timeout)

    async def _declare_to(self, peer: PeerID, message: Declaration, timeout: float) -> Declaration:
        return await self.get_stub(self._p2p, peer, namespace=self.prefix).rpc_declare(message, timeout=timeout)

    async def _ask_for_declarations(self, peer: PeerID, message: Declaration, timeout: float) -> Declaration:
        return await self.get_stub(self._p2p, peer, namespace=self.prefix).rpc_declarations(message, timeout=timeout)

    async def rpc_declare(self, request: Declaration, context: P2PContext) -> Declaration:
        """Another averager looks for a group under ``request.key`` until ``request.expiration`` (matchmaking.py)."""
        if getattr(self, "_matchmaking", None) is not None:  # handlers are up a moment before matchmaking
            self._declarations().receive(context.remote_id, request)
        return Declaration()

    async def rpc_declarations(self, request: Declaration, context: P2PContext) -> Declaration:
        """The declarations this averager holds under ``request.key`` (asked by peers in client mode)."""
        if getattr(self, "_matchmaking", None) is None:
            return Declaration(request.key)
        return self._declarations().answer(request)

    async def _aggregate_with_group(self, group_info: GroupInfo, min_vector_size: int, **kwargs) -> RoundReport:
        gathered = await super()._aggregate_with_group(group_info, min_vector_size, **kwargs)
        report = self._reports.pop(group_info.group_id)
        return dataclasses.replace(report, gathered={str(peer): value for peer, value in gathered.items()})

    async def _run_allreduce_inplace_(
        self, tensors: Sequence[torch.Tensor], group_info: GroupInfo, group_id: bytes | None = None, **kwargs
    ):
        """Run one all-reduce; replace the tensors only once every part is in (failed spans zeroed)."""
        group_id = group_info.group_id if group_id is None else group_id
        runner = self.runner_class(
            p2p=self._p2p,
            servicer_type=type(self),
            prefix=self.prefix,
            tensors=tensors,
            group_id=group_id,
            ordered_peer_ids=group_info.peer_ids,
            residuals=self._residuals,
            **kwargs,
        )
        assert group_id in self._running_groups, f"group {group_id} was not registered"
        self._running_groups[group_id].set_result(runner)

        if runner.modes[group_info.peer_ids.index(self.peer_id)] == AveragingMode.AUX:
            async for _ in runner:
                raise ValueError("aux peers should not receive averaged tensors")
            outputs = []
        else:
            outputs = [averaged async for averaged in runner]

        container = runner.tensor_part_container
        zeroed = 0
        for tensor_index, start, end in container.failed_spans():
            outputs[tensor_index].view(-1)[start:end].zero_()
            if self._residuals is not None:
                self._residuals[tensor_index].view(-1)[start:end].copy_(tensors[tensor_index].view(-1)[start:end])
            zeroed += end - start
        with torch.no_grad():
            for tensor, averaged in zip(tensors, outputs, strict=True):
                tensor.copy_(averaged)
        if outputs:
            self.last_updated = get_dht_time()
            self._state_updated.set()
        self._reports[group_id] = RoundReport(
            group_id=group_id,
            peer_ids=tuple(str(peer) for peer in group_info.peer_ids),
            gathered={},
            failed_reducers=tuple(str(runner.ordered_peer_ids[i]) for i in sorted(container.failed_reducers)),
            banned_senders=tuple(sorted(str(peer) for peer in runner.banned_senders)),
            zeroed_fraction=zeroed / max(1, self.total_size),
        )
