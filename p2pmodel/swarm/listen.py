"""Every address a node on 0.0.0.0 (or ::) can be joined through.

libp2p announces, for a wildcard listen address, only the loopback and the interface of the default route:
a second interface (a LAN next to the uplink, a VPN, a veth) is missing from what the bootstrap prints. Here
a wildcard multiaddr is expanded into one multiaddr per local interface address, with the port the daemon
really bound (a ``tcp/0`` listen address only gets its port once the daemon runs).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from collections.abc import Iterable, Sequence

WILDCARDS = {"ip4": "0.0.0.0", "ip6": "::"}


def interface_addresses() -> dict[str, list[str]]:
    """{"ip4": [...], "ip6": [...]}: the addresses of the interfaces that are up, link-local IPv6 left out
    (it needs a zone). iproute2's ``ip -j addr`` when present (it sees secondary addresses), else ioctl and
    /proc."""
    try:
        return _from_iproute2()
    except (OSError, ValueError, subprocess.SubprocessError):
        return _from_stdlib()


def _from_iproute2() -> dict[str, list[str]]:
    out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, timeout=5, check=True).stdout
    found: dict[str, list[str]] = {"ip4": [], "ip6": []}
    for link in json.loads(out):
        if "UP" not in link.get("flags", []):
            continue
        for a in link.get("addr_info", []):
            family = {"inet": "ip4", "inet6": "ip6"}.get(a.get("family"))
            if family and _usable(a.get("local", "")):
                found[family].append(a["local"])
    return found


def _from_stdlib() -> dict[str, list[str]]:
    """One IPv4 address per interface (SIOCGIFADDR) and every IPv6 address in /proc/net/if_inet6 (Linux)."""
    found: dict[str, list[str]] = {"ip4": [], "ip6": []}
    try:
        import fcntl
        import struct

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    req = struct.pack("256s", name.encode()[:15])
                    raw = fcntl.ioctl(s.fileno(), 0x8915, req)  # SIOCGIFADDR
                except OSError:  # no IPv4 address on this interface
                    continue
                found["ip4"].append(socket.inet_ntoa(raw[20:24]))
    except (ImportError, OSError):
        found["ip4"] = ["127.0.0.1"]
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                hexaddr = line.split()[0]
                found["ip6"].append(str(ipaddress.IPv6Address(bytes.fromhex(hexaddr))))
    except (OSError, ValueError, IndexError):
        pass
    for family in found:
        found[family] = [a for a in found[family] if _usable(a)]
    return found


def _usable(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return not (ip.is_link_local or ip.is_unspecified or ip.is_multicast)


def _parts(maddr: str) -> list[str]:
    return maddr.strip("/").split("/")


def expand_wildcards(
    listen: Sequence[str], announced: Sequence[str], interfaces: dict[str, list[str]] | None = None
) -> list[str]:
    """``announced`` (what the daemon reports, each ending in /p2p/<id>) plus, for every wildcard listen
    multiaddr, the same address on each local interface; routable addresses first, loopback last, no repeats.

    The port of a wildcard with port 0 is taken from an announced address of the same family and transport."""
    interfaces = interface_addresses() if interfaces is None else interfaces
    peer_id = next((_parts(m)[-1] for m in announced if "/p2p/" in m), None)
    extra: list[str] = []
    for m in listen:
        p = _parts(m)
        if len(p) < 4 or p[0] not in WILDCARDS or p[1] != WILDCARDS[p[0]]:
            continue
        family, transport, port, rest = p[0], p[2], p[3], p[4:]
        if port == "0":
            port = next(
                (q[3] for q in map(_parts, announced) if len(q) > 3 and q[0] == family and q[2] == transport), None
            )
            if port is None:
                continue
        tail = "/".join([transport, port, *rest])
        for addr in interfaces.get(family, []):
            extra.append(f"/{family}/{addr}/{tail}" + (f"/p2p/{peer_id}" if peer_id else ""))
    return _ordered([*announced, *extra])


def _ordered(maddrs: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(maddrs))
    return sorted(unique, key=lambda m: _is_loopback(m))  # stable: the daemon's order within each class


def _is_loopback(maddr: str) -> bool:
    p = _parts(maddr)
    try:
        return len(p) > 1 and ipaddress.ip_address(p[1]).is_loopback
    except ValueError:
        return False


def has_wildcard(listen: Sequence[str]) -> bool:
    """True when a listen multiaddr is 0.0.0.0 or :: (the case where announcing a public address matters)."""
    return any(len(p) > 1 and p[0] in WILDCARDS and p[1] == WILDCARDS[p[0]] for p in map(_parts, listen))
