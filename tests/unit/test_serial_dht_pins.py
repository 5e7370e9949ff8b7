"""Pins the hivemind internals ``p2pmodel/swarm/serial_dht.py`` relies on: every DHT call goes out as one
``self._outer_pipe.send`` in the calling process. If an upgrade changes that, these fail before a peer
silently loses its lock."""

import inspect

import hivemind
from hivemind.dht.dht import DHT

from p2pmodel.swarm.serial_dht import _SerialSender, serialize_calls


def test_hivemind_dht_calls_go_through_one_outer_pipe_send():
    assert hivemind.__version__ == "1.1.12", "re-check serial_dht.py against this hivemind version"
    for method in (DHT.get, DHT.store, DHT.run_coroutine, DHT.shutdown):
        source = inspect.getsource(method)
        assert "self._outer_pipe.send(" in source, method.__name__
    assert "self._inner_pipe, self._outer_pipe = mp.Pipe(" in inspect.getsource(DHT.__init__)


def test_serialize_calls_wraps_the_pipe_once_and_forwards_everything_else():
    class Conn:
        def __init__(self):
            self.sent = []

        def send(self, obj):
            self.sent.append(obj)

        def fileno(self):
            return 7

    class FakeDHT:
        _outer_pipe = Conn()

    dht = FakeDHT()
    assert serialize_calls(serialize_calls(dht)) is dht
    assert isinstance(dht._outer_pipe, _SerialSender) and not isinstance(dht._outer_pipe._conn, _SerialSender)
    dht._outer_pipe.send(("_get", [], {}))
    assert dht._outer_pipe._conn.sent == [("_get", [], {})] and dht._outer_pipe.sends == 1
    assert dht._outer_pipe.fileno() == 7
