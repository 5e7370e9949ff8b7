"""A peer's local HTTP status endpoint: ``GET /status`` (JSON) and ``GET /metrics`` (Prometheus text), for
operators, Docker's HEALTHCHECK and scrapers. Standard library server in a daemon thread; read-only."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("p2pmodel.status")


class PeerStatus:
    """The live numbers of one peer: updated by the round loop, read by the HTTP server."""

    def __init__(self, peer_id: str, run_id: str):
        self.started = time.time()
        self._lock = threading.Lock()
        self._data = {"peer_id": peer_id, "run_id": run_id, "state": "starting", "round": 0}
        r = self.registry = CollectorRegistry()
        self.g_round = Gauge("p2pmodel_round", "Last committed outer round", registry=r)
        self.g_val = Gauge("p2pmodel_val_loss", "Validation loss of the committed state", registry=r)
        self.g_train = Gauge("p2pmodel_train_loss", "Mean inner training loss of the last round", registry=r)
        self.g_peers = Gauge(
            "p2pmodel_peers_online", "Live peers of this run, this one included (as `swarm peers`)", registry=r
        )
        self.g_group = Gauge("p2pmodel_group_size", "Peers in the last averaging group", registry=r)
        self.c_sent = Counter("p2pmodel_bytes_sent", "Averaging payload bytes sent", registry=r)
        self.c_recv = Counter("p2pmodel_bytes_received", "Averaging payload bytes received", registry=r)
        self.c_rounds = Counter(
            "p2pmodel_rounds",
            "Committed rounds by outcome (averaged, alone, not_applied, sat_out: left to the others, node/sit_out.py)",
            ["outcome"],
            registry=r,
        )
        self.c_refused = Counter(
            "p2pmodel_refused_updates", "Updates of other peers refused (broadcast mode)", ["peer"], registry=r
        )
        self.c_resyncs = Counter(
            "p2pmodel_resyncs",
            "Rounds this peer ended holding another state than most peers, by how it reached theirs (replay: the"
            " round's object; download: the state; catch-up: the swarm's latest; failed)",
            ["how"],
            registry=r,
        )
        self.g_steps = Gauge(
            "p2pmodel_inner_steps",
            "Inner steps of the last round (fewer than train.inner_steps: a faster peer closed the round first)",
            registry=r,
        )
        self.g_sps = Gauge("p2pmodel_samples_per_second", "Inner-loop throughput", registry=r)
        self.g_wait = Gauge(
            "p2pmodel_exchange_wait_seconds",
            "How long the last round waited for its exchange (blocking: all of it; sync.overlap: what compute did"
            " not hide)",
            registry=r,
        )

    def update(self, **fields) -> None:
        with self._lock:
            self._data.update(fields)

    def on_round(self, res, peer, versions: list[str], other_peers: int) -> None:
        """After a committed round; ``other_peers`` counts the live peers of the run besides this one, and
        ``peers_online`` counts this one too, like ``p2pmodel swarm peers`` (which lists every peer)."""
        o = res.outcome
        self.g_round.set(res.round)
        if res.report is not None:  # else a round between evaluations (eval.every_rounds): the last one stands
            self.g_val.set(res.report.val_loss)
            self.update(val_loss=res.report.val_loss, val_loss_round=res.round)
        if res.stats.steps:  # else a round sat out (node/sit_out.py): the last loss stands
            self.g_train.set(res.stats.loss)
            self.update(train_loss=res.stats.loss)
        self.g_peers.set(other_peers + 1)
        self.g_group.set(o.group_size)
        self.c_sent.inc(o.bytes_sent)
        self.c_recv.inc(o.bytes_received)
        outcome = "sat_out" if o.sat_out else "not_applied" if not o.applied else "averaged" if o.averaged else "alone"
        self.c_rounds.labels(outcome).inc()
        for peer_id in o.refused:
            self.c_refused.labels(peer_id).inc()
        resync = res.agreement.resync
        if resync:
            self.c_resyncs.labels(resync).inc()
        self.g_steps.set(res.stats.steps)
        self.g_sps.set(res.stats.samples / max(res.stats.seconds, 1e-9))
        self.g_wait.set(res.wait_s)
        self.update(
            state="training",
            round=res.round,
            digest=peer.digest,
            version=versions[-1] if versions else None,
            versions=versions,
            peers_online=other_peers + 1,
            other_peers_online=other_peers,
            bytes_sent=peer.counters["bytes_sent"],
            bytes_received=peer.counters["bytes_received"],
            last_averaging={
                "averaged": o.averaged,
                "applied": o.applied,  # False: the all-reduce safety net refused the mean (aggregate/guard.py)
                "group_size": o.group_size,
                "members": o.members,
                "reason": o.reason,  # why this peer was left out of a group, when it was
                "sat_out": o.sat_out,  # it left the round to the others: its link could not keep up (node/sit_out.py)
                "exchange_wait_s": round(res.wait_s, 3),
                "refused": o.refused,  # broadcast mode: peers whose update was not used, and why
                "inner_steps": res.stats.steps,  # fewer than train.inner_steps: another peer closed the round
                "resync": resync,  # "" or how this peer reached the round's majority (node/commit.py: Agreement)
            },
        )

    def snapshot(self) -> dict:
        with self._lock:
            return {**self._data, "uptime_s": time.time() - self.started}


class StatusServer:
    """Serves a PeerStatus on host:port until close(); port 0 picks a free port (see ``.port``)."""

    def __init__(self, status: PeerStatus, host: str, port: int):
        handler = type("Handler", (_Handler,), {"status": status})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="p2pmodel-status", daemon=True)
        self.thread.start()
        log.info("status on http://%s:%d/status and /metrics", host, self.port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    status: PeerStatus

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0].rstrip("/") or "/status"
        if path == "/status":
            body, ctype = json.dumps(self.status.snapshot(), default=str).encode(), "application/json"
        elif path == "/metrics":
            body, ctype = generate_latest(self.status.registry), CONTENT_TYPE_LATEST
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # keep the peer's log clean
        log.debug(fmt, *args)
