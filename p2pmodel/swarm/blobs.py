"""Serve and fetch large byte blobs (checkpoints, patches) by sha256 digest over hivemind's P2P streams.

Protocol ``/p2pmodel/blob/1`` on one libp2p stream; every frame is a 4-byte big-endian length + payload::

    client -> server   pack({"digest": <64 hex>, "offset": k})           (offset optional, default 0)
    server -> client   pack({"size": n, "offset": k})  then data frames of at most chunk_bytes carrying bytes
                       k..n-1, or pack({"error": "not found" | "busy" | ...})

The fetcher trusts nothing: it refuses a size above its ``max_bytes`` before reading data, bounds every frame
and the running total while streaming, and checks sha256 == digest before returning the bytes.

Resuming: a blob is content-addressed, so a download cut off (a stalled peer, a broken connection, a deadline)
keeps its prefix in a ``Partial`` and the next attempt, to the same peer or any other serving that digest, asks
only for the rest. A slow uplink then costs time, not the whole transfer again. The prefix is not trusted
either: the sha256 over all of it is checked once the last byte arrived, and a mismatch drops it.
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
_READ_BYTES = 64 << 10  # progress is observed (and a stall detected) at this granularity, not per 1 MiB frame

Provider = Callable[[str], "bytes | None"]


class BlobNotFound(SwarmError):
    """The peer does not have (or will not serve) a blob with that digest."""


class Partial:
    """The bytes of one blob received so far (from any peer) and their running sha256; see "Resuming" above."""

    def __init__(self, digest: str):
        self.digest = digest
        self.size: int | None = None  # what the first server said; a server saying otherwise starts over
        self.data = bytearray()
        self._hasher = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        self._hasher.update(chunk)

    def reset(self) -> None:
        self.size, self.data, self._hasher = None, bytearray(), hashlib.sha256()

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


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
        offset = request.get("offset", 0) if isinstance(request, dict) else None
        if not is_hex64(digest) or type(offset) is not int or offset < 0:
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
            if offset > len(view):
                await _write_frame(writer, wire.pack({"error": "bad request"}))
                return
            await _write_frame(writer, wire.pack({"size": len(view), "offset": offset}))
            for start in range(offset, len(view), self.chunk_bytes):
                await _write_frame(writer, view[start : start + self.chunk_bytes])

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
    p2p: hivemind.P2P,
    peer_id: str,
    digest: str,
    max_bytes: int,
    protocol: str = BLOB_PROTOCOL,
    partial: Partial | None = None,
    stall_s: float | None = None,
) -> bytes:
    """Async core of ``fetch_blob`` for callers already on an event loop with a P2P instance."""
    if not is_hex64(digest):
        raise UsageError(f"not a sha256 hex digest: {digest!r}")
    try:
        remote = PeerID.from_base58(peer_id)
    except Exception:
        raise UsageError(f"not a peer id: {peer_id!r}") from None
    if partial is None or partial.digest != digest:
        partial = Partial(digest)
    try:
        _, reader, writer = await p2p.call_binary_stream_handler(remote, protocol)
    except Exception as e:
        raise SwarmError(f"cannot open a blob stream to {peer_id}: {' '.join(str(e).split())[:200]}") from None

    async def read(n: int) -> bytes:
        return await asyncio.wait_for(reader.readexactly(n), stall_s)

    try:
        offset = len(partial.data)
        await _write_frame(writer, wire.pack({"digest": digest, "offset": offset} if offset else {"digest": digest}))
        frame = await asyncio.wait_for(_read_frame(reader, _MAX_CONTROL_BYTES), stall_s)
        header = wire.unpack(frame, _MAX_CONTROL_BYTES)
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
        said = header.get("offset", 0)
        if type(said) is not int or said not in (0, offset):
            raise WireError(f"blob {digest[:12]} from {peer_id} starts at {said!r}, not at {offset}")
        if partial.size not in (None, size):
            partial.reset()  # one of the two servers lies about the size; the digest check will tell which
            raise WireError(f"blob {digest[:12]} from {peer_id} is {size} bytes, another peer said otherwise")
        if said == 0 and offset:
            partial.reset()  # a server that ignores offsets sends it all
        partial.size = size
        while len(partial.data) < size:
            length = int.from_bytes(await read(4), "big")
            if not length:
                raise WireError(f"empty chunk in blob {digest[:12]} from {peer_id}")
            if length > min(MAX_CHUNK_BYTES, size - len(partial.data)):
                raise WireError(f"a chunk of {length} bytes exceeds what is left of blob {digest[:12]} from {peer_id}")
            while length:
                piece = await read(min(length, _READ_BYTES))
                partial.add(piece)
                length -= len(piece)
    except TimeoutError:
        raise SwarmError(
            f"peer {peer_id} sent nothing for {stall_s:g} s ({len(partial.data)} of blob {digest[:12]} received)"
        ) from None
    except asyncio.IncompleteReadError:
        raise SwarmError(f"peer {peer_id} closed the stream before blob {digest[:12]} was complete") from None
    except ConnectionError as e:
        raise SwarmError(f"connection to {peer_id} broke during blob {digest[:12]}: {e}") from None
    finally:
        writer.close()
    got = partial.hexdigest()
    data = bytes(partial.data)
    partial.reset()
    if got != digest:
        raise IntegrityError(f"blob from {peer_id} does not match its digest {digest[:12]} (got {got[:12]})")
    return data


def fetch_blob(
    dht: hivemind.DHT,
    peer_id: str,
    digest: str,
    max_bytes: int,
    timeout_s: float,
    protocol: str = BLOB_PROTOCOL,
    partial: Partial | None = None,
    stall_s: float | None = None,
) -> bytes:
    """Download the blob ``digest`` from ``peer_id`` through this process's replica of ``dht``'s P2P.

    ``partial``: what earlier attempts received of this blob (any peer); it is resumed and, when this attempt is
    cut off, keeps what arrived. ``stall_s``: give up this peer once it sent nothing for that long.
    Raises BlobNotFound (the peer lacks it), WireError (oversized or malformed stream), IntegrityError
    (bytes do not hash to ``digest``) or SwarmError (unreachable peer, broken or stalled stream, past
    ``timeout_s``).
    """

    async def _fetch() -> bytes:
        p2p = await get_p2p(dht)
        return await afetch_blob(p2p, peer_id, digest, max_bytes, protocol, partial, stall_s)

    async def _bounded() -> bytes:
        try:
            return await asyncio.wait_for(_fetch(), timeout_s)
        except TimeoutError:
            raise SwarmError(f"fetching blob {digest[:12]} from {peer_id} timed out after {timeout_s:g} s") from None

    return run_sync(_bounded(), timeout_s + 5.0, f"fetching blob {digest[:12]}")
