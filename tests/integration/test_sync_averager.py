"""Real peers on 127.0.0.1: every member of a round ends with the same sha256, equal to the weighted mean.

Peers are threads of this process; each DHT and each averager runs in its own hivemind process.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import hivemind
import pytest
import torch
from hivemind.compression import Float16Compression, NoCompression

from p2pmodel.compress import make_codec
from p2pmodel.compress.base import HEADER
from p2pmodel.sync import AveragingResult, DeterministicAverager
from p2pmodel.sync.allreduce import DeterministicAllReduceRunner
from p2pmodel.sync.averager import GAVE_UP, round_group_bits

SHAPES = [(300, 512), (1001,), (96, 700)]  # ~222k floats, several parts per reducer at 64 KiB parts
PART_SIZE_BYTES = 2**16
MATCHMAKING = dict(min_matchmaking_time=1.5, request_timeout=1.0, next_chunk_timeout=2.0, allreduce_timeout=30.0)


@pytest.fixture(scope="module")
def dhts():
    first = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    maddrs = [str(m) for m in first.get_visible_maddrs()]
    nodes = [first]
    try:
        for _ in range(3):
            nodes.append(hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=maddrs))
        yield nodes
    finally:
        for node in nodes:
            node.shutdown()


def digest(tensors) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().contiguous().numpy().tobytes())
    return sha.hexdigest()


def make_inputs(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    inputs = [[torch.randn(shape, generator=gen) for shape in SHAPES] for _ in range(n)]
    weights = [float(w) for w in torch.randint(1, 100, (n,), generator=gen)]
    return inputs, weights


def weighted_mean(inputs, weights):
    total = sum(weights)
    return [
        sum(w * peer[i].double() for peer, w in zip(inputs, weights, strict=True)) / total for i in range(len(SHAPES))
    ]


def start_averagers(dhts, inputs, cls=DeterministicAverager, prefix=None, group_size=None, runner=None, **kwargs):
    prefix = prefix or f"t{uuid.uuid4().hex[:8]}"

    def start(i):
        averager = cls(
            [t.clone() for t in inputs[i]],
            dhts[i],
            prefix=prefix,
            target_group_size=group_size or len(inputs),
            part_size_bytes=PART_SIZE_BYTES,
            start=False,
            **MATCHMAKING,
            **kwargs,
        )
        if runner is not None:  # an instance attribute: RPC names come from the class, which must not change
            averager.runner_class = runner
        averager.run_in_background(await_ready=True)
        return averager

    return [start(i) for i in range(len(inputs))]  # hivemind starts averagers from the main thread only


def ids(averagers) -> list[str]:
    return [a.peer_id.to_base58() for a in averagers]


def step_all(averagers, weights, **kwargs):
    kwargs.setdefault("members", ids(averagers))
    with ThreadPoolExecutor(len(averagers)) as pool:
        return list(pool.map(lambda aw: aw[0].step(aw[1], **kwargs), zip(averagers, weights, strict=True)))


def held(averager):
    with averager.get_tensors() as tensors:
        return [t.clone() for t in tensors]


def shutdown_all(averagers):
    for averager in averagers:
        if averager.is_alive():
            averager.shutdown()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "n_peers, codec, atol",
    [(3, NoCompression(), 1e-5), (3, Float16Compression(), 5e-3), (4, Float16Compression(), 5e-3)],
    ids=["3-none", "3-fp16", "4-fp16"],  # 4-none: see the stock-hivemind test
)
def test_same_digest_on_every_peer(dhts, n_peers, codec, atol):
    inputs, weights = make_inputs(n_peers, seed=n_peers)
    averagers = start_averagers(dhts[:n_peers], inputs, codec=codec, error_feedback=True)
    try:
        results = step_all(averagers, weights, timeout=20.0)
        assert all(r.complete for r in results), [r.reason for r in results]
        assert {r.group_id for r in results} == {results[0].group_id}
        assert sorted(results[0].peer_ids) == sorted(str(a.peer_id) for a in averagers)
        outputs = [held(a) for a in averagers]
        assert len({digest(out) for out in outputs}) == 1
        for got, want in zip(outputs[0], weighted_mean(inputs, weights), strict=True):
            torch.testing.assert_close(got.double(), want, atol=atol, rtol=0)
        for averager, local in zip(averagers, inputs, strict=True):  # residual = local - decoded(sent)
            for residual, x in zip(averager.residuals, local, strict=True):
                sent = codec.extract(codec.compress(x, None)).reshape(x.shape)
                assert torch.equal(residual, x - sent)
    finally:
        shutdown_all(averagers)


@pytest.mark.timeout(60)
def test_stock_hivemind_and_ours_on_the_same_inputs(dhts):
    """Why this package exists: stock DecentralizedAverager leaves each peer different bits (NoCompression)."""
    inputs, weights = make_inputs(4, seed=7)
    ours = start_averagers(dhts, inputs)
    stock = start_averagers(dhts, inputs, cls=hivemind.DecentralizedAverager)
    try:
        with ThreadPoolExecutor(8) as pool:
            ours_futures = [pool.submit(a.step, w, 20.0, members=ids(ours)) for a, w in zip(ours, weights, strict=True)]
            stock_futures = [pool.submit(a.step, weight=w, timeout=20.0) for a, w in zip(stock, weights, strict=True)]
            assert all(f.result().complete for f in ours_futures)
            assert all(f.result() is not None for f in stock_futures)
        mean = weighted_mean(inputs, weights)
        for averagers, expect_one in ((ours, True), (stock, False)):
            outputs = [held(a) for a in averagers]
            for got, want in zip(outputs[0], mean, strict=True):  # both really averaged
                torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
            assert (len({digest(out) for out in outputs}) == 1) is expect_one
    finally:
        shutdown_all(ours + stock)


class _DiesWhileReducing(DeterministicAllReduceRunner):
    """Kills its averager process (os._exit) after sending two averaged parts: a reducer dying mid-round."""

    sent = 0

    async def _accumulate_parts_streaming(self, stream, sender_index):
        async for message in super()._accumulate_parts_streaming(stream, sender_index):
            yield message
            type(self).sent += 1
            if type(self).sent >= 2:
                os._exit(1)


class _DiesAfterMatchmaking(DeterministicAllReduceRunner):
    """Kills its averager process as the all-reduce starts: in the group, but sends and reduces nothing."""

    async def run(self):
        os._exit(1)
        yield  # an async generator, like the runner it replaces


class _SendsNaN(DeterministicAllReduceRunner):
    """A reducer that answers every sender with forged bytes: a NaN over the first scale of each averaged part
    (no codec of ours encodes one; the bytes are what a hostile peer writes)."""

    async def _encode_result(self, part_index, averaged_part):
        message = await super()._encode_result(part_index, averaged_part)
        forged = type(message)()
        forged.CopyFrom(message)
        buffer = bytearray(forged.buffer)
        buffer[HEADER.size : HEADER.size + 4] = struct.pack("<f", float("nan"))
        forged.buffer = bytes(buffer)
        return forged


@pytest.mark.timeout(60)
def test_a_reducer_sending_nan_is_a_failed_reducer_and_no_nan_reaches_the_others(dhts):
    """All-reduce mode's half of "NaN never reaches any peer's state": the codec refuses the NaN at decoding, the
    reducer's span is zeroed for both survivors alike (one digest), every value they hold is finite."""
    inputs, weights = make_inputs(3, seed=13)
    prefix = f"nan{uuid.uuid4().hex[:8]}"
    codec = make_codec("int4")
    survivors = start_averagers(dhts[:2], inputs[:2], prefix=prefix, group_size=3, codec=codec)
    (forger,) = start_averagers(dhts[2:3], inputs[2:], prefix=prefix, group_size=3, runner=_SendsNaN, codec=codec)
    everyone = ids([*survivors, forger])
    thread = threading.Thread(target=forger.step, args=(weights[2], 12.0), kwargs=dict(members=everyone), daemon=True)
    try:
        thread.start()
        results = step_all(survivors, weights[:2], timeout=12.0, members=everyone)
        assert all(r.succeeded and r.group_size == 3 for r in results), results
        assert [r.failed_reducers for r in results] == [(str(forger.peer_id),)] * 2
        outputs = [held(a) for a in survivors]
        assert digest(outputs[0]) == digest(outputs[1])
        assert all(bool(torch.isfinite(t).all()) for t in outputs[0])
        assert any(bool((t != 0).any()) for t in outputs[0])  # the honest reducers' spans were averaged
    finally:
        shutdown_all(survivors)
        thread.join(30)
        if forger.is_alive():
            forger.shutdown()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("runner", [_DiesWhileReducing, _DiesAfterMatchmaking], ids=["mid-reduce", "at-start"])
def test_peer_killed_mid_round(dhts, runner):
    inputs, weights = make_inputs(3, seed=11)
    prefix = f"kill{uuid.uuid4().hex[:8]}"
    survivors = start_averagers(dhts[:2], inputs[:2], prefix=prefix, group_size=3, error_feedback=True)
    (victim,) = start_averagers(dhts[2:3], inputs[2:], prefix=prefix, group_size=3, runner=runner)
    everyone = ids([*survivors, victim])
    thread = threading.Thread(target=victim.step, args=(weights[2], 12.0), kwargs=dict(members=everyone), daemon=True)
    try:
        thread.start()
        results = step_all(survivors, weights[:2], timeout=12.0, members=everyone)
        assert all(r.succeeded for r in results), [r.reason for r in results]
        assert all(r.group_size == 3 for r in results), results
        assert all(r.elapsed_s < 12.0 + MATCHMAKING["allreduce_timeout"] for r in results)
        assert [r.failed_reducers for r in results] == [(str(victim.peer_id),)] * 2
        assert results[0].zeroed_fraction == results[1].zeroed_fraction > 0
        outputs = [held(a) for a in survivors]
        assert digest(outputs[0]) == digest(outputs[1])
        zeros = sum(int((t == 0).sum()) for t in outputs[0])
        assert zeros >= results[0].zeroed_fraction * sum(t.numel() for t in outputs[0])
        for averager, local, out in zip(survivors, inputs[:2], outputs, strict=True):
            for residual, x, y in zip(averager.residuals, local, out, strict=True):
                assert torch.equal(residual[y == 0], x[y == 0])  # zeroed span: all of it carries over
        if runner is _DiesAfterMatchmaking:  # the victim sent nothing: the rest is the survivors' mean
            for got, want in zip(outputs[0], weighted_mean(inputs[:2], weights[:2]), strict=True):
                torch.testing.assert_close(got.double() * (got != 0), want * (got != 0), atol=1e-5, rtol=0)
    finally:
        shutdown_all(survivors)
        if victim.is_alive():
            victim.shutdown()


@pytest.mark.timeout(40)
def test_peers_of_different_rounds_never_meet_and_no_group_is_a_failure_result(dhts):
    """Two peers look for a group at the same time, one for round 6, one for round 7: neither finds one (before
    the round became the matchmaking key, a peer late for round r joined a group of round r + 1 and the whole
    group failed); the failure leaves the tensors untouched and the residuals zero. Then both at round 7 meet."""
    inputs, weights = make_inputs(2, seed=3)
    averagers = start_averagers(dhts[:2], inputs, error_feedback=True)
    try:
        with ThreadPoolExecutor(2) as pool:
            steps = [
                pool.submit(a.step, w, timeout=3.0, round_=r, members=ids(averagers))
                for a, w, r in zip(averagers, weights, (6, 7), strict=True)
            ]
            results = [f.result() for f in steps]
        for result, averager, mine in zip(results, averagers, inputs, strict=True):
            assert isinstance(result, AveragingResult)
            assert not result.succeeded and result.reason == "no group found"
            assert digest(held(averager)) == digest(mine)  # untouched: the node applies its own delta
            assert all(not r.any() for r in averager.residuals)
        together = step_all(averagers, weights, timeout=10.0, round_=7)
        assert all(r.succeeded and r.group_size == 2 for r in together)
        assert all(r.complete for r in together), [r.failed_reducers for r in together]
        assert digest(held(averagers[0])) == digest(held(averagers[1]))
    finally:
        shutdown_all(averagers)


@pytest.mark.timeout(60)
def test_give_up_ends_the_search_for_a_group_and_the_next_round_still_meets(dhts):
    """A peer looking for a group in vain (its partner is in another round) stops as soon as ``give_up`` says so,
    long before its matchmaking timeout, tensors untouched; the averager that gave up meets its partner in the next
    round."""
    inputs, weights = make_inputs(2, seed=5)
    averagers = start_averagers(dhts[:2], inputs, error_feedback=True)
    try:
        flag = threading.Event()
        timer = threading.Timer(1.0, flag.set)
        timer.start()
        lone = averagers[0].step(weights[0], timeout=20.0, round_=3, give_up=flag.is_set, members=ids(averagers))
        timer.cancel()
        assert not lone.succeeded and lone.reason == GAVE_UP, lone
        assert lone.elapsed_s < 10.0, lone  # half the 20 s matchmaking timeout: it did not wait it out
        assert digest(held(averagers[0])) == digest(inputs[0])
        assert all(not r.any() for r in averagers[0].residuals)

        with ThreadPoolExecutor(2) as pool:
            steps = [
                pool.submit(
                    a.step, w, timeout=10.0, round_=4, expected_size=2, give_up=lambda: False, members=ids(averagers)
                )
                for a, w in zip(averagers, weights, strict=True)
            ]
            together = [f.result() for f in steps]
        assert all(r.succeeded and r.group_size == 2 for r in together), together
        assert digest(held(averagers[0])) == digest(held(averagers[1]))
    finally:
        shutdown_all(averagers)


@pytest.mark.timeout(60)
def test_groups_form_from_direct_declarations_and_the_dht_holds_none(dhts):
    """Each averager declares itself straight to the peers it is told to expect (sync/matchmaking.py): after the
    round the DHT holds nothing under the round's group key (hivemind stores every declaration there). The third
    averager is in client mode: it serves no requests, so no declaration reaches it; it finds its leader by asking
    the others, and the group of three forms."""
    inputs, weights = make_inputs(3, seed=17)
    prefix = f"direct{uuid.uuid4().hex[:8]}"
    servers = start_averagers(dhts[:2], inputs[:2], prefix=prefix, group_size=3)
    (client,) = start_averagers(dhts[2:3], inputs[2:], prefix=prefix, group_size=3, client_mode=True)
    averagers = [*servers, client]
    try:
        results = step_all(averagers, weights, timeout=10.0, round_=9, expected_size=3)
        assert all(r.succeeded and r.group_size == 3 for r in results), results
        assert len({digest(held(a)) for a in averagers}) == 1
        for node in dhts[:3]:
            assert node.get(f"{prefix}.0b{round_group_bits(9)}", latest=True) is None
    finally:
        shutdown_all(averagers)
