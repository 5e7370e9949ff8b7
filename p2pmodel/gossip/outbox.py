"""Per-peer send queue: batches pushed messages (to pass on, or "direct": not) and announced ids into few frames,
one sender task per peer.

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
        self._directs: deque[bytes] = deque()
        self._ids: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    def _room(self) -> bool:
        if len(self._pushes) + len(self._directs) + len(self._ids) >= self._max_items:
            self._count("outbox_full", 1)
            return False
        return True

    def put_push(self, data: bytes, relay: bool = True) -> None:
        """Queue a message; ``relay=False``: the receiver keeps it but does not pass it on (a "direct" frame)."""
        if self._room():
            (self._pushes if relay else self._directs).append(data)
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
            if not self._pushes and not self._directs and not self._ids:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), IDLE_EXIT_S)
                except TimeoutError:
                    if not self._pushes and not self._directs and not self._ids:
                        return
            for frame_type, queue in (("push", self._pushes), ("direct", self._directs)):
                if queue:
                    frame, n = frames.pack_msgs(frame_type, list(queue)[: frames.MAX_MSGS], self._max_frame)
                    for _ in range(n):
                        queue.popleft()
                    if await self._send(self.peer, frame):
                        self._count("pushed", n)
            if self._ids:
                ids = [self._ids.popleft() for _ in range(min(len(self._ids), frames.MAX_IDS))]
                if await self._send(self.peer, frames.encode("ihave", {"ids": ids})):
                    self._count("announced", len(ids))
