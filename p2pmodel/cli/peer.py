"""``p2pmodel peer run``: train in rounds, alone or in a swarm, checkpointing every committed round."""

import sys
from pathlib import Path

import typer

from p2pmodel.cli.output import default_is, emit_json
from p2pmodel.config import load_config
from p2pmodel.core.logging import setup_logging

app = typer.Typer(help="Run and inspect a training peer.", no_args_is_help=True)


@app.command()
def run(
    config: Path = typer.Option(..., "--config", "-c", help="TOML config file (see configs/)."),
    set_: list[str] = typer.Option([], "--set", help="Config override, e.g. train.lr=3e-4 (repeatable)."),
    initial_peers: list[str] = typer.Option([], "--initial-peers", help="Multiaddr of a peer to join (repeatable)."),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Checkpoints and identity. " + default_is("runs/<run_name>")
    ),
    identity: Path = typer.Option(
        None, "--identity", help="Private key file. " + default_is("<data-dir>/identity.key")
    ),
    max_rounds: int = typer.Option(None, "--max-rounds", min=1, help="Stop once this round is committed."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda (overrides train.device)."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON summary line on stdout."),
    log_format: str = typer.Option(None, "--log-format", help="text or json (overrides logging.format)."),
    status_port: int = typer.Option(None, "--status-port", help="Serve /status and /metrics on this port."),
    fork: Path = typer.Option(
        None, "--fork", help="Start a new lineage from a `versions pull` or `merge` directory (model.init_from)."
    ),
):
    """Train in outer rounds of train.inner_steps steps; resume from the last committed round in --data-dir."""
    import json

    overrides = list(set_)
    if fork is not None:
        overrides.append(f"model.init_from={json.dumps(str(fork.absolute()))}")
    if device:
        overrides.append(f"train.device={device}")
    if log_format:
        overrides.append(f"logging.format={log_format}")
    if status_port is not None:
        overrides.append(f"observability.status_port={status_port}")
    if initial_peers:
        overrides.append("swarm.initial_peers=" + json.dumps(initial_peers))
    cfg = load_config(config, overrides)
    _check_maddrs(cfg.swarm)
    setup_logging(cfg.logging.level, cfg.logging.format)
    data_dir = data_dir or Path("runs") / cfg.run_name
    identity = identity or data_dir / "identity.key"
    from p2pmodel.node.runner import run_peer

    result = run_peer(
        cfg,
        data_dir,
        identity,
        max_rounds,
        progress=sys.stderr.isatty() and not as_json,
        on_round=emit_json if as_json else None,
    )
    if as_json:
        emit_json(result)
    else:
        typer.echo(
            f"round {result['round']}  val_loss {result['val_loss']:.4f}  digest {result['digest'][:12]}  "
            f"sent {result['bytes_sent']} B  received {result['bytes_received']} B"
        )


def _check_maddrs(s) -> None:
    """Every multiaddr of the config checked before run_peer: a typo exits 2 at once, leaving no data dir or
    identity key behind (the DHT, which checks them too, starts only after the dataset is built)."""
    from p2pmodel.swarm.node import parse_maddrs

    parse_maddrs(s.initial_peers, "--initial-peers (swarm.initial_peers)", need_peer_id=True)
    parse_maddrs(s.host_maddrs, "swarm.host_maddrs")
    parse_maddrs(s.announce_maddrs, "swarm.announce_maddrs")


@app.command()
def status(
    url: str = typer.Option("http://127.0.0.1:8080", "--url", help="The peer's status endpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
    timeout_s: float = typer.Option(5.0, "--timeout", min=0.1, max=3600, help="Seconds to wait for the answer."),
):
    """Show a running peer's status (exit 1 if it does not answer): round, losses, digest, version, peers."""
    import json
    import socket
    import time
    import urllib.parse
    import urllib.request

    from p2pmodel.cli.output import print_kv
    from p2pmodel.core.errors import P2PModelError, UsageError

    parts = urllib.parse.urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--url must be an http(s) URL like http://127.0.0.1:8080, got {url!r}")
    deadline, body = time.monotonic() + timeout_s, bytearray()
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=timeout_s) as r:
            while chunk := r.read1(1 << 16):  # the whole answer within --timeout, and at most 4 MiB of it
                body += chunk
                if time.monotonic() > deadline or len(body) > 4 << 20:
                    raise ValueError("answer too slow or too large")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("answer is not a JSON object")
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)  # urlopen wraps the socket error in URLError
        if isinstance(reason, ConnectionRefusedError):
            port = parts.port or (443 if parts.scheme == "https" else 80)
            raise P2PModelError(f"no peer answers at {url}: start the peer with --status-port {port}") from None
        if isinstance(reason, socket.gaierror):
            raise P2PModelError(f"no status from {url}: unknown host {parts.hostname}") from None
        raise P2PModelError(f"no status from {url}: {reason}") from None
    if as_json:
        emit_json(data)
    else:
        print_kv("peer status", {k: v for k, v in data.items() if not isinstance(v, (dict, list))})
