"""The gossip handler on hivemind's own P2P: one unary bytes-in/bytes-out protocol per Gossip.

Unary calls ride the daemon's persistent multiplexed connection (no stream set-up per message); the payload is
wrapped in protobuf's well-known ``BytesValue`` because hivemind's public unary API speaks protobuf.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import hivemind
from google.protobuf.wrappers_pb2 import BytesValue
from hivemind.p2p import P2PContext, PeerID

RequestHandler = Callable[[bytes, str], Awaitable[bytes]]


class Transport:
    """Registers ``handler(frame, remote_peer_id) -> answer`` under ``protocol`` and calls other peers."""

    def __init__(self, p2p: hivemind.P2P, protocol: str):
        self.p2p, self.protocol = p2p, protocol
        self.peer_id: str = p2p.peer_id.to_base58()
        self._ids: dict[str, PeerID | None] = {}
        self._registered = False

    async def register(self, handler: RequestHandler) -> None:
        async def _unary(request: BytesValue, context: P2PContext) -> BytesValue:
            return BytesValue(value=await handler(request.value, context.remote_id.to_base58()))

        await self.p2p.add_protobuf_handler(self.protocol, _unary, BytesValue)
        self._registered = True

    async def unregister(self) -> None:
        if self._registered:
            self._registered = False
            await self.p2p.remove_protobuf_handler(self.protocol)

    def parse_peer(self, peer_id: str) -> PeerID | None:
        """PeerID of a base58 string, None if it is not one (cached, bounded)."""
        if peer_id not in self._ids:
            if len(self._ids) > 10_000:
                self._ids.clear()
            try:
                self._ids[peer_id] = PeerID.from_base58(peer_id) if isinstance(peer_id, str) else None
            except Exception:
                self._ids[peer_id] = None
        return self._ids[peer_id]

    async def call(self, peer_id: str, frame: bytes, timeout_s: float) -> bytes:
        """Send ``frame`` to ``peer_id`` and return its answer; ValueError for a bad id, TimeoutError, or
        whatever the daemon raises for an unreachable peer."""
        remote = self.parse_peer(peer_id)
        if remote is None:
            raise ValueError(f"not a peer id: {peer_id!r:.80}")
        call = self.p2p.call_protobuf_handler(remote, self.protocol, BytesValue(value=frame), BytesValue)
        response = await asyncio.wait_for(call, timeout_s)
        return response.value
