"""Loaded by every Python process of a peer when this folder is on PYTHONPATH and P2PMODEL_RPC_LOG names a file
(benchmarks/control_calls.py sets both): each outgoing p2pd call (hivemind's unary calls and stream opens, from
the peer, its DHT and its averager processes) and each DHT get/store made through hivemind's DHT object is
appended to that file as one JSON line. A measurement aid only: nothing in p2pmodel imports it."""

import json
import os
import re
import time

_PATH = os.environ.get("P2PMODEL_RPC_LOG")


def _log(kind: str, name: str, sent: int = 0, received: int = 0) -> None:
    line = {"t": time.time(), "pid": os.getpid(), "kind": kind, "name": name, "sent": sent, "received": received}
    with open(_PATH, "a") as f:  # one short write per line: lines of concurrent processes do not interleave
        f.write(json.dumps(line) + "\n")


def _key_name(key) -> str:
    """A DHT key with its ids and round numbers blanked, so that keys of one kind count together."""
    k = key if isinstance(key, str) else repr(key)
    k = re.sub(r"[0-9a-f]{16,}", "<id>", k)
    return re.sub(r"/\d+$", "/<round>", k)[:80]


def _install() -> None:
    from hivemind.dht import dht as dht_module
    from hivemind.p2p.p2p_daemon_bindings import p2pclient

    client, dht = p2pclient.Client, dht_module.DHT
    unary, stream_open, get, store = client.call_unary_handler, client.stream_open, dht.get, dht.store

    async def call_unary_handler(self, peer_id, proto, data):
        response = await unary(self, peer_id, proto, data)
        _log("unary", proto, len(data), len(response))
        return response

    async def open_stream(self, peer_id, protocols):
        opened = await stream_open(self, peer_id, protocols)
        _log("stream", protocols[0])
        return opened

    def dht_get(self, key, *args, **kwargs):
        _log("dht_get", _key_name(key))
        return get(self, key, *args, **kwargs)

    def dht_store(self, key, *args, **kwargs):
        _log("dht_store", _key_name(key))
        return store(self, key, *args, **kwargs)

    client.call_unary_handler, client.stream_open = call_unary_handler, open_stream
    dht.get, dht.store = dht_get, dht_store


if _PATH:
    _install()
