"""``p2pmodel bootstrap`` (a DHT-only node others join through) and ``p2pmodel swarm peers`` (who is online)."""

from pathlib import Path

import typer
from rich.table import Table

from p2pmodel.cli.output import default_is, emit_json, print_table
from p2pmodel.core.logging import setup_logging

app = typer.Typer(help="Inspect a swarm.", no_args_is_help=True)


def bootstrap(
    host_maddrs: list[str] = typer.Option(["/ip4/0.0.0.0/tcp/31337"], "--host-maddrs", help="Listen multiaddrs."),
    announce_maddrs: list[str] = typer.Option([], "--announce-maddrs", help="Public multiaddrs to advertise."),
    identity: Path = typer.Option(
        Path("runs/bootstrap/identity.key"), "--identity", help="Private key file (created if absent, mode 0400)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the multiaddrs as one JSON line."),
):
    """Run a DHT-only node and print the multiaddrs peers join with (--initial-peers). Stops on Ctrl-C/SIGTERM."""
    from p2pmodel.core.errors import SwarmError
    from p2pmodel.core.lifeline import alive
    from p2pmodel.core.stopper import Stopper, skip_final_gc
    from p2pmodel.swarm.listen import expand_wildcards, has_wildcard
    from p2pmodel.swarm.node import daemon_pid, run_bootstrap, stop_dht, visible_maddrs

    setup_logging()
    stop = Stopper()  # Ctrl-C/SIGTERM stop it, a second one at once; so does p2pd dying (a Ctrl-C reaches it too)
    stop.install()
    skip_final_gc()
    dht = run_bootstrap(identity, host_maddrs, announce_maddrs or None)
    p2pd = None
    try:
        p2pd = daemon_pid(dht)
        stop.watch({"p2pd": p2pd, "the DHT process": dht.pid})
        maddrs = expand_wildcards(host_maddrs, visible_maddrs(dht))
        if as_json:
            emit_json({"peer_id": dht.peer_id.to_base58(), "maddrs": maddrs})
        else:
            typer.echo("join this swarm with one of:")
            for m in maddrs:
                typer.echo(f"  --initial-peers {m}")
        if has_wildcard(host_maddrs) and not announce_maddrs:
            typer.echo(
                "peers outside these networks (NAT, cloud): restart with --announce-maddrs /ip4/PUBLIC_IP/tcp/PORT",
                err=True,
            )
        stop.wait()
    finally:
        stop.unwatch()
        stop_dht(dht, graceful=p2pd is not None and alive(p2pd))  # a Ctrl-C ended p2pd too: no goodbyes to it
    if stop.failure():
        raise SwarmError(f"{stop.failure()}; the bootstrap node stopped")


@app.command()
def peers(
    initial_peers: list[str] = typer.Option(..., "--initial-peers", help="Multiaddr of any swarm member."),
    run_id: str = typer.Option(
        None, "--run-id", help="Run to list. " + default_is("the run of --config, else the one online")
    ),
    config: Path = typer.Option(None, "--config", help="Config whose run to list."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """List the peers of a run that are online: round, throughput, digest, addresses."""
    from p2pmodel.node.light import light_client, pick_run, resolve_run_id
    from p2pmodel.swarm.records import list_peer_records

    setup_logging("warning")
    rid = run_id or (resolve_run_id(config) if config else None)  # a bad config fails before joining
    with light_client(initial_peers) as dht:
        rid = rid or pick_run(dht, None)[0]  # the run registered online (several: asks for --run-id)
        records = list_peer_records(dht, rid)
    if as_json:
        emit_json({"run_id": rid, "peers": records})
        return
    table = Table(title=f"run {rid}: {len(records)} peer(s) online")
    for col in ("peer", "round", "samples/s", "digest", "addresses"):
        table.add_column(col, overflow="fold")  # ids and multiaddrs are never cut (piped: never wrapped either)
    for r in records:
        table.add_row(
            r["peer_id"], str(r["round"]), f"{r['samples_per_s']:.1f}", r["digest"][:12], "\n".join(r["addrs"] or [])
        )
    print_table(table)
