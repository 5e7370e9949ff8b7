"""Chunked, sha256-verified blob transfer between two real peers on 127.0.0.1."""

import hashlib
import logging
import os
import time

import pytest

from p2pmodel.core.errors import IntegrityError, SwarmError, UsageError, WireError
from p2pmodel.swarm.blobs import BlobNotFound, BlobServer, fetch_blob
from p2pmodel.swarm.node import peer_id_of, start_dht, stop_dht, visible_maddrs

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
BLOB = os.urandom(20 * 2**20 + 12345)
DIGEST = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture(scope="module")
def pair():
    dhts = [start_dht(None, [], LOCAL, wait_timeout_s=3)]
    try:
        dhts.append(start_dht(None, visible_maddrs(dhts[0]), LOCAL, wait_timeout_s=3))
        yield dhts
    finally:
        for dht in dhts:
            stop_dht(dht)


@pytest.mark.timeout(60)
def test_transfer_20mb_and_refusals(pair):
    server_dht, client_dht = pair
    server_id = peer_id_of(server_dht)
    with BlobServer(server_dht, {DIGEST: BLOB}.get):
        assert fetch_blob(client_dht, server_id, DIGEST, max_bytes=len(BLOB), timeout_s=30) == BLOB
        with pytest.raises(BlobNotFound, match="not found"):
            fetch_blob(client_dht, server_id, "00" * 32, max_bytes=len(BLOB), timeout_s=10)
        with pytest.raises(WireError, match="over the limit"):
            fetch_blob(client_dht, server_id, DIGEST, max_bytes=len(BLOB) - 1, timeout_s=10)
        with pytest.raises(UsageError):
            fetch_blob(client_dht, server_id, "not-a-digest", max_bytes=10, timeout_s=10)
        # the server keeps serving after refused requests
        assert fetch_blob(client_dht, server_id, DIGEST, max_bytes=len(BLOB), timeout_s=30) == BLOB


@pytest.mark.timeout(60)
def test_corrupted_blob_is_integrity_error(pair):
    server_dht, client_dht = pair
    corrupted = bytearray(BLOB[: 3 * 2**20])
    digest = hashlib.sha256(corrupted).hexdigest()
    corrupted[2**20 + 7] ^= 0xFF
    with BlobServer(server_dht, {digest: bytes(corrupted)}.get, chunk_bytes=256 << 10, protocol="/test/corrupt/1"):
        with pytest.raises(IntegrityError, match="does not match"):
            fetch_blob(client_dht, peer_id_of(server_dht), digest, 2**30, timeout_s=20, protocol="/test/corrupt/1")


@pytest.mark.timeout(60)
def test_lying_size_and_missing_server(pair):
    server_dht, client_dht = pair

    class Liar(BlobServer):  # announces a small size, then streams more than it announced
        async def _handle(self, info, reader, writer):
            from p2pmodel.core import wire
            from p2pmodel.swarm.blobs import _read_frame, _write_frame

            await _read_frame(reader, 4096)
            await _write_frame(writer, wire.pack({"size": 10}))
            await _write_frame(writer, b"x" * 1000)
            writer.close()

    with Liar(server_dht, lambda d: None, protocol="/test/liar/1"):
        with pytest.raises(WireError, match="exceeds"):
            fetch_blob(client_dht, peer_id_of(server_dht), DIGEST, 2**30, timeout_s=10, protocol="/test/liar/1")
    with pytest.raises(SwarmError):  # nobody serves this protocol
        fetch_blob(client_dht, peer_id_of(server_dht), DIGEST, 2**30, timeout_s=10, protocol="/test/none/1")


@pytest.mark.timeout(60)
def test_request_cut_short_is_logged_quietly_and_serving_goes_on(pair, caplog):
    from hivemind.p2p import PeerID

    from p2pmodel.swarm.aio import get_p2p, run_sync

    server_dht, client_dht = pair

    async def half_a_request():
        p2p = await get_p2p(client_dht)
        _, _, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(peer_id_of(server_dht)), "/test/cut/1")
        writer.write(b"\x00\x00")  # half of a length prefix, then hang up
        await writer.drain()
        writer.close()

    caplog.set_level(logging.DEBUG, logger="p2pmodel.swarm.blobs")
    with BlobServer(server_dht, {DIGEST: BLOB}.get, protocol="/test/cut/1"):
        run_sync(half_a_request(), 10)
        deadline = time.monotonic() + 10
        while "ended early: IncompleteReadError" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "ended early: IncompleteReadError" in caplog.text, caplog.text
        assert fetch_blob(client_dht, peer_id_of(server_dht), DIGEST, len(BLOB), timeout_s=30, protocol="/test/cut/1")


@pytest.mark.timeout(60)
def test_a_stalled_download_resumes_from_another_server(pair):
    """A server that stops sending halfway is left after ``stall_s``; what arrived is kept and the next server,
    asked for the rest only, completes it; the sha256 covers the whole blob, the resumed prefix included."""
    import asyncio

    from p2pmodel.core import wire
    from p2pmodel.swarm.blobs import Partial, _read_frame, _write_frame

    server_dht, client_dht = pair
    server_id = peer_id_of(server_dht)
    asked: list[dict] = []

    class Staller(BlobServer):  # sends the header and 3 MiB, then nothing
        async def _handle(self, info, reader, writer):
            asked.append(wire.unpack(await _read_frame(reader, 4096), 4096))
            await _write_frame(writer, wire.pack({"size": len(BLOB), "offset": 0}))
            await _write_frame(writer, BLOB[: 3 << 20])
            await asyncio.sleep(30)
            writer.close()

    partial = Partial(DIGEST)
    with Staller(server_dht, lambda d: None, protocol="/test/stall/1"):
        t0 = time.monotonic()
        with pytest.raises(SwarmError, match="sent nothing for 1 s"):
            fetch_blob(client_dht, server_id, DIGEST, 2**30, 20, "/test/stall/1", partial=partial, stall_s=1)
        assert time.monotonic() - t0 < 15  # left at the stall, not at the 20 s deadline
    assert asked == [{"digest": DIGEST}]
    assert bytes(partial.data) == BLOB[: 3 << 20]

    with BlobServer(server_dht, {DIGEST: BLOB}.get, protocol="/test/resume/1"):
        assert fetch_blob(client_dht, server_id, DIGEST, 2**30, 30, "/test/resume/1", partial=partial) == BLOB
        assert len(partial.data) == 0  # handed over, nothing kept
        # the real server honours the offset: a wrong prefix is not re-sent over, so the whole does not verify
        wrong = Partial(DIGEST)
        wrong.add(b"\0" * (5 << 20))
        with pytest.raises(IntegrityError, match="does not match"):
            fetch_blob(client_dht, server_id, DIGEST, 2**30, 30, "/test/resume/1", partial=wrong)
        assert len(wrong.data) == 0  # dropped: the next attempt starts over
        bad = Partial(DIGEST)
        bad.add(b"\0" * (len(BLOB) + 1))
        with pytest.raises(SwarmError, match="bad request"):  # an offset past the end: refused, not a crash
            fetch_blob(client_dht, server_id, DIGEST, 2**30, 10, "/test/resume/1", partial=bad)
