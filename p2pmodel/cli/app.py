"""The ``p2pmodel`` command: typer groups wired together, and main() mapping errors to exit codes
(0 ok, 1 runtime failure, 2 bad usage/config) with one line and no traceback unless --debug."""

import sys
import traceback

import typer

from p2pmodel.cli import config_cmd, demo, peer, swarm_cmd, versions
from p2pmodel.core.errors import P2PModelError

_click_errors = sys.modules[typer.BadParameter.__module__]  # click's exceptions (newer typer vendors click)
ClickException = _click_errors.ClickException
NoArgsIsHelpError = getattr(_click_errors, "NoArgsIsHelpError", ())  # click >= 8.2

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
        code = app(args, prog_name="p2pmodel", standalone_mode=False)  # errors come here, not to typer's box
    except NoArgsIsHelpError as e:  # a bare group: its help
        typer.echo(e.ctx.get_help())
        sys.exit(2)
    except ClickException as e:  # bad flags, values, commands: one line, exit 2
        if debug:
            traceback.print_exc()
        print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    except P2PModelError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - the last line of defence for a CLI
        if debug:
            raise
        print(f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(n) and --help come back as their exit code
