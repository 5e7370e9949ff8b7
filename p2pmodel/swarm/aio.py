"""One background asyncio loop per process, so sync callers can use hivemind's async P2P API.

hivemind's DHT runs its own loop in a child process; a ``P2P`` replica (``await dht.replicate_p2p()``) and the
stream handlers registered on it must live on a loop in *this* process. That loop is this module's daemon
thread (like hivemind's RemoteExpertWorker); ``run_sync`` submits a coroutine to it and waits with a deadline.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import hivemind

from p2pmodel.core.errors import SwarmError

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The process-wide background loop, started on first use (and again after a fork)."""
    global _loop, _loop_pid, _replica_lock
    with _lock:
        if _loop is None or _loop_pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="p2pmodel-swarm-loop", daemon=True)
            thread.start()
            atexit.register(_stop_loop, loop, thread)
            _loop, _loop_pid, _replica_lock = loop, os.getpid(), None
        return _loop


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """At exit: cancel what still runs on the loop (handlers of unreleased replicas), then stop it."""

    async def _cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    if loop.is_running():
        try:
            asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(5)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def run_sync(coro: Coroutine[Any, Any, T], timeout_s: float | None, what: str = "network operation") -> T:
    """Run ``coro`` on the background loop and return its result; SwarmError after ``timeout_s``."""
    loop = get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("run_sync called from the swarm loop itself; await the coroutine instead")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout_s)
    except TimeoutError:  # also concurrent.futures / asyncio timeouts since Python 3.11
        future.cancel()
        raise SwarmError(f"{what} timed out after {timeout_s:g} s") from None


async def get_p2p(dht: hivemind.DHT) -> hivemind.P2P:
    """This process's P2P replica of ``dht``'s daemon (cached by hivemind on the DHT object)."""
    if not dht.is_alive():
        raise SwarmError("the DHT is not running")
    global _replica_lock
    if _replica_lock is None:
        _replica_lock = asyncio.Lock()
    async with _replica_lock:  # replicate_p2p is not re-entrant: two first calls would make two replicas
        return await dht.replicate_p2p()


_replica_lock: asyncio.Lock | None = None


async def release_p2p(dht: hivemind.DHT) -> None:
    """Close this process's P2P replica of ``dht`` (its stream handlers stop; the daemon is the DHT's)."""
    replica = getattr(dht, "_p2p_replica", None)  # hivemind caches the replica in this private field
    if replica is not None:
        dht._p2p_replica = None
        await replica.shutdown()
