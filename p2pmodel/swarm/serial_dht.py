"""One writer at a time on a hivemind DHT's command pipe.

hivemind 1.1.12 sends every ``DHT.get`` / ``store`` / ``run_coroutine`` (and ``replicate_p2p``) to its DHT
process as one message on a single ``multiprocessing`` pipe, with no lock. A peer calls the DHT from the round
loop, the pace watcher, the record refresher, gossip delivery and release threads; a large message is written
in several ``write`` calls, so two threads sending at once can interleave their bytes and corrupt the stream.

``serialize_calls`` puts one lock around the pipe's ``send``: the call is queued in order, and waiting for its
answer (an ``MPFuture``) happens outside the lock, so a slow lookup does not hold up the others. The DHT's
owner (``node/swarm_link.py``) installs it right after starting the DHT, before any thread or child process
that uses the DHT starts (a child forked while another thread held the lock would inherit it locked).
tests/unit/test_serial_dht.py pins the hivemind internals this relies on.
"""

from __future__ import annotations

import threading
from typing import Any


class _SerialSender:
    """A pipe connection whose ``send`` takes a lock; everything else is the connection's own."""

    def __init__(self, conn: Any):
        self._conn = conn
        self._lock = threading.Lock()
        self.sends = 0  # for tests and metrics

    def send(self, obj: Any) -> None:
        with self._lock:
            self._conn.send(obj)
            self.sends += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def serialize_calls(dht: Any) -> Any:
    """Make every command this process sends to ``dht``'s process go out whole, one at a time; returns ``dht``."""
    pipe = dht._outer_pipe
    if not isinstance(pipe, _SerialSender):
        dht._outer_pipe = _SerialSender(pipe)
    return dht
