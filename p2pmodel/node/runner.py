"""Peer lifecycle: lock the data dir, build the Peer, resume, loop over rounds off the event loop (uvloop), stop
between steps on SIGINT/SIGTERM (or when p2pd or a hivemind process dies) without touching the last committed
round, and return the run summary. Stopping: core/stopper.py; children that die with us: core/lifeline.py."""

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from p2pmodel.core.datadir_lock import lock_data_dir
from p2pmodel.core.errors import SwarmError
from p2pmodel.core.lifeline import alive
from p2pmodel.core.paths import writable_dir
from p2pmodel.core.stopper import Stopper, end_children, skip_final_gc
from p2pmodel.node.peer import Peer
from p2pmodel.node.release import Releases
from p2pmodel.node.round import RoundResult, run_round
from p2pmodel.node.run_registry import check_joinable
from p2pmodel.node.status import PeerStatus, StatusServer
from p2pmodel.node.swarm_link import SwarmLink
from p2pmodel.swarm.node import check_ports_free, daemon_pid, stop_dht

log = logging.getLogger("p2pmodel.peer")
SLOW_STEP_ENV = "P2PMODEL_TEST_SLOW_STEP_S"  # test fault: every inner step takes this many seconds longer


def _step_hook(display) -> Callable[[int, float], None] | None:
    """What runs after each inner step: the progress bar's update, and the test fault of a slower peer."""
    slow = float(os.environ.get(SLOW_STEP_ENV) or 0)
    if slow > 0:
        log.warning("TEST FAULT: every inner step sleeps %g s more (%s is set)", slow, SLOW_STEP_ENV)
    if display is None and slow <= 0:
        return None

    def on_step(step: int, loss: float) -> None:
        if display is not None:
            display.on_step(step, loss)
        if slow > 0:
            time.sleep(slow)

    return on_step


def _status_server(status: PeerStatus, host: str, port: int) -> StatusServer:
    from p2pmodel.core.errors import UsageError

    try:
        return StatusServer(status, host, port)
    except OSError as e:
        raise UsageError(f"cannot serve status on {host}:{port}: {e.strerror or e}") from None


def summary(peer: Peer, extra: dict | None = None) -> dict:
    rep = peer.last_report
    out = {
        "peer_id": peer.peer_id,
        "run_id": peer.run_id,
        "round": peer.round,
        "val_loss": rep.val_loss if rep else None,
        "perplexity": rep.perplexity if rep else None,
        "digest": peer.digest,
        "samples": peer.samples_total,
        "inner_steps": peer.trainer.step,
        **peer.counters,
    }
    out.update(extra or {})
    return out


def run_peer(
    cfg,
    data_dir: Path,
    identity_path: Path,
    max_rounds: int | None,
    progress: bool,
    on_round: Callable[[dict], None] | None = None,
) -> dict:
    """Run a peer until ``max_rounds`` is committed or a signal arrives; returns the summary dict."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # Windows
        runner = asyncio.Runner()
    stop = Stopper()
    skip_final_gc()  # seconds off every exit, a Ctrl-C's included
    try:
        with runner:
            return runner.run(_serve(cfg, data_dir, identity_path, max_rounds, progress, on_round, stop))
    finally:  # the loop took its handlers along: a second Ctrl-C while the process winds down still ends it at once
        stop.install()


async def _serve(
    cfg,
    data_dir: Path,
    identity_path: Path,
    max_rounds: int | None,
    progress: bool,
    on_round: Callable[[dict], None] | None,
    stop: Stopper,
) -> dict:
    from p2pmodel.swarm.identity import Identity

    stop.install(asyncio.get_running_loop())
    writable_dir(data_dir, "--data-dir")  # before anything starts
    lock_data_dir(data_dir)  # before the identity and the checkpoint are read: one peer per data dir
    check_ports_free(cfg.swarm.host_maddrs, "swarm.host_maddrs")
    identity = Identity.load_or_create(identity_path)
    peer = await asyncio.to_thread(Peer, cfg, data_dir, identity.peer_id)
    await asyncio.to_thread(peer.restore)
    if stop.is_set():  # a signal while the peer was being built: start nothing
        return summary(peer, {"event": "summary", "versions": []})
    status = PeerStatus(peer.peer_id, peer.run_id)
    obs = cfg.observability
    server = _status_server(status, obs.status_host, obs.status_port) if obs.status_port else None
    exchange = releases = watched = None
    try:  # once the DHT runs, whatever fails, it is shut down (a process left behind never exits)
        exchange = SwarmLink(cfg, peer, identity)  # main thread: hivemind's averager sets signal handlers
        watched = _swarm_processes(exchange)
        stop.watch(watched)  # p2pd dies with a Ctrl-C to the group: never go on alone
        log.info("listening on %s", " ".join(exchange.maddrs))
        releases = Releases(cfg, peer, exchange, data_dir)
        exchange.commit_hooks.append(releases.on_commit)
        exchange.publish_run()  # then: refuse to start beside a swarm of this run_name with other settings
        await asyncio.to_thread(
            check_joinable, exchange.dht, peer.peer_id, cfg, peer.run_id, peer.corpus.fingerprint, peer.set_fingerprints
        )
        releases.publish_index()
        status.update(
            state="ready",
            round=peer.round,
            digest=peer.digest,
            listen=exchange.maddrs,
            val_loss=peer.last_report.val_loss if peer.last_report else None,
        )
        if await asyncio.to_thread(exchange.catch_up):  # late joiner: adopt the swarm's latest state first
            await asyncio.to_thread(peer.evaluate)
            await asyncio.to_thread(peer.commit, peer.round)
        await asyncio.to_thread(releases.sync_ledger)  # the swarm's tags before our first vote
        if peer.last_report is None:
            await asyncio.to_thread(peer.evaluate)
        if on_round:  # where this peer starts: its run, round and state (a fork's genesis is the pulled digest)
            on_round(summary(peer, {"event": "start"}))
        log.info(
            "peer %s run %s starts at round %d (val_loss %.4f)",
            peer.peer_id,
            peer.run_id,
            peer.round,
            peer.last_report.val_loss,
        )
        display = _Progress(cfg.train.inner_steps) if progress else None
        on_step = _step_hook(display)
        with display or nullcontext():
            while not stop.is_set() and (max_rounds is None or peer.round < max_rounds):
                r = peer.round + 1
                if display:
                    display.start_round(r)
                result = await asyncio.to_thread(run_round, peer, exchange, r, stop.is_set, on_step)
                if result is None:
                    break
                _log_round(result, peer)
                versions = [c["version"] for c in releases.ledger.all()]
                status.on_round(result, peer, versions, len(exchange.peer_ids()))
                if on_round:
                    on_round(
                        summary(
                            peer,
                            {
                                "event": "round",
                                **({} if result.report else {"val_loss": None, "perplexity": None}),  # not evaluated
                                "train_loss": result.stats.loss if result.stats.steps else None,
                                "group_size": result.outcome.group_size,
                                "sat_out": result.outcome.sat_out,  # it left this round to the others
                                "committed_by": len(result.agreement.committed_by),
                                "commit_missing": len(result.agreement.missing),
                                "resync": result.agreement.resync,  # "" or how it reached the round's majority
                                "steps": result.stats.steps,
                                "inner_s": round(result.stats.seconds, 3),
                                "round_s": round(result.seconds, 3),
                                "exchange_wait_s": round(result.wait_s, 3),
                                "eval_s": round(result.eval_s, 3),
                                "refused": result.outcome.refused,  # broadcast: updates not used, and why
                                "applied": result.outcome.applied,  # False: the safety net refused the mean
                                "contributions": result.outcome.contributions,  # peer -> samples ({}: unknown)
                            },
                        )
                    )
        if not stop.is_set():
            await asyncio.to_thread(releases.settle, peer.round, 4 * cfg.sync.request_timeout_s + 5)
    finally:
        stop.unwatch()  # from here the swarm's processes end on purpose
        status.update(state="stopping")
        if server:
            server.close()
        if releases:
            releases.close()
        if exchange:
            await _close_swarm(exchange, (watched or {}).get("p2pd"))
    if stop.failure():
        raise SwarmError(f"{stop.failure()}; stopped at round {peer.round} (digest {peer.digest[:12]})")
    if stop.is_set():
        log.info("stopped; last committed round %d (digest %s)", peer.round, peer.digest[:12])
    versions = [c["version"] for c in releases.ledger.all()]
    return summary(peer, {"event": "summary", "versions": versions})


def _swarm_processes(exchange: SwarmLink) -> dict[str, int | None]:
    try:
        p2pd = daemon_pid(exchange.dht)
    except Exception as e:  # the DHT is already gone: the watch sees that
        log.debug("p2pd pid unknown: %s", e)
        p2pd = None
    averager = getattr(exchange, "averager", None)  # broadcast mode starts none
    return {"p2pd": p2pd, "the DHT process": exchange.dht.pid, "the averager process": averager and averager.pid}


async def _close_swarm(exchange: SwarmLink, p2pd: int | None, timeout_s: float = 6.0) -> None:
    """Close the swarm link within ``timeout_s``, then end any hivemind process still running (multiprocessing's
    exit handler would wait for it forever). When p2pd is gone (a Ctrl-C to the group ends it) nothing is said
    to it: each call would wait for an answer that never comes."""
    if (p2pd is None or alive(p2pd)) and exchange.dht.is_alive():
        closer = threading.Thread(target=exchange.close, name="p2pmodel-close", daemon=True)  # never joined at exit
        closer.start()
        await asyncio.to_thread(closer.join, timeout_s)
        if closer.is_alive():
            log.warning("closing the swarm took over %g s: ending its processes", timeout_s)
    else:
        log.info("p2pd or the DHT process is gone: ending the swarm's processes")
        await asyncio.to_thread(stop_dht, exchange.dht, 2.0, False)
    killed = await asyncio.to_thread(end_children, 1.0, True)
    if killed:
        log.debug("killed leftover processes %s", killed)


def _log_round(res: RoundResult, peer: Peer) -> None:
    o = res.outcome
    log.info(
        "round %d committed: val_loss %s train_loss %s steps %d (%.1f steps/s) group %d%s digest %s",
        res.round,
        f"{res.report.val_loss:.4f}" if res.report else "-",
        f"{res.stats.loss:.4f}" if res.stats.steps else "-",
        res.stats.steps,
        res.stats.steps / max(res.stats.seconds, 1e-9),
        o.group_size,
        f" ({o.reason})" if o.reason and not o.averaged else "",
        peer.digest[:12],
    )


class _Progress:
    """A rich progress bar for terminals: inner steps of the current round and the live loss."""

    def __init__(self, inner_steps: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.inner_steps = inner_steps
        self.bar = Progress(
            TextColumn("[bold]round {task.fields[round]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            transient=True,
        )
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def start_round(self, r: int) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task("train", total=self.inner_steps, round=r, loss="-")

    def on_step(self, step: int, loss: float) -> None:
        self.bar.update(self.task, advance=1, loss=f"{loss:.3f}")
