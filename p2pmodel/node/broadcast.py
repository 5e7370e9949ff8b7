"""The broadcast exchange (``sync.mode = "broadcast"``): no peer reduces for the others.

In hivemind's butterfly all-reduce each member averages a slice of every tensor for everyone, so one dishonest
member writes what it likes into its slice and every peer receives the same poisoned bytes. Here every member
publishes its error-compensated delta, compressed, as one content-addressed blob (served like state packages),
announced by a signed gossip "update" {round, blob id, size, samples}; every member fetches the others' blobs from
their announcers (size-bounded, sha256-checked, decoded as hostile input), screens them and aggregates them itself
(p2pmodel/aggregate: sorted peer ids, element-wise float32 ops), so peers that used the same updates commit the
same bits on any hardware. A peer's own update enters as the bytes it published, decoded, like everyone else's.

Which updates a round uses is not negotiated up front: a peer waits until every peer it expects in the round
announced (or ``wait_s``), fetches what was announced, and the commit step's majority decides; a peer that used
another set holds another digest and re-syncs, as after a partial all-reduce.

Costs: each peer downloads n − 1 updates a round (an all-reduce moves ~2 deltas), which is why this mode pairs
with the sparse codec (compress/sparse.py: ~0.046 bytes per parameter against int4's 0.56)."""

from __future__ import annotations

import collections
import logging
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from hivemind.proto import runtime_pb2

from p2pmodel.aggregate import Contribution, Verdict, aggregate, norm, screen
from p2pmodel.compress import Codec, CodecError
from p2pmodel.compress.base import HEADER, MAGIC
from p2pmodel.core import wire
from p2pmodel.core.errors import P2PModelError, UsageError, WireError
from p2pmodel.core.ids import is_hex64, sha256_hex
from p2pmodel.swarm.keys import UPDATE_KIND

log = logging.getLogger("p2pmodel.broadcast")
ROUNDS_AHEAD = 4  # updates kept for rounds this close to the last commit (as pace.py's "ready")
MAX_UPDATES_PER_ROUND = 1024
KEEP_SERVED = 3  # own update blobs served (a slow fetcher may ask for one after this peer moved on)
FETCH_WORKERS = 8
POLL_S = 0.05

# Test-only (tests/, benchmarks): this peer forges its update. Never set by any config; the peer says so loudly.
ATTACK_ENV = "P2PMODEL_TEST_ATTACK"
# sign flip x 4; x 100; Gaussian noise of the update's own norm; the previous round's update again; an update
# announced and never served; a NaN where the codec keeps its first float (no codec encodes one: the bytes are
# forged); "a little is enough" (1902.06156): per coordinate, the honest mean minus ALIE_Z honest standard
# deviations, from the others' updates of the round, fetched before this peer publishes its own
ATTACKS = ("flip4", "scale100", "noise", "replay", "silent", "nan", "alie")
ALIE_Z = 1.0  # the paper's z_max for n = 4, f = 1 is 0 (the mean itself): a fixed z = 1 is the usual benchmark

Fetch = Callable[[str, str, int, float], bytes]  # (peer_id, blob id, max bytes, timeout s) -> bytes


def update_limit(shapes: Sequence[tuple[int, ...]]) -> int:
    """The most bytes an update of these shapes may take: fp32 values plus each tensor's framing."""
    return sum(4 * max(1, math.prod(s)) + 4096 for s in shapes) + 4096


def pack_update(run_id: str, round_: int, codec: Codec, tensors: Sequence[torch.Tensor]) -> bytes:
    return wire.pack({"run_id": run_id, "round": round_, "tensors": [codec.encode(t) for t in tensors]})


def unpack_update(
    blob: bytes, run_id: str, round_: int, codec: Codec, shapes: Sequence[tuple[int, ...]]
) -> list[torch.Tensor]:
    """An update blob as tensors of ``shapes``; WireError / CodecError on anything else (another run or round
    included: a blob announced for round r must say round r)."""
    body = wire.unpack(blob, update_limit(shapes))
    if not isinstance(body, dict) or set(body) != {"run_id", "round", "tensors"}:
        raise WireError("malformed update")
    if body["run_id"] != run_id or body["round"] != round_:
        raise WireError(f"an update of run {str(body['run_id'])[:16]} round {body['round']!r}, not round {round_}")
    parts = body["tensors"]
    if not isinstance(parts, list) or len(parts) != len(shapes) or not all(isinstance(p, bytes) for p in parts):
        raise WireError("malformed update tensors")
    out = []
    for data, shape in zip(parts, shapes, strict=True):
        t = codec.decode(data).to(torch.float32)
        if tuple(t.shape) != tuple(shape):
            raise CodecError(f"a tensor of shape {tuple(t.shape)}, expected {tuple(shape)}")
        out.append(t)
    return out


@dataclass
class BroadcastResult:
    mean: list[torch.Tensor]
    own: list[torch.Tensor]  # this peer's update as published (decoded): the error-feedback reference
    members: list[str]  # the peers whose updates were used, sorted
    samples: dict[str, int] = field(default_factory=dict)  # those peers' announced sample counts
    verdicts: list[Verdict] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0

    @property
    def refused(self) -> dict[str, str]:
        return {v.peer_id: v.reason for v in self.verdicts if not v.accepted}


class UpdateBox:
    """Announced updates by round, only for rounds just ahead of the last commit (bounded: see pace.py)."""

    def __init__(self):
        self._by_round: dict[int, dict[str, dict]] = {}
        self._lock = threading.Lock()

    def add(self, signer: str, body: dict, committed: int) -> bool:
        r = body["round"]
        with self._lock:
            for old in [x for x in self._by_round if x <= committed]:
                del self._by_round[old]
            if not committed < r <= committed + ROUNDS_AHEAD:
                return committed - ROUNDS_AHEAD < r <= committed + ROUNDS_AHEAD  # pass on, do not keep
            box = self._by_round.setdefault(r, {})
            if signer not in box and len(box) >= MAX_UPDATES_PER_ROUND:
                return False
            box.setdefault(signer, body)  # the first announcement of a round counts: no swapping it later
        return True

    def get(self, round_: int) -> dict[str, dict]:
        with self._lock:
            return dict(self._by_round.get(round_, {}))


def valid_update(body: dict, run_id: str, limit: int) -> bool:
    return (
        isinstance(body, dict)
        and body.get("run_id") == run_id
        and type(body.get("round")) is int
        and 0 < body["round"] < 2**63
        and is_hex64(body.get("blob"))
        and type(body.get("size")) is int
        and 0 < body["size"] <= limit
        and type(body.get("samples")) is int
        and 0 < body["samples"] < 2**40
    )


class Broadcast:
    """Owns the "update" gossip of one run and the update blobs this peer serves (``serve``, for the blob server).

    ``fetch`` downloads a blob from a peer (node wiring: swarm/blobs.fetch_blob over the run's DHT);
    ``committed()`` is this peer's last committed round."""

    def __init__(
        self,
        gossip,
        identity,
        run_id: str,
        codec: Codec,
        shapes: Sequence[tuple[int, ...]],
        fetch: Fetch,
        method: str,
        committed: Callable[[], int],
        max_norm_ratio: float = 4.0,
    ):
        self.gossip, self.identity, self.run_id, self.codec = gossip, identity, run_id, codec
        self.shapes = [tuple(s) for s in shapes]
        self.fetch, self.method, self._committed = fetch, method, committed
        self.max_norm_ratio = max_norm_ratio
        self.limit = update_limit(self.shapes)
        self.box = UpdateBox()
        self._served: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._served_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(FETCH_WORKERS, thread_name_prefix="p2pmodel-fetch")
        self.attack = os.environ.get(ATTACK_ENV) or None
        if self.attack is not None:
            if self.attack not in ATTACKS:
                raise UsageError(f"{ATTACK_ENV}={self.attack!r}: one of {', '.join(ATTACKS)}")
            log.warning("TEST ATTACK %s: this peer forges its updates (%s is set)", self.attack, ATTACK_ENV)
        gossip.subscribe(UPDATE_KIND, self._on_update, direct=True)

    def _on_update(self, msg) -> bool:
        if not valid_update(msg.body, self.run_id, self.limit):
            return False
        return self.box.add(msg.signer, msg.body, self._committed())

    def serve(self, blob_id: str) -> bytes | None:
        with self._served_lock:
            return self._served.get(blob_id)

    def exchange(
        self, round_: int, sent: Sequence[torch.Tensor], samples: int, expected: set[str], wait_s: float, fetch_s: float
    ) -> BroadcastResult:
        """Publish this peer's update of ``round_`` (``sent``: the compensated delta), wait up to ``wait_s`` for
        the updates of the ``expected`` peers, fetch every announced one (``fetch_s`` in all) and aggregate."""
        me = self.identity.peer_id
        honest = sent
        if self.attack == "alie":
            sent = self._alie(round_, sent, expected, wait_s / 2, fetch_s)
        elif self.attack is not None:
            sent = self._forge(sent)
        if self.attack == "nan":  # forged bytes no codec decodes: this peer's own view is its honest update
            blob, own = self._nan_blob(round_, sent), self._decoded(honest, round_)
        else:
            blob = pack_update(self.run_id, round_, self.codec, sent)
            own = unpack_update(blob, self.run_id, round_, self.codec, self.shapes)
        # error feedback follows the update this peer would have sent: an attacker's forgery does not compound
        reference = own if sent is honest else self._decoded(honest, round_)
        blob_id = sha256_hex(blob)
        with self._served_lock:
            if self.attack != "silent":
                self._served[blob_id] = blob
            while len(self._served) > KEEP_SERVED:
                self._served.popitem(last=False)
        body = {"run_id": self.run_id, "round": round_, "blob": blob_id, "size": len(blob), "samples": samples}
        try:
            self.gossip.publish(UPDATE_KIND, body)
        except P2PModelError as e:  # the others go without ours (anti-entropy may still bring it); we use theirs
            log.warning("round %d: could not announce this peer's update: %s", round_, e)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not expected <= set(self.box.get(round_)):
            time.sleep(POLL_S)
        announced = {p: b for p, b in self.box.get(round_).items() if p != me}
        jobs = {p: self._pool.submit(self._fetch_one, p, b, round_, fetch_s) for p, b in sorted(announced.items())}
        contributions = [Contribution(me, own, samples)]
        verdicts: list[Verdict] = []
        received = 0
        for peer, job in jobs.items():
            try:
                tensors, size = job.result()
            except Exception as e:  # hostile bytes: unreachable, too big, corrupt, undecodable: refused, named
                reason = " ".join(str(e).split())[:160]
                verdicts.append(Verdict(peer, False, f"fetch: {reason}"))
                continue
            received += size
            contributions.append(Contribution(peer, tensors, announced[peer]["samples"]))
        accepted, screened = screen(contributions, self.shapes, self.max_norm_ratio)
        verdicts = sorted(verdicts + screened, key=lambda v: v.peer_id)
        for v in verdicts:
            if not v.accepted:
                log.warning("round %d: update of %s refused: %s", round_, v.peer_id, v.reason)
        mean = aggregate(accepted, self.method) if accepted else [t.clone() for t in own]
        members = sorted(c.peer_id for c in accepted)
        samples = {c.peer_id: c.samples for c in accepted}
        sent_bytes = len(blob) * max(0, len(members) - 1)
        return BroadcastResult(mean, reference, members, samples, verdicts, sent_bytes, received)

    def _decoded(self, tensors: Sequence[torch.Tensor], round_: int) -> list[torch.Tensor]:
        blob = pack_update(self.run_id, round_, self.codec, tensors)
        return unpack_update(blob, self.run_id, round_, self.codec, self.shapes)

    def _forge(self, sent: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The test-only attacks (ATTACKS)."""
        if self.attack in ("flip4", "scale100"):
            return [t * (-4.0 if self.attack == "flip4" else 100.0) for t in sent]
        if self.attack == "noise":
            size = norm(sent) / max(1, sum(t.numel() for t in sent)) ** 0.5
            return [torch.randn(t.shape) * size for t in sent]
        if self.attack == "replay":
            previous, self._previous = getattr(self, "_previous", None), [t.clone() for t in sent]
            return previous if previous is not None else list(sent)
        return list(sent)

    def _nan_blob(self, round_: int, sent: Sequence[torch.Tensor]) -> bytes:
        """The ``nan`` attack: ``sent`` encoded, then a NaN written over the first tensor's first float (its first
        scale, after the codec header; the first value for the float codecs)."""
        first = runtime_pb2.Tensor.FromString(self.codec.encode(sent[0]))
        buffer = bytearray(first.buffer)
        at = HEADER.size if buffer[:4] == MAGIC else 0
        buffer[at : at + 4] = struct.pack("<f", float("nan"))
        first.buffer = bytes(buffer)
        tensors = [first.SerializeToString(), *(self.codec.encode(t) for t in sent[1:])]
        return wire.pack({"run_id": self.run_id, "round": round_, "tensors": tensors})

    def _alie(
        self, round_: int, sent: Sequence[torch.Tensor], expected: set[str], wait_s: float, fetch_s: float
    ) -> list[torch.Tensor]:
        """The ``alie`` attack: the honest updates of the round (the others' as announced, this peer's own) →
        per coordinate mean − ALIE_Z × standard deviation. Without any other update yet: this peer's own."""
        deadline = time.monotonic() + wait_s
        others = expected - {self.identity.peer_id}
        while time.monotonic() < deadline and not others <= set(self.box.get(round_)):
            time.sleep(POLL_S)
        updates = [list(sent)]
        for peer, body in sorted(self.box.get(round_).items()):
            if peer != self.identity.peer_id:
                try:
                    updates.append(self._fetch_one(peer, body, round_, fetch_s)[0])
                except Exception as e:
                    log.debug("alie: no update from %s: %s", peer, e)
        if len(updates) < 2:
            return list(sent)
        out = []
        for parts in zip(*updates, strict=True):
            stacked = torch.stack(parts)
            out.append(stacked.mean(0) - ALIE_Z * stacked.std(0))
        return out

    def _fetch_one(self, peer: str, body: dict, round_: int, timeout_s: float) -> tuple[list[torch.Tensor], int]:
        blob = self.fetch(peer, body["blob"], min(body["size"], self.limit), timeout_s)
        if len(blob) != body["size"]:
            raise WireError(f"the update is {len(blob)} bytes, its announcement said {body['size']}")
        return unpack_update(blob, self.run_id, round_, self.codec, self.shapes), len(blob)

    def close(self) -> None:
        self.gossip.unsubscribe(UPDATE_KIND)
        self._pool.shutdown(wait=False, cancel_futures=True)
