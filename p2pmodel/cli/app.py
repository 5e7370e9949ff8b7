"""The ``p2pmodel`` command: typer groups wired together, and main() mapping errors to exit codes
(0 ok, 1 runtime failure, 2 bad usage/config) with one line and no traceback unless --debug."""

import sys

import typer

from p2pmodel.cli import config_cmd, demo, peer, swarm_cmd, versions
from p2pmodel.core.errors import P2PModelError

app = typer.Typer(
    help="Peer-to-peer training of one model, versioned by quorum.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(peer.app, name="peer")
app.add_typer(config_cmd.app, name="config")
app.add_typer(swarm_cmd.app, name="swarm")
app.add_typer(versions.app, name="versions")
app.command()(swarm_cmd.bootstrap)
app.command()(demo.demo)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        app(args, prog_name="p2pmodel")  # standalone: typer exits itself (usage errors → 2)
    except KeyboardInterrupt:
        sys.exit(130)
    except P2PModelError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - the last line of defence for a CLI
        if debug:
            raise
        print(f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
