"""benchmarks/control_calls.py without starting any process: the per-peer-per-round attribution of logged calls,
and the accounting hook's key names (ids and rounds blanked so keys of one kind count together)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_calls_are_counted_per_peer_per_round_and_priced_per_call():
    cc = _load(BENCH / "control_calls.py", "bench_control_calls")
    lines = [
        {"kind": "unary", "name": "DHTProtocol.rpc_find", "sent": 100, "received": 900},
        {"kind": "unary", "name": "DHTProtocol.rpc_find", "sent": 100, "received": 900},
        {"kind": "unary", "name": "/p2pmodel/gossip/1", "sent": 700, "received": 10},
        {"kind": "stream", "name": "x.rpc_aggregate_part", "sent": 0, "received": 0},
        {"kind": "dht_get", "name": "p2pmodel/<id>/peers", "sent": 0, "received": 0},
    ]
    out = cc.summarize(lines, peers=2, rounds=1)
    find = out["per_peer_per_round"]["unary DHTProtocol.rpc_find"]
    assert find == {"calls": 1.0, "bytes": 1000, "est_wire_bytes": round((2 * cc.CALL_WIRE_BYTES + 2000) / 2)}
    assert list(out["per_peer_per_round"])[0] == "unary DHTProtocol.rpc_find"  # the costliest first
    assert out["per_peer_per_round"]["stream x.rpc_aggregate_part"]["est_wire_bytes"] is None  # payload, not priced
    assert out["unary_est_wire_bytes_per_peer_per_round"] == find["est_wire_bytes"] + round((955 + 710) / 2)
    assert out["dht_object_calls_per_peer_per_round"] == {"dht_get p2pmodel/<id>/peers": 0.5}


def test_the_accounting_hook_is_inert_without_its_variable_and_blanks_ids_and_rounds(monkeypatch):
    monkeypatch.delenv("P2PMODEL_RPC_LOG", raising=False)
    hook = _load(BENCH / "_rpc_accounting" / "sitecustomize.py", "bench_rpc_accounting")
    assert hook._PATH is None
    assert hook._key_name("p2pmodel/" + "ab" * 32 + "/digest/17") == "p2pmodel/<id>/digest/<round>"
