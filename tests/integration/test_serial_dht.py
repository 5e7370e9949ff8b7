"""Many threads calling one hivemind DHT at once (as a peer's round loop, pace watcher, record refresher, gossip
delivery and release threads do) must not corrupt its command pipe. Without ``serialize_calls`` this very load
kills the DHT process within seconds ("_pickle.UnpicklingError: invalid load key" in DHT-1: two threads' pickles
interleaved on the pipe) and every later call hangs."""

import threading

import hivemind
import pytest
from hivemind.utils.timed_storage import get_dht_time

from p2pmodel.swarm.serial_dht import serialize_calls


@pytest.mark.timeout(120)
def test_eight_threads_store_and_get_without_corrupting_the_pipe():
    dht = serialize_calls(hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"]))
    errors: list[str] = []

    def work(i: int) -> None:
        try:
            for j in range(12):
                value = bytes([i, j % 256]) * 6000  # 12 KB: a signed record is up to 16 KB
                assert dht.store(f"k{i}", value, get_dht_time() + 60)
                got = dht.get(f"k{i}", latest=True)
                assert got is not None and got.value == value, f"thread {i} call {j} read back something else"
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not any(t.is_alive() for t in threads), "calls hung: the DHT process died"
        assert errors == []
        assert dht.is_alive() and dht._outer_pipe.sends >= 8 * 24
    finally:
        if dht.is_alive():
            dht.shutdown()
