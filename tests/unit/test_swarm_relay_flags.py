"""Relay settings (swarm.use_relay, use_auto_relay, relays): what they become on p2pd's command line through
hivemind.P2P, and that they stay out of the run id (each peer's own transport, like client_mode)."""

from pathlib import Path

import pytest
from hivemind.p2p import P2P

from p2pmodel.config import load_config
from p2pmodel.core.errors import SwarmError, UsageError
from p2pmodel.node.peer import compute_run_id
from p2pmodel.swarm import node
from p2pmodel.swarm.node import relay_options

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
BOOT = "/ip4/10.0.0.1/tcp/31337/p2p/QmWYCqZi5ahGTPbHeQ1SpE2Z9bY4CUTkD5ryAeJrSNG3U8"
RELAY = "/ip4/10.0.0.9/tcp/4001/p2p/QmSoLer265NRgSp2LA3dPaeykiS1J6DifTC88f5uVQKNAd"


def p2pd_flags(opts: dict) -> list[str]:
    """The p2pd arguments hivemind 1.1.12's P2P.create builds from these keyword arguments (its own mapping)."""
    kw = {"relay": opts["use_relay"], "autoRelay": opts["use_auto_relay"]}
    if "trusted_relays" in opts:
        kw["trustedRelays"] = ",".join(opts["trusted_relays"])
    kw.update(P2P.FORCE_REACHABILITY_MAPPING.get(opts.get("force_reachability"), {}))
    return P2P._make_process_args(**kw)


def test_defaults_relay_for_others_and_reach_relayed_peers():
    s = load_config(TINY).swarm
    assert (s.use_relay, s.use_auto_relay, s.relays) == (True, False, [])
    opts = relay_options(s.use_relay, s.use_auto_relay, s.relays, [BOOT])
    assert opts == {"use_relay": True, "use_auto_relay": False}  # p2pd: -relay=1 (its relay service comes along)
    assert p2pd_flags(opts) == ["-relay=1", "-autoRelay=0"]


def test_auto_relay_uses_the_initial_peers_and_forces_private_reachability():
    opts = relay_options(True, True, [], [BOOT])
    assert opts["trusted_relays"] == [BOOT] and opts["force_reachability"] == "private"
    assert p2pd_flags(opts) == ["-relay=1", "-autoRelay=1", f"-trustedRelays={BOOT}", "-forceReachabilityPrivate=1"]


def test_explicit_relays_win_over_initial_peers():
    assert relay_options(True, True, [RELAY], [BOOT])["trusted_relays"] == [RELAY]


@pytest.mark.parametrize(
    "args, message",
    [
        ((False, True, [], [BOOT]), "needs use_relay"),
        ((True, True, [], []), "needs a relay"),
        ((True, True, ["/ip4/10.0.0.9/tcp/4001"], [BOOT]), "lacks /p2p/"),
    ],
)
def test_impossible_relay_settings_are_usage_errors(args, message):
    with pytest.raises(UsageError, match=message):
        relay_options(*args)


def test_relays_without_auto_relay_are_ignored():
    # p2pd panics on -trustedRelays without -autoRelay=1: they are passed only with auto relay
    assert "trusted_relays" not in relay_options(True, False, [RELAY], [BOOT])


@pytest.mark.parametrize(
    "override",
    ["swarm.use_relay=false", "swarm.use_auto_relay=true", f'swarm.relays=["{RELAY}"]'],
)
def test_relay_settings_stay_out_of_the_run_id(override):
    val = "ab" * 32
    assert compute_run_id(load_config(TINY, [override]), val) == compute_run_id(load_config(TINY), val)


def test_static_relays_skip_relay_discovery(monkeypatch):
    monkeypatch.setattr(P2P, "_make_process_args", P2P._make_process_args)  # restored afterwards
    node._static_relays_only()
    node._static_relays_only()  # once per process: a second call does not wrap twice
    static = P2P._make_process_args("p2pd", autoRelay=True, trustedRelays=BOOT)
    assert static == ["p2pd", "-autoRelay=1", f"-trustedRelays={BOOT}", "-relayDiscovery=0"]
    # hivemind's identity check starts a daemon with auto relay and no relays: p2pd needs discovery there
    assert P2P._make_process_args("p2pd", autoRelay=True) == ["p2pd", "-autoRelay=1"]
    assert P2P._make_process_args("p2pd", autoRelay=False, relay=True) == ["p2pd", "-autoRelay=0", "-relay=1"]


class FakeDHT:
    """get_visible_maddrs as hivemind answers it: ValueError while p2pd has no address, then the addresses."""

    def __init__(self, answers):
        self.answers = list(answers)

    def get_visible_maddrs(self, latest=False):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is None:
            raise ValueError("No multiaddrs found for peer")
        return answer


def test_start_waits_for_the_relayed_address():
    circuit = f"{BOOT}/p2p-circuit/p2p/QmSoLer265NRgSp2LA3dPaeykiS1J6DifTC88f5uVQKNAd"
    node._wait_for_relay(FakeDHT([None, ["/ip4/10.0.0.2/tcp/1"], [circuit]]), [BOOT], 5, poll_s=0.001)


def test_no_reservation_is_a_swarm_error_naming_the_relay():
    with pytest.raises(SwarmError, match="no relay reservation .* on /ip4/10.0.0.1/tcp/31337"):
        node._wait_for_relay(FakeDHT([None]), [BOOT], 0.01, poll_s=0.001)
