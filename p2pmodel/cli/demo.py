"""``p2pmodel demo``: a local swarm on the embedded default — a bootstrap node and N peers as separate
processes on 127.0.0.1 — with live progress and a closing table."""

import tempfile
import time
from pathlib import Path

import typer
from rich.live import Live
from rich.table import Table

from p2pmodel.cli.output import console, default_is, emit_json, print_table
from p2pmodel.core.errors import P2PModelError
from p2pmodel.core.paths import writable_dir

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
DEMO_RELEASE_EVERY = "versioning.release_every=2"  # a version every 2 rounds: the demo shows tags in minutes


def _table(swarm, title: str) -> Table:
    t = Table(title=title)
    for col in ("peer", "round", "val loss", "digest", "group", "sent", "received", "state"):
        t.add_column(col)
    for name, p in swarm.peers.items():
        e = p.last or {}
        rounds = p.rounds()
        group = rounds[-1].get("group_size", "-") if rounds else "-"
        state = "running" if p.proc.poll() is None else f"exit {p.proc.returncode}"
        t.add_row(
            name,
            str(e.get("round", "-")),
            f"{e['val_loss']:.4f}" if e.get("val_loss") else "-",
            (e.get("digest") or "")[:12],
            str(group),
            _bytes(e.get("bytes_sent")),
            _bytes(e.get("bytes_received")),
            state,
        )
    return t


def _bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _tags(root: Path, peers) -> list[dict]:
    """The tags in the peers' ledgers (each verified when it was appended), merged by version."""
    from p2pmodel.versioning.ledger import Ledger

    found: dict[str, dict] = {}
    for name in peers:
        path = root / name / "ledger.bin"
        if path.exists():
            for c in Ledger(path).all():
                found.setdefault(
                    c["version"],
                    {
                        "version": c["version"],
                        "digest": c["digest"],
                        "round": c["round"],
                        "val_loss": c["metrics"].get("val_loss"),
                        "votes": f"{len(c['votes'])}/{len(c['electorate'])}",
                    },
                )
    return [found[v] for v in sorted(found, key=lambda v: tuple(int(x) for x in v.lstrip("v").split(".")))]


def demo(
    peers: int = typer.Option(3, "--peers", min=1, max=16, help="Peer processes to start."),
    rounds: int = typer.Option(4, "--rounds", min=1, help="Outer rounds to run."),
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", help="Config for every peer."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help=f"Config override for every peer (repeatable); the demo adds {DEMO_RELEASE_EVERY} before yours.",
    ),
    workdir: Path = typer.Option(None, "--workdir", help="Keep data and logs here. " + default_is("a temp dir")),
    as_json: bool = typer.Option(False, "--json", help="Print the final state as one JSON line."),
):
    """Run a local swarm on 127.0.0.1 until every peer committed --rounds rounds, then print the results."""
    from p2pmodel.config import load_config
    from p2pmodel.node.launch import LocalSwarm

    overrides = [DEMO_RELEASE_EVERY, *set_]  # tags within the demo's few rounds; a --set of the user wins
    load_config(config, overrides)  # a bad config fails here, once, with exit code 2
    if workdir:
        writable_dir(workdir, "--workdir")
    tmp = None if workdir else tempfile.TemporaryDirectory(prefix="p2pmodel-demo-")
    root = workdir or Path(tmp.name)
    err = console(stderr=True)
    try:
        with LocalSwarm(root, config, overrides) as swarm:
            maddr = swarm.start_bootstrap()
            err.print(f"bootstrap: {maddr}", soft_wrap=True, highlight=False)  # one line, whole, to copy
            for i in range(peers):
                swarm.start_peer(f"peer{i + 1}", max_rounds=rounds)
            _watch(swarm, err, as_json)
            failed = {n: _last_error(p) for n, p in swarm.peers.items() if p.proc.returncode != 0}
            result = {n: p.last for n, p in swarm.peers.items()}
            digests = {(e or {}).get("digest") for e in result.values()}
            tags = _tags(root, swarm.peers)
    finally:
        if tmp is not None:
            tmp.cleanup()
    same = len(digests) == 1 and None not in digests
    if as_json:
        emit_json({"peers": result, "same_digest": same, "bootstrap": maddr, "versions": tags})
    else:
        typer.echo(f"\n{len(result)} peers, {'one state digest' if same else 'not one state digest'}")
        table = Table(title="tagged versions (quorum of signed votes)")
        for col in ("version", "digest", "round", "val loss", "votes"):
            table.add_column(col)
        for t in tags:
            table.add_row(t["version"], t["digest"][:12], str(t["round"]), f"{t['val_loss']:.4f}", t["votes"])
        if tags:
            print_table(table)
        else:
            typer.echo("no version tagged")
    if failed:
        name, why = next(iter(failed.items()))
        raise P2PModelError(f"{len(failed)} of {len(result)} peers failed; {name}: {why}")


def _watch(swarm, err, as_json: bool) -> None:
    """Until every peer exited: a live table on a terminal; otherwise (piped, CI) one line per committed round
    and the final table once, so nothing is redrawn or glued to what follows."""

    def running() -> bool:
        return any(p.proc.poll() is None for p in swarm.peers.values())

    if err.is_terminal:
        with Live(_table(swarm, "p2pmodel demo"), console=err, refresh_per_second=2, transient=as_json) as live:
            while running():
                live.update(_table(swarm, "p2pmodel demo"))
                time.sleep(0.5)
            live.update(_table(swarm, "p2pmodel demo: done"))
        return
    seen = {name: 0 for name in swarm.peers}
    while True:
        alive = running()
        for name, p in swarm.peers.items():
            for e in p.rounds()[seen[name] :]:
                err.print(
                    f"{name} round {e['round']} val_loss {e['val_loss']:.4f} group {e.get('group_size', '-')} "
                    f"digest {e['digest'][:12]}",
                    highlight=False,
                )
                seen[name] += 1
        if not alive:
            break
        time.sleep(0.5)
    if not as_json:
        err.print(_table(swarm, "p2pmodel demo: done"))


def _last_error(peer) -> str:
    """The peer's own one-line error, else its exit code."""
    lines = [x for x in peer.stderr_tail(50).splitlines() if x.startswith("error:")]
    return lines[-1].removeprefix("error: ") if lines else f"exited with code {peer.proc.returncode}"
