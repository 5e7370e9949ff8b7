"""The first hour of a new user, the parts without processes: wildcard listen addresses expanded per interface,
hivemind's "could not find a group" as one INFO line, config typos blamed on their source with a suggestion,
the peer count of /status including the peer itself, the release cadence of configs/tiny.toml."""

from __future__ import annotations

import io
import logging
import subprocess
import tomllib
from types import SimpleNamespace

import pytest
from hivemind.averaging.partition import AllreduceException  # hivemind's logging set up first, as in a peer

from p2pmodel.config import load_config
from p2pmodel.core.errors import ConfigError
from p2pmodel.core.logging import setup_logging
from p2pmodel.node.status import PeerStatus
from p2pmodel.swarm.listen import expand_wildcards, has_wildcard, interface_addresses
from p2pmodel.testing.swarm import ROOT, TINY

PEER = "QmRWakrGjTU1Q7rkFg42AmpxGVtkFQVoEdbDK81CA8oYWa"


def test_wildcard_listen_address_is_expanded_per_interface_with_the_bound_port():
    announced = [f"/ip4/10.0.0.5/tcp/4100/p2p/{PEER}", f"/ip4/127.0.0.1/tcp/4100/p2p/{PEER}"]
    interfaces = {"ip4": ["127.0.0.1", "10.0.0.5", "192.168.7.2"], "ip6": ["::1", "2001:db8::7"]}
    got = expand_wildcards(["/ip4/0.0.0.0/tcp/0", "/ip6/::/tcp/4200"], announced, interfaces)
    assert got == [
        f"/ip4/10.0.0.5/tcp/4100/p2p/{PEER}",
        f"/ip4/192.168.7.2/tcp/4100/p2p/{PEER}",
        f"/ip6/2001:db8::7/tcp/4200/p2p/{PEER}",
        f"/ip4/127.0.0.1/tcp/4100/p2p/{PEER}",  # loopback last: the first address is the one to share
        f"/ip6/::1/tcp/4200/p2p/{PEER}",
    ]
    assert expand_wildcards(["/ip4/127.0.0.1/tcp/0"], announced[1:], interfaces) == announced[1:]
    assert has_wildcard(["/ip4/0.0.0.0/tcp/1"]) and not has_wildcard(["/ip4/127.0.0.1/tcp/1"])


@pytest.mark.swarm  # runs `ip -j addr`
def test_this_machines_interfaces_include_loopback():
    assert "127.0.0.1" in interface_addresses()["ip4"]


@pytest.fixture
def log_stream():
    """setup_logging on a private stream; the root logger is restored afterwards (pytest's handlers too)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    hm = logging.getLogger("hivemind")
    saved_hm = (hm.handlers[:], hm.level, hm.propagate)
    stream = io.StringIO()
    setup_logging("info")
    root.handlers[0].setStream(stream)
    yield stream
    root.handlers[:], root.level = saved
    hm.handlers[:], hm.level, hm.propagate = saved_hm


def _log_exception(logger: str, exc: Exception) -> None:
    try:
        raise exc
    except type(exc) as e:
        logging.getLogger(logger).exception(e)  # as hivemind's averager does


def test_no_group_error_of_a_late_joiner_becomes_one_info_line(log_stream):
    _log_exception("hivemind.averaging.averager", AllreduceException("Averaging step failed: could not find a group"))
    lines = log_stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert " I hivemind.averaging.averager: no averaging group this round" in lines[0]
    _log_exception("hivemind.averaging.averager", RuntimeError("something else broke"))
    other = log_stream.getvalue().splitlines()[1:]
    assert " E hivemind.averaging.averager: something else broke" in other[0] and "Traceback" in other[1]


@pytest.mark.parametrize(
    ("overrides", "toml", "want"),
    [
        (["train.lrr=1e-3"], None, "--set train.lrr=1e-3: train.lrr: unknown field (did you mean train.lr?)"),
        (["trian.lr=1e-3"], None, "--set trian.lr=1e-3: trian: unknown field (did you mean train?)"),
        (["train.lr=-1"], None, "--set train.lr=-1: train.lr: Input should be greater than 0"),
        ([], "[train]\nlrr = 1e-3\n", "{file}: train.lrr: unknown field (did you mean train.lr?)"),
        (["train.lr=0.1"], "[train]\nlrr = 1e-3\n", "{file}: train.lrr: unknown field (did you mean train.lr?)"),
        ([], "[train]\nzzz = 1\n", "{file}: train.zzz: unknown field"),
    ],
)
def test_config_errors_name_their_source_and_the_closest_field(tmp_path, overrides, toml, want):
    path = TINY
    if toml is not None:
        path = tmp_path / "c.toml"
        path.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    assert str(e.value) == want.format(file=path)


def test_status_counts_the_peer_itself_like_swarm_peers():
    from p2pmodel.node.exchange import ExchangeOutcome

    status = PeerStatus("me", "run")
    res = SimpleNamespace(
        round=3,
        report=SimpleNamespace(val_loss=2.0),
        stats=SimpleNamespace(loss=2.1, samples=80, seconds=1.0, steps=10),
        outcome=ExchangeOutcome(
            [], averaged=True, group_size=2, members=["me", "you"], bytes_sent=10, bytes_received=10
        ),
        agreement=SimpleNamespace(resync="replay"),
        wait_s=0.25,
    )
    peer = SimpleNamespace(digest="d" * 64, counters={"bytes_sent": 10, "bytes_received": 10})
    status.on_round(res, peer, ["v0.1.0"], 1)  # one other peer online
    snap = status.snapshot()
    assert snap["peers_online"] == 2 and snap["other_peers_online"] == 1
    assert status.g_peers._value.get() == 2
    assert snap["last_averaging"]["exchange_wait_s"] == 0.25 and status.g_wait._value.get() == 0.25
    # a round closed early by a faster peer, and how this peer re-synced, in status and metrics alike
    assert snap["last_averaging"]["inner_steps"] == 10 and status.g_steps._value.get() == 10
    assert snap["last_averaging"]["resync"] == "replay" and status.c_resyncs.labels("replay")._value.get() == 1


def test_tiny_releases_rarely_and_the_demo_brings_its_own_cadence():
    from p2pmodel.cli.demo import DEMO_RELEASE_EVERY

    assert tomllib.loads(TINY.read_text())["versioning"]["release_every"] >= 10
    assert DEMO_RELEASE_EVERY == "versioning.release_every=2"


@pytest.mark.swarm  # runs git
def test_private_keys_are_ignored_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for key in ("bootstrap.key", "anywhere/identity.key"):
        assert subprocess.run(["git", "check-ignore", "-q", key], cwd=ROOT, timeout=30).returncode == 0, key


def test_config_show_prints_toml_that_loads_back_to_the_same_config(tmp_path):
    from p2pmodel.cli.config_cmd import to_toml

    checks = 'eval.checks=[{"name": "sane", "metric": "val_loss", "max": 3}]'
    cfg = load_config(TINY, [checks, "train.lr=1e-05", 'run_name="a \\"quoted\\" name"'])
    (tmp_path / "shown.toml").write_text(to_toml(cfg.model_dump()))
    assert load_config(tmp_path / "shown.toml") == cfg
