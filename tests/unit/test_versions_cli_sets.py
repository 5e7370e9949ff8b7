"""``versions show`` and ``versions log`` print every named eval set's metric of a tag (``val_loss/NAME``, the
median of its votes), and ``log`` its change from the parent; real signed votes and certificates, the swarm
read replaced by the certificates themselves (no DHT)."""

import json

import pytest
from typer.testing import CliRunner

from p2pmodel.cli.app import app
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.signed import sign_message
from p2pmodel.versioning.semver import Version, next_version
from p2pmodel.versioning.tag import build_tag
from p2pmodel.versioning.votes import VOTE_KIND, make_vote

pytestmark = pytest.mark.timeout(60)
RUN, OBJ = "0123456789abcdef", "f" * 64
PEERS = ["--initial-peers", "/ip4/127.0.0.1/tcp/1"]


def _tag(ids, round_, digest, parent_cert, metrics):
    parent = parent_cert["version"] if parent_cert else ""
    version = str(next_version(Version.parse(parent) if parent else None, "patch"))
    electorate = [i.peer_id for i in ids]
    same = dict(run_id=RUN, round=round_, digest=digest, object_sha256=OBJ, parent=parent, version=version)
    same.update(metrics=metrics, verdict="accept", bump="patch", electorate=electorate, time=1000.0 + round_)
    votes = [sign_message(i, VOTE_KIND, make_vote(**same, voter=i.peer_id)) for i in ids]
    return build_tag(votes=votes, electorate=electorate, parent_cert=parent_cert)


@pytest.fixture(scope="module")
def certs():
    ids = [Identity.generate() for _ in range(3)]
    first = _tag(ids, 2, "1" * 64, None, {"val_loss": 3.0, "perplexity": 20.0, "val_loss/orig": 2.5})
    second = {"val_loss": 2.9, "perplexity": 18.0, "val_loss/orig": 2.52, "val_loss/fork": 4.0}
    return [first, _tag(ids, 4, "2" * 64, first, second)]


@pytest.fixture()
def cli(monkeypatch, certs):
    monkeypatch.setattr("p2pmodel.cli.versions._tags", lambda *a: (RUN, {"run_name": "forked"}, certs))
    runner = CliRunner()

    def run(*args: str) -> str:
        res = runner.invoke(app, ["versions", *args, *PEERS], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        return res.output

    return run


def test_show_json_carries_every_sets_metric(cli):
    out = json.loads(cli("show", "v0.1.1", "--json"))
    assert out["metrics"]["val_loss/orig"] == 2.52 and out["metrics"]["val_loss/fork"] == 4.0
    assert out["eval_sets"] == {"fork": 4.0, "orig": 2.52}
    assert all(v["metrics"]["val_loss/fork"] == 4.0 for v in out["vote_details"])


def test_show_prints_one_line_per_set(cli):
    text = cli("show", "v0.1.1")
    assert "eval set   fork: val_loss 4.0000" in text and "eval set   orig: val_loss 2.5200" in text


def test_log_gives_each_sets_change_from_the_parent(cli):
    newest, first = json.loads(cli("log", "--json"))["versions"]
    assert newest["eval_sets"]["orig"] == {"val_loss": 2.52, "change": pytest.approx(0.02)}
    assert newest["eval_sets"]["fork"] == {"val_loss": 4.0, "change": None}  # a set the parent did not have
    assert first["eval_sets"] == {"orig": {"val_loss": 2.5, "change": None}}
    text = cli("log")
    assert "eval set orig: val_loss 2.5200 (+0.0200)" in text and "eval set fork: val_loss 4.0000\n" in text
