"""Every command's --help shows its defaults: ``[default: ...]`` written in a help text is rich markup unless
escaped, and used to vanish (``--data-dir  Checkpoints and identity .``)."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from p2pmodel.cli.app import app

WANT = {
    "peer run": ["[default: runs/<run_name>]", "[default: <data-dir>/identity.key]"],
    "demo": ["[default: a temp dir]", "[default: 3]"],
    "bootstrap": ["[default: runs/bootstrap/identity.key]", "[default: /ip4/0.0.0.0/tcp/31337]"],
    "swarm peers": ["[default: the run of --config, else the one online]"],
    "versions list": ["[default: the only run online]", "[default: any member of the tag's electorate]"],
    "versions propose": ["[default: a throwaway key]"],
}


def _commands(group, prefix: str = ""):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (typer may vendor its own click: no isinstance)
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


COMMANDS = dict(_commands(typer.main.get_command(app)))


def _help(command: str) -> str:
    res = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert res.exit_code == 0, res.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", res.output).split())  # one line, box drawing gone


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_every_default(command):
    text = _help(command)
    for want in WANT.get(command, []):
        assert want in text, (command, want, text)
    for param in COMMANDS[command].params:  # a help text written with [default: ...] keeps it
        written = re.search(r"\[default: [^\]]+\]", param.help or "")
        if written:
            assert written.group(0).replace("\\", "") in text, (command, param.name, text)
    assert " . " not in text and not re.search(r"\w \.", text), text  # what an eaten "[...]" leaves behind


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_says_what_it_does(command):
    bare = [p.opts[0] for p in COMMANDS[command].params if p.param_type_name == "option" and not p.help]
    assert bare == [], f"{command}: options without help: {bare}"


def test_every_command_group_is_covered():
    assert set(WANT) <= set(COMMANDS)
