"""Keep this peer's record alive in the DHT: republish it every ttl/3 until stopped.

The owner (node/) builds it with a callable returning the current record (round, throughput and digest change
between rounds) and calls ``stop()`` on shutdown. A failed publish is logged and retried next period.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import hivemind

from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.records import publish_peer_record

logger = logging.getLogger(__name__)


class RecordRefresher:
    """A daemon thread republishing ``make_record()`` with ``ttl_s`` every ``ttl_s / 3`` seconds."""

    def __init__(self, dht: hivemind.DHT, identity: Identity, make_record: Callable[[], dict], ttl_s: float):
        if not ttl_s > 0:
            raise ValueError("ttl_s must be positive")
        self.dht, self.identity, self.make_record, self.ttl_s = dht, identity, make_record, ttl_s
        self.published = 0
        """How many publishes the DHT accepted (for tests and metrics)."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="p2pmodel-record-refresher", daemon=True)
        self._thread.start()

    def refresh_now(self) -> None:
        """Publish at once (e.g. right after a commit) instead of waiting for the period."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if publish_peer_record(self.dht, self.identity, self.make_record(), self.ttl_s):
                    self.published += 1
                else:
                    logger.debug("peer record publish was not accepted by any DHT peer")
            except Exception as e:
                if self._stop.is_set():
                    break
                logger.warning(f"publishing the peer record failed: {type(e).__name__}: {e}")
            self._wake.wait(self.ttl_s / 3)
            self._wake.clear()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop republishing and wait for the thread (the record then expires by itself)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def __enter__(self) -> RecordRefresher:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
