"""Start a hivemind DHT node (or a bootstrap node) with one-line errors, not hivemind's many failure modes.

A malformed multiaddr is the user's fault (UsageError, exit 2); a swarm that cannot be reached, a daemon that
does not start or a startup past its deadline is a runtime failure (SwarmError, exit 1).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Sequence

import hivemind
from hivemind.p2p import P2P
from hivemind.utils.multiaddr import Multiaddr

from p2pmodel.core.errors import P2PModelError, SwarmError, UsageError
from p2pmodel.core.lifeline import arm_child
from p2pmodel.swarm.aio import release_p2p, run_sync
from p2pmodel.swarm.identity import Identity

logger = logging.getLogger(__name__)

DEFAULT_HOST_MADDRS = ("/ip4/0.0.0.0/tcp/0",)


def parse_maddrs(maddrs: Sequence[str] | None, what: str, need_peer_id: bool = False) -> list[str]:
    """Validate multiaddr strings; UsageError naming the first bad one."""
    if maddrs is None:
        return []
    if isinstance(maddrs, (str, bytes)):
        raise UsageError(f"{what} must be a list of multiaddrs, got a single string")
    out = []
    for text in maddrs:
        try:
            maddr = Multiaddr(str(text))
        except Exception as e:
            raise UsageError(f"invalid multiaddr in {what}: {text!r} ({e})") from None
        if need_peer_id and "p2p" not in maddr:
            raise UsageError(f"{what} entry {text!r} lacks /p2p/<peer id>")
        out.append(str(maddr))
    return out


def check_ports_free(maddrs: Sequence[str], what: str = "host multiaddrs") -> None:
    """UsageError if a fixed TCP port of ``maddrs`` has a listener already.

    p2pd binds with SO_REUSEPORT, so a second daemon on a busy port starts anyway and shares it (then fails to
    reach the swarm, or a second bootstrap answers on the same port). A plain bind, without SO_REUSEPORT, is
    refused by the kernel while another socket listens there; SO_REUSEADDR lets it through the TIME_WAIT
    connections a previous run on that port left behind.
    """
    for text in parse_maddrs(maddrs, what):
        parts = text.strip("/").split("/")
        if len(parts) < 4 or parts[0] not in ("ip4", "ip6") or parts[2] != "tcp" or parts[3] == "0":
            continue
        family = socket.AF_INET if parts[0] == "ip4" else socket.AF_INET6
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 here: p2pd reports that itself
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((parts[1], int(parts[3])))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise UsageError(f"{what} {text}: port {parts[3]} already in use") from None
                if e.errno == errno.EACCES:
                    raise UsageError(f"{what} {text}: no permission to listen on port {parts[3]}") from None


class _LinkedDHT(hivemind.DHT):
    """hivemind's DHT whose process, and the p2pd it starts, end with the process that started it
    (core/lifeline.py: SIGTERM works in it, SIGINT is left to us, and a SIGKILLed parent takes it along)."""

    def start(self) -> None:
        self._lifeline_parent = os.getpid()
        super().start()

    def run(self) -> None:  # in the DHT process
        arm_child(self._lifeline_parent)
        _static_relays_only()
        super().run()


def _static_relays_only() -> None:
    """Make p2pd use the given relays at once: with ``-trustedRelays``, also pass ``-relayDiscovery=0``.

    hivemind 1.1.12 cannot pass that flag (its ``use_relay_discovery`` does nothing) and p2pd defaults to relay
    discovery, where go-libp2p's auto-relay waits for more candidates or its boot delay: measured in network
    namespaces with one public relay, the relayed address appeared after 183 s with discovery and after ~3 s
    with static relays. Patched in the DHT's own process only, where p2pd is started."""
    make = P2P._make_process_args
    if getattr(make, "_p2pmodel_static_relays", False):
        return

    def make_args(*args, **kwargs):
        if kwargs.get("autoRelay") and kwargs.get("trustedRelays"):
            kwargs.setdefault("relayDiscovery", False)
        return make(*args, **kwargs)

    make_args._p2pmodel_static_relays = True
    P2P._make_process_args = staticmethod(make_args)


def relay_options(
    use_relay: bool = True,
    use_auto_relay: bool = False,
    relays: Sequence[str] | None = None,
    initial_peers: Sequence[str] = (),
) -> dict:
    """hivemind.P2P keyword arguments for libp2p circuit relays (p2pd's -relay, -autoRelay, -trustedRelays,
    -forceReachabilityPrivate).

    ``use_relay`` (p2pd's default, on): dial peers through ``/p2p-circuit`` addresses and serve as a relay
    for others (p2pd's relay service comes with it). ``use_auto_relay``: this peer cannot accept connections;
    it holds a reservation on a relay and announces the relayed address instead of its own public ones. The
    relays are ``relays``, else the initial peers; a relay must have a public address (go-libp2p builds relayed
    addresses only from a relay's public ones). Reachability is forced to private (the user said so): auto-relay
    announces relayed addresses only while reachability is private, and nothing waits for AutoNAT to find out.
    """
    if use_auto_relay and not use_relay:
        raise UsageError("use_auto_relay needs use_relay")
    opts: dict = {"use_relay": use_relay, "use_auto_relay": use_auto_relay}
    if use_auto_relay:
        trusted = parse_maddrs(relays, "relays", need_peer_id=True) or list(initial_peers)
        if not trusted:
            raise UsageError("use_auto_relay needs a relay: set swarm.relays or initial peers")
        opts["trusted_relays"] = trusted
        opts["force_reachability"] = "private"
    return opts


def start_dht(
    identity_path: str | os.PathLike | None = None,
    initial_peers: Sequence[str] = (),
    host_maddrs: Sequence[str] | None = DEFAULT_HOST_MADDRS,
    announce_maddrs: Sequence[str] | None = None,
    client_mode: bool = False,
    wait_timeout_s: float = 5.0,
    startup_timeout_s: float = 30.0,
    use_relay: bool = True,
    rpc_timeout_s: float | None = None,
    use_auto_relay: bool = False,
    relays: Sequence[str] | None = None,
) -> hivemind.DHT:
    """Start a DHT peer in a background process and wait until it joined the swarm.

    ``identity_path`` is created on first run (see Identity.load_or_create); None means an ephemeral PeerID.
    ``wait_timeout_s`` bounds the bootstrap ping, and each DHT RPC unless ``rpc_timeout_s`` is given. Relay
    settings: ``relay_options``. The caller owns the DHT and must call ``dht.shutdown()``.
    """
    initial_peers = parse_maddrs(initial_peers, "initial peers", need_peer_id=True)
    host_maddrs = parse_maddrs(host_maddrs, "host multiaddrs") or list(DEFAULT_HOST_MADDRS)
    announce_maddrs = parse_maddrs(announce_maddrs, "announce multiaddrs") or None
    if wait_timeout_s <= 0 or startup_timeout_s <= 0 or (rpc_timeout_s is not None and rpc_timeout_s <= 0):
        raise UsageError("wait_timeout_s, startup_timeout_s and rpc_timeout_s must be positive")
    kwargs = relay_options(use_relay, use_auto_relay, relays, initial_peers)
    check_ports_free(host_maddrs)
    if identity_path is not None:
        kwargs["identity_path"] = str(Identity.load_or_create(identity_path).path)
    try:
        dht = _LinkedDHT(
            initial_peers=initial_peers or None,
            start=False,
            host_maddrs=host_maddrs,
            announce_maddrs=announce_maddrs,
            client_mode=client_mode or use_auto_relay,  # reached only through a (capped) relay: serves no DHT requests
            wait_timeout=wait_timeout_s if rpc_timeout_s is None else rpc_timeout_s,
            bootstrap_timeout=wait_timeout_s,
            startup_timeout=startup_timeout_s,
            **kwargs,
        )
    except (TypeError, ValueError) as e:
        raise UsageError(f"bad DHT settings: {e}") from None
    started = time.monotonic()
    try:
        dht.run_in_background(await_ready=True, timeout=startup_timeout_s)
        if use_auto_relay:
            _wait_for_relay(dht, kwargs["trusted_relays"], startup_timeout_s - (time.monotonic() - started))
    except BaseException as e:
        _stop_quietly(dht)
        if isinstance(e, KeyboardInterrupt):
            raise
        if isinstance(e, P2PModelError):
            raise
        raise _normalize_start_error(e, initial_peers) from None
    return dht


def _wait_for_relay(dht: hivemind.DHT, relays: list[str], timeout_s: float, poll_s: float = 0.2) -> None:
    """Wait until p2pd announces a ``/p2p-circuit`` address (it holds a relay reservation); SwarmError if not.

    Until then a peer behind NAT cannot be reached, and its p2pd may announce no address at all (auto-relay
    announces only private own addresses and relayed ones), which hivemind reports as an error."""
    deadline = time.monotonic() + max(timeout_s, 1.0)
    while True:
        try:
            if any("p2p-circuit" in str(m) for m in dht.get_visible_maddrs(latest=True)):
                return
        except ValueError:  # hivemind: "No multiaddrs found"
            pass
        if time.monotonic() >= deadline:
            raise SwarmError(
                f"no relay reservation in {timeout_s:.0f} s on {', '.join(relays)}: a relay must be reachable, "
                "have a public address and run with swarm.use_relay=true"
            )
        time.sleep(poll_s)


def _normalize_start_error(e: BaseException, initial_peers: list[str]) -> P2PModelError:
    text = " ".join(str(e).split())
    peers = ", ".join(initial_peers) or "none"
    if isinstance(e, TimeoutError):
        return SwarmError(f"DHT did not start in time (initial peers: {peers})")
    if "bootstrap" in text or "none of the initial_peers responded" in text:
        return SwarmError(f"cannot reach any initial peer ({peers})")
    if "multiaddr" in text or isinstance(e, ValueError):
        return UsageError(f"bad multiaddr: {_tail(text)}")
    if "already taken" in text:
        return UsageError(f"this identity is already used by a running peer: {_tail(text)}")
    if "address already in use" in text.lower():
        return UsageError(f"listen address already in use: {_tail(text)}")
    return SwarmError(f"DHT failed to start: {type(e).__name__}: {_tail(text)}")


def _tail(text: str, limit: int = 200) -> str:
    """Drop p2pd's timestamp prefix and cap the length, for a one-line message."""
    if "Daemon failed to start:" in text:
        text = text.split("Daemon failed to start:", 1)[1].strip()
        parts = text.split(" ", 2)
        if len(parts) == 3 and parts[0].count("/") == 2:  # "2026/01/02 12:00:00 message"
            text = parts[2]
    return text[:limit]


def _stop_quietly(dht: hivemind.DHT, grace_s: float = 2.0) -> None:
    try:
        if dht.is_alive():
            dht.shutdown()  # hivemind: a grace period, then SIGTERM (which the process now obeys, see _LinkedDHT)
    except Exception:  # best effort on a failed start
        logger.debug("shutdown of a failed DHT raised", exc_info=True)
        if dht.is_alive():
            dht.terminate()
    if dht.is_alive():  # never leave it to multiprocessing's exit handler, which waits without a deadline
        dht.join(grace_s)
    if dht.is_alive():
        dht.kill()
        dht.join(1)


def stop_dht(dht: hivemind.DHT, timeout_s: float = 10.0, graceful: bool = True) -> None:
    """Release this process's P2P replica (blob handlers) and shut the DHT down; safe to call twice.

    ``graceful=False`` when p2pd is gone (a Ctrl-C to the group ends it): every goodbye to it would wait for an
    answer that never comes, so the DHT process is terminated at once (it ends its own children)."""
    try:
        if getattr(dht, "_p2p_replica", None) is not None:
            run_sync(release_p2p(dht), timeout_s, "closing the P2P replica")  # local: closes our sockets
    except Exception as e:
        logger.debug(f"closing the P2P replica failed: {e}")
    if not graceful and dht.is_alive():
        dht.terminate()
    _stop_quietly(dht)


def visible_maddrs(dht: hivemind.DHT, latest: bool = True) -> list[str]:
    """Multiaddrs (with /p2p/<peer id>) other peers can use as initial peers to join through this one."""
    return [str(m) for m in dht.get_visible_maddrs(latest=latest)]


def daemon_pid(dht: hivemind.DHT) -> int | None:
    """The pid of the p2pd that ``dht``'s process started (hivemind keeps it as ``node.p2p._child``)."""
    return dht.run_coroutine(_daemon_pid)


async def _daemon_pid(_dht: hivemind.DHT, node) -> int | None:
    child = getattr(node.p2p, "_child", None)
    return child.pid if child is not None else None


def peer_id_of(dht: hivemind.DHT) -> str:
    """This DHT peer's base58 PeerID string."""
    return dht.peer_id.to_base58()


def run_bootstrap(
    identity_path: str | os.PathLike | None = None,
    host_maddrs: Sequence[str] | None = DEFAULT_HOST_MADDRS,
    announce_maddrs: Sequence[str] | None = None,
) -> hivemind.DHT:
    """A DHT-only server node that others join through (``p2pmodel bootstrap``); print ``visible_maddrs``."""
    check_ports_free(host_maddrs or DEFAULT_HOST_MADDRS, "--host-maddrs")
    return start_dht(identity_path, [], host_maddrs, announce_maddrs, client_mode=False)
