"""State offers: after each commit a peer serves its state (θ_global + outer momentum, one safetensors package)
and announces it under ``p2pmodel/{run}/state``; a late joiner, or a peer that lost the commit step's majority,
downloads the state it needs from a peer offering it and verifies it before use."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

from p2pmodel.core.errors import IntegrityError, P2PModelError
from p2pmodel.core.ids import is_hex64, sha256_hex
from p2pmodel.node.state_package import pack_state, package_limit, unpack_state
from p2pmodel.swarm.blobs import fetch_blob
from p2pmodel.swarm.keys import OFFER_KIND, offers_key
from p2pmodel.swarm.records import get_signed, publish_signed

log = logging.getLogger("p2pmodel.swarm")
KEEP_PACKAGES = 3


class StateOffers:
    """The packages this peer serves (its last few commits) and the download path for the states it needs."""

    def __init__(self, dht, identity, peer, ttl_s: float, download_timeout_s: float):
        self.dht, self.identity, self.peer = dht, identity, peer
        self.ttl_s, self.download_timeout_s = ttl_s, download_timeout_s
        self.packages: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def offer(self, round_: int, in_background: Callable[[Callable[[], object]], object] = lambda job: job()) -> None:
        """Pack the state just committed and keep it for serving (now), announce it (``in_background``)."""
        peer = self.peer
        blob = pack_state(peer.names, peer.global_params, peer.outer.state_dict()["momentum_buffers"], round_)
        blob_id = sha256_hex(blob)
        self.packages[blob_id] = blob
        while len(self.packages) > KEEP_PACKAGES:
            self.packages.popitem(last=False)
        body = {
            "peer_id": self.identity.peer_id,
            "round": round_,
            "digest": peer.digest,
            "blob": blob_id,
            "size": len(blob),
            "time": time.time(),
        }
        key = offers_key(peer.run_id)
        in_background(lambda: publish_signed(self.dht, self.identity, key, OFFER_KIND, body, self.ttl_s))

    def offers(self) -> dict[str, dict]:
        """Valid offers of other peers, by signer."""
        found = get_signed(self.dht, offers_key(self.peer.run_id), OFFER_KIND)
        return {pid: o for pid, o in found.items() if pid != self.identity.peer_id and valid_offer(o)}

    def resync(self, round_: int, digest: str) -> bool:
        """Download round ``round_``'s state ``digest`` from a peer offering it; verified before use."""
        deadline = time.monotonic() + self.download_timeout_s
        tried: set[str] = {self.identity.peer_id}
        while time.monotonic() < deadline:
            offers = {p: o for p, o in self.offers().items() if o["round"] == round_ and o["digest"] == digest}
            shapes = {n: tuple(t.shape) for n, t in self.peer.global_state().items()}
            got = download_state(self.dht, offers, shapes, digest, round_, deadline - time.monotonic(), tried)
            if got is not None:
                pid, params, momentum = got
                self.peer.adopt(params, momentum)
                log.info("re-synced round %d state %s from %s", round_, digest[:12], pid)
                return True
            time.sleep(0.5)
        log.error("could not download state %s of round %d in time; keeping ours", digest[:12], round_)
        return False

    def catch_up(self) -> bool:
        """If the swarm is ahead of this peer, adopt its latest committed state (verified)."""
        picked = most_offered(list(self.offers().values()))
        if picked is None or picked[0] <= self.peer.round:
            return False
        latest, digest = picked
        log.info("swarm is at round %d (this peer: %d): downloading state %s", latest, self.peer.round, digest[:12])
        if self.resync(latest, digest):
            self.peer.round = latest
            return True
        return False


def download_state(
    dht, offers: dict[str, dict], shapes: dict[str, tuple], digest: str, round_: int, timeout_s: float, tried: set[str]
) -> tuple[str, dict, list] | None:
    """Try the state ``offers`` ({peer_id: offer}) in turn, skipping (and adding to) ``tried``: the first package
    whose bytes match the offer's blob id, whose params hash to ``digest`` and whose round is ``round_`` wins.
    → (peer_id, params by name, momentum), or None when none verified; every rejection is logged."""
    deadline = time.monotonic() + timeout_s
    untried = [pid for pid in offers if pid not in tried]
    for i, pid in enumerate(untried):
        tried.add(pid)
        offer = offers[pid]
        share = (deadline - time.monotonic()) / (len(untried) - i)  # one stalling peer cannot use all the time
        try:
            blob = fetch_blob(dht, pid, offer["blob"], package_limit(shapes), timeout_s=max(1.0, share))
            params, momentum, got_round = unpack_state(blob, shapes, digest)
            if got_round != round_:
                raise IntegrityError(f"package is of round {got_round}, offer said {round_}")
        except P2PModelError as e:
            log.warning("state download from %s rejected: %s", pid, e)
            continue
        return pid, params, momentum
    return None


def most_offered(offers: list[dict]) -> tuple[int, str] | None:
    """The (round, digest) the most peers offer; among equals the latest round, then the smallest digest.

    Each peer has one offer (its last commit), so a single key claiming some far round cannot outvote two peers
    that agree; just after a commit, when peers are split between two rounds, a joiner may take the older one
    and re-syncs at its first commit."""
    support = collections.Counter((o["round"], o["digest"]) for o in offers)
    if not support:
        return None
    return min(support, key=lambda rd: (-support[rd], -rd[0], rd[1]))


def valid_offer(o: dict) -> bool:
    return (
        isinstance(o, dict)
        and type(o.get("round")) is int
        and 0 < o["round"] < 2**63
        and is_hex64(o.get("digest"))
        and is_hex64(o.get("blob"))
        and isinstance(o.get("peer_id"), str)
    )
