"""Per-peer send queue: batches pushed messages and announced ids into few frames, one sender task per peer.

Bounded (excess is dropped and counted), sends in order, and its task ends after a quiet period; a peer that
does not answer costs one ``rpc_timeout_s`` per frame, never a blocked caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from p2pmodel.gossip import frames

logger = logging.getLogger(__name__)
IDLE_EXIT_S = 30.0

Send = Callable[[str, bytes], Awaitable[bool]]


class Outbox:
    """Queued pushes and IHAVE ids for one peer; ``put_*`` are called on the event loop."""

    def __init__(self, peer: str, send: Send, max_items: int, max_frame_bytes: int, count: Callable[[str, int], None]):
        self.peer, self._send, self._max_items, self._max_frame = peer, send, max_items, max_frame_bytes
        self._count = count
        self._pushes: deque[bytes] = deque()
        self._ids: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    def _room(self) -> bool:
        if len(self._pushes) + len(self._ids) >= self._max_items:
            self._count("outbox_full", 1)
            return False
        return True

    def put_push(self, data: bytes) -> None:
        if self._room():
            self._pushes.append(data)
            self._kick()

    def put_ihave(self, msg_id: bytes) -> None:
        if self._room():
            self._ids.append(msg_id)
            self._kick()

    def _kick(self) -> None:
        self._wake.set()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"gossip-outbox-{self.peer[:12]}")

    @property
    def idle(self) -> bool:
        return self.task is None or self.task.done()

    async def _run(self) -> None:
        while True:
            if not self._pushes and not self._ids:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), IDLE_EXIT_S)
                except TimeoutError:
                    if not self._pushes and not self._ids:
                        return
            if self._pushes:
                frame, n = frames.pack_msgs("push", list(self._pushes)[: frames.MAX_MSGS], self._max_frame)
                for _ in range(n):
                    self._pushes.popleft()
                if await self._send(self.peer, frame):
                    self._count("pushed", n)
            if self._ids:
                ids = [self._ids.popleft() for _ in range(min(len(self._ids), frames.MAX_IDS))]
                if await self._send(self.peer, frames.encode("ihave", {"ids": ids})):
                    self._count("announced", len(ids))
