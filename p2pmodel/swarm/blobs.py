"""Serve and fetch large byte blobs (checkpoints, patches) by sha256 digest over hivemind's P2P streams.

Protocol ``/p2pmodel/blob/1`` on one libp2p stream; every frame is a 4-byte big-endian length + payload::

    client -> server   pack({"digest": <64 hex>})
    server -> client   pack({"size": n})  then data frames of at most chunk_bytes until n bytes were sent
                       or pack({"error": "not found" | "busy" | ...})

The fetcher trusts nothing: it refuses a size above its ``max_bytes`` before reading data, bounds every frame
and the running total while streaming, and checks sha256 == digest before returning the bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable

import hivemind
from hivemind.p2p import PeerID

from p2pmodel.core import wire
from p2pmodel.core.errors import IntegrityError, SwarmError, UsageError, WireError
from p2pmodel.core.ids import is_hex64
from p2pmodel.swarm.aio import get_p2p, run_sync

logger = logging.getLogger(__name__)

BLOB_PROTOCOL = "/p2pmodel/blob/1"
DEFAULT_CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 8 << 20  # a fetcher refuses bigger frames whatever the server's chunk size
_MAX_CONTROL_BYTES = 4096
_REQUEST_TIMEOUT_S = 10.0

Provider = Callable[[str], "bytes | None"]


class BlobNotFound(SwarmError):
    """The peer does not have (or will not serve) a blob with that digest."""


async def _write_frame(writer: asyncio.StreamWriter, payload: bytes | memoryview) -> None:
    writer.write(len(payload).to_bytes(4, "big"))
    writer.write(payload)
    await writer.drain()


async def _read_frame(reader: asyncio.StreamReader, max_len: int) -> bytes:
    length = int.from_bytes(await reader.readexactly(4), "big")
    if length > max_len:
        raise WireError(f"frame of {length} bytes exceeds the limit of {max_len}")
    return await reader.readexactly(length)


class BlobServer:
    """Serves the blobs ``provider(digest) -> bytes | None`` knows, until ``close()`` (owner: the caller).

    ``provider`` runs in a worker thread (it may read from disk); return None for an unknown digest.
    At most ``max_concurrent`` transfers run at once (others get "busy"); each is cut after ``serve_timeout_s``.
    """

    def __init__(
        self,
        dht: hivemind.DHT,
        provider: Provider,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_concurrent: int = 4,
        protocol: str = BLOB_PROTOCOL,
        timeout_s: float = 30.0,
        serve_timeout_s: float = 600.0,
    ):
        if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
            raise UsageError(f"chunk_bytes must be in (0, {MAX_CHUNK_BYTES}]")
        self.dht, self.provider, self.chunk_bytes, self.protocol = dht, provider, chunk_bytes, protocol
        self._max_concurrent = max_concurrent
        self.serve_timeout_s = serve_timeout_s
        self._p2p: hivemind.P2P | None = None
        run_sync(self._start(), timeout_s, "registering the blob handler")

    async def _start(self) -> None:
        self._slots = asyncio.Semaphore(self._max_concurrent)
        self._p2p = await get_p2p(self.dht)
        await self._p2p.add_binary_stream_handler(self.protocol, self._handle)

    async def _handle(self, info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(self._serve(reader, writer), self.serve_timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, WireError) as e:
            logger.debug(f"blob request from {info.peer_id} ended early: {type(e).__name__}: {e}")
        except Exception:
            logger.warning(f"blob request from {info.peer_id} failed", exc_info=True)
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = wire.unpack(
            await asyncio.wait_for(_read_frame(reader, _MAX_CONTROL_BYTES), _REQUEST_TIMEOUT_S),
            _MAX_CONTROL_BYTES,
        )
        digest = request.get("digest") if isinstance(request, dict) else None
        if not is_hex64(digest):
            await _write_frame(writer, wire.pack({"error": "bad request"}))
            return
        if self._slots.locked():
            await _write_frame(writer, wire.pack({"error": "busy"}))
            return
        async with self._slots:
            data = await asyncio.get_running_loop().run_in_executor(None, self.provider, digest)
            if data is None:
                await _write_frame(writer, wire.pack({"error": "not found"}))
                return
            view = memoryview(data)
            await _write_frame(writer, wire.pack({"size": len(view)}))
            for offset in range(0, len(view), self.chunk_bytes):
                await _write_frame(writer, view[offset : offset + self.chunk_bytes])

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop serving (idempotent)."""
        if self._p2p is not None and self.dht.is_alive():
            p2p, self._p2p = self._p2p, None
            try:
                run_sync(p2p.remove_binary_stream_handler(self.protocol), timeout_s, "removing the blob handler")
            except Exception as e:
                logger.debug(f"removing the blob handler failed: {e}")
        self._p2p = None

    def __enter__(self) -> BlobServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def afetch_blob(
    p2p: hivemind.P2P, peer_id: str, digest: str, max_bytes: int, protocol: str = BLOB_PROTOCOL
) -> bytes:
    """Async core of ``fetch_blob`` for callers already on an event loop with a P2P instance."""
    if not is_hex64(digest):
        raise UsageError(f"not a sha256 hex digest: {digest!r}")
    try:
        remote = PeerID.from_base58(peer_id)
    except Exception:
        raise UsageError(f"not a peer id: {peer_id!r}") from None
    try:
        _, reader, writer = await p2p.call_binary_stream_handler(remote, protocol)
    except Exception as e:
        raise SwarmError(f"cannot open a blob stream to {peer_id}: {' '.join(str(e).split())[:200]}") from None
    try:
        await _write_frame(writer, wire.pack({"digest": digest}))
        header = wire.unpack(await _read_frame(reader, _MAX_CONTROL_BYTES), _MAX_CONTROL_BYTES)
        if not isinstance(header, dict):
            raise WireError(f"malformed blob header from {peer_id}")
        if "error" in header:
            error = str(header["error"])[:100]
            cls = BlobNotFound if error == "not found" else SwarmError
            raise cls(f"peer {peer_id} cannot serve blob {digest[:12]}: {error}")
        size = header.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise WireError(f"malformed blob header from {peer_id}")
        if size > max_bytes:
            raise WireError(f"blob {digest[:12]} from {peer_id} is {size} bytes, over the limit of {max_bytes}")
        hasher, received = hashlib.sha256(), bytearray()  # one buffer: a stream of 1-byte frames costs no more
        while len(received) < size:
            chunk = await _read_frame(reader, min(MAX_CHUNK_BYTES, size - len(received)))
            if not chunk:
                raise WireError(f"empty chunk in blob {digest[:12]} from {peer_id}")
            hasher.update(chunk)
            received += chunk
    except asyncio.IncompleteReadError:
        raise SwarmError(f"peer {peer_id} closed the stream before blob {digest[:12]} was complete") from None
    except ConnectionError as e:
        raise SwarmError(f"connection to {peer_id} broke during blob {digest[:12]}: {e}") from None
    finally:
        writer.close()
    if hasher.hexdigest() != digest:
        raise IntegrityError(
            f"blob from {peer_id} does not match its digest {digest[:12]} (got {hasher.hexdigest()[:12]})"
        )
    return bytes(received)


def fetch_blob(
    dht: hivemind.DHT,
    peer_id: str,
    digest: str,
    max_bytes: int,
    timeout_s: float,
    protocol: str = BLOB_PROTOCOL,
) -> bytes:
    """Download the blob ``digest`` from ``peer_id`` through this process's replica of ``dht``'s P2P.

    Raises BlobNotFound (the peer lacks it), WireError (oversized or malformed stream), IntegrityError
    (bytes do not hash to ``digest``) or SwarmError (unreachable peer, broken stream, past ``timeout_s``).
    """

    async def _fetch() -> bytes:
        p2p = await get_p2p(dht)
        return await afetch_blob(p2p, peer_id, digest, max_bytes, protocol)

    async def _bounded() -> bytes:
        try:
            return await asyncio.wait_for(_fetch(), timeout_s)
        except TimeoutError:
            raise SwarmError(f"fetching blob {digest[:12]} from {peer_id} timed out after {timeout_s:g} s") from None

    return run_sync(_bounded(), timeout_s + 5.0, f"fetching blob {digest[:12]}")
