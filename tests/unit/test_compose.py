"""peers/docker-compose.yml: parses, validates with ``docker-compose config`` where that binary exists, and every
command line it runs (and every flag its entrypoint and peers/local-swarm.sh add) exists in the CLI. No Docker
engine is needed."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main
import yaml

from p2pmodel.cli.app import app
from p2pmodel.config import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "peers" / "docker-compose.yml"
ENTRYPOINT = ROOT / "peers" / "entrypoint.sh"
LOCAL_SWARM = ROOT / "peers" / "local-swarm.sh"
WRAPPER = "p2pmodel-compose-entrypoint"  # peers/entrypoint.sh, installed under this name by the Dockerfile


def resolve(argv: list[str]):
    """Walk the click command tree of the typer app along argv: (the command reached, its path, the rest).
    Groups are recognised by their ``commands`` mapping (typer may bundle its own click)."""
    cmd = typer.main.get_command(app)
    path: list[str] = []
    args = list(argv)
    while hasattr(cmd, "commands") and args and not args[0].startswith("-"):
        sub = cmd.commands.get(args[0])
        assert sub is not None, f"`p2pmodel {' '.join(path + args[:1])}`: no such command"
        cmd, path = sub, path + [args.pop(0)]
    assert not hasattr(cmd, "commands"), f"`p2pmodel {' '.join(path)}` needs a subcommand"
    return cmd, path, args


def options(cmd) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")} | {"--help"}


def check_argv(argv: list[str]) -> None:
    """Every subcommand and --flag of ``p2pmodel ARGV`` exists, and click parses the whole line (types, values)."""
    cmd, path, args = resolve(argv)
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    missing = sorted(flags - options(cmd))
    assert not missing, f"`p2pmodel {' '.join(path)}` has no option(s) {missing}"
    cmd.make_context(" ".join(["p2pmodel", *path]), list(args))  # raises on a bad value or a missing option
    if path == ["peer", "run"]:
        check_overrides(args)


def check_overrides(args: list[str]) -> None:
    """The --config file exists in the repo (the image copies configs/) and every --set applies to it."""
    config = args[args.index("--config") + 1]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert (ROOT / config).is_file(), f"{config} is not in the repository"
    load_config(ROOT / config, sets)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service_argv(svc: dict) -> list[str]:
    """The p2pmodel argv a service runs: the image's ENTRYPOINT is p2pmodel; the wrapper passes its args on."""
    entry = svc.get("entrypoint")
    entry = entry.split() if isinstance(entry, str) else list(entry or ["p2pmodel"])
    command = svc.get("command") or []
    command = command.split() if isinstance(command, str) else [str(c) for c in command]
    assert entry and entry[0] in ("p2pmodel", WRAPPER), f"unexpected entrypoint {entry}"
    return entry[1:] + command


def test_compose_shape():
    doc = compose()
    services = doc["services"]
    assert "bootstrap" in services
    peers = [n for n in services if n != "bootstrap"]
    assert len(peers) == 3
    boot = service_argv(services["bootstrap"])
    assert boot[0] == "bootstrap" and "/ip4/0.0.0.0/tcp/31337" in boot and "/data/bootstrap.key" in boot
    data_volumes = set()
    for name in peers:
        svc = services[name]
        argv = service_argv(svc)
        assert argv[:2] == ["peer", "run"]
        assert argv[argv.index("--config") + 1] == "configs/tiny.toml"  # the embedded default
        assert svc["environment"]["BOOTSTRAP_HOST"] == "bootstrap"  # found by service name
        assert "bootstrap" in svc["depends_on"]
        vols = [v for v in svc["volumes"] if v.split(":")[1] == "/data"]
        assert len(vols) == 1, f"{name}: one identity/checkpoint volume on /data"
        data_volumes.add(vols[0].split(":")[0])
        assert argv[argv.index("--identity") + 1].startswith("/data/")
    assert len(data_volumes) == len(peers), "each peer has its own identity volume"
    assert data_volumes <= set(doc["volumes"])


@pytest.mark.parametrize("service", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_compose_commands_exist_in_cli(service):
    svc = compose()["services"][service]
    check_argv(service_argv(svc))
    test = (svc.get("healthcheck") or {}).get("test")
    if isinstance(test, list) and test[0] == "CMD" and test[1] == "p2pmodel":
        check_argv(test[2:])


def script_flags(path: Path) -> set[str]:
    code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", code))


def test_entrypoint_adds_only_existing_flags():
    """peers/entrypoint.sh adds --json to bootstrap and --initial-peers to peer run; both must exist there."""
    flags = script_flags(ENTRYPOINT)
    assert {"--json", "--initial-peers"} <= flags
    assert "--json" in options(resolve(["bootstrap"])[0])
    assert "--initial-peers" in options(resolve(["peer", "run"])[0])
    assert flags <= options(resolve(["bootstrap"])[0]) | options(resolve(["peer", "run"])[0])


def test_local_swarm_script_flags_exist():
    flags = script_flags(LOCAL_SWARM)
    known = options(resolve(["bootstrap"])[0]) | options(resolve(["peer", "run"])[0])
    assert flags and flags <= known, f"unknown flags {sorted(flags - known)}"


@pytest.mark.swarm
@pytest.mark.parametrize("script,shell", [(ENTRYPOINT, "sh"), (LOCAL_SWARM, "bash")])
def test_scripts_parse_and_are_executable(script, shell):
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
    subprocess.run([shell, "-n", str(script)], check=True, timeout=30)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(script)], check=True, timeout=60)


@pytest.mark.swarm  # starts a process: not in the fast tier
@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_docker_compose_config_validates():
    r = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
