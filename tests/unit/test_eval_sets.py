"""Named eval sets (``eval.sets``), the tests of a model: the config refuses bad and duplicate names in one line,
``judge`` rejects a candidate that regresses on any set beyond that set's tolerance (whatever the others do), a
set the parent lacks is no regression, the run id covers each set's data and tolerance (and a run without sets
keeps the id it had), and evaluating a state twice gives the same per-set metrics."""

import math
from pathlib import Path

import pytest
import torch

from p2pmodel.config import load_config
from p2pmodel.config.schema import MAX_EVAL_SETS
from p2pmodel.core.errors import ConfigError, DataError
from p2pmodel.eval import EvalReport, evaluate
from p2pmodel.eval.sets import load_eval_sets, set_fingerprints
from p2pmodel.eval.suite import judge, metrics_of
from p2pmodel.models import build_model
from p2pmodel.node.peer import compute_run_id
from p2pmodel.node.run_registry import RUN_RECORD_FIELDS, run_record
from p2pmodel.swarm.identity import Identity
from p2pmodel.swarm.keys import RUN_KIND
from p2pmodel.swarm.records import MAX_RECORD_BYTES, check_schema
from p2pmodel.swarm.signed import sign_message
from p2pmodel.versioning.votes import MAX_METRIC_NAME, check_metrics

pytestmark = pytest.mark.timeout(120)
TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
VAL = "ab" * 32


def with_sets(*sets: dict, extra=()):
    """tiny.toml with ``eval.sets`` (a JSON override, as ``--set eval.sets=[...]`` gives it)."""
    import json

    return load_config(TINY, [f"eval.sets={json.dumps(list(sets))}", *extra])


def a_set(name: str, **kw) -> dict:
    return {"name": name, "data": {"source": "text", "paths": [f"/data/{name}/*.txt"]}, **kw}


# --- config ------------------------------------------------------------------------------------------------
def test_sets_load_from_toml_with_the_default_tolerance_filled_in(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(
        '[versioning]\nregression_tolerance = 0.02\n\n[[eval.sets]]\nname = "orig"\n[eval.sets.data]\n'
        'source = "text"\npaths = ["/o/*.txt"]\n\n[[eval.sets]]\nname = "fork_2"\nbatches = 3\ntolerance = 0.0\n'
        '[eval.sets.data]\nsource = "bin"\npaths = ["/f"]\n'
    )
    cfg = load_config(p)
    assert [(s.name, s.batches, s.data.source) for s in cfg.eval.sets] == [("orig", 8, "text"), ("fork_2", 3, "bin")]
    assert cfg.set_tolerances() == {"orig": 0.02, "fork_2": 0.0}
    assert load_config(None).eval.sets == []  # the default: none


@pytest.mark.parametrize("bad", ["Orig", "1st", "a-b", "a.b", "a b", "", "x" * 33, "é"])
def test_a_bad_set_name_is_one_line_naming_the_field(bad):
    with pytest.raises(ConfigError) as e:
        with_sets(a_set("good"), a_set(bad))
    msg = str(e.value)
    assert "\n" not in msg and "eval.sets.1.name" in msg, msg


def test_duplicate_set_names_are_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        with_sets(a_set("orig"), a_set("fork"), a_set("orig", batches=2))
    msg = str(e.value)
    assert "\n" not in msg and "eval.sets" in msg and "duplicate name 'orig'" in msg, msg


@pytest.mark.parametrize(
    "sets, field",
    [
        ([a_set("x", tolerance=1.5)], "eval.sets.0.tolerance"),
        ([a_set("x", batches=0)], "eval.sets.0.batches"),
        ([{"name": "x"}], "eval.sets.0.data"),  # a set is its own corpus: no default
        ([a_set("x", extra=1)], "eval.sets.0.extra"),
        ([a_set(f"s{i}") for i in range(MAX_EVAL_SETS + 1)], "eval.sets"),
    ],
)
def test_other_bad_sets_name_the_field(sets, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        with_sets(*sets)


# --- judge ---------------------------------------------------------------------------------------------------
def report(val_loss: float, **sets: float) -> EvalReport:
    return EvalReport(val_loss=val_loss, perplexity=math.exp(val_loss), tokens=1, digest="0" * 64, sets=sets)


PARENT = {"val_loss": 3.0, "perplexity": math.exp(3.0), "val_loss/orig": 2.0, "val_loss/fork": 4.0}
TOLS = {"orig": 0.01, "fork": 0.05}


def test_one_set_regressing_rejects_even_if_val_loss_and_the_other_set_improve():
    verdict, reasons = judge(report(2.5, orig=2.03, fork=3.0), PARENT, 0.01, [], TOLS)
    assert verdict == "reject"
    assert len(reasons) == 1 and "val_loss/orig 2.0300 > parent's 2.0000" in reasons[0], reasons


def test_within_each_sets_own_tolerance_accepts():
    # orig +0.9 % (tolerance 1 %), fork +4.9 % (5 %): both within, though fork's rise is beyond val_loss's 1 %
    assert judge(report(3.0, orig=2.018, fork=4.196), PARENT, 0.01, [], TOLS) == ("accept", [])
    verdict, reasons = judge(report(3.0, orig=2.018, fork=4.21), PARENT, 0.01, [], TOLS)
    assert verdict == "reject" and "val_loss/fork" in reasons[0], reasons


def test_a_set_the_parent_lacks_is_no_regression():
    parent = {"val_loss": 3.0, "val_loss/orig": 2.0}  # tagged before "fork" was added (or by a MAJOR-free run)
    assert judge(report(3.0, orig=2.0, fork=99.0), parent, 0.01, [], TOLS) == ("accept", [])
    assert judge(report(3.0, orig=2.0, fork=99.0), None, 0.01, [], TOLS) == ("accept", [])  # the first tag


def test_a_configured_set_the_report_lacks_rejects_and_says_so():
    verdict, reasons = judge(report(2.0, orig=1.0), PARENT, 0.01, [], TOLS)
    assert verdict == "reject" and reasons == ["eval set fork: not evaluated"]


def test_without_sets_judge_is_what_it_was():
    assert judge(report(3.02), PARENT, 0.01, [])[0] == "accept"
    verdict, reasons = judge(report(3.05), PARENT, 0.01, [])
    assert verdict == "reject" and reasons[0].startswith("regression: val_loss 3.0500 > parent's 3.0000")
    assert metrics_of(report(3.0)) == {"val_loss": 3.0, "perplexity": math.exp(3.0)}


def test_metrics_carry_every_set_and_pass_the_vote_schema():
    names = {f"{chr(97 + i)}{'x' * 31}": float(i) for i in range(MAX_EVAL_SETS)}  # the longest names allowed
    metrics = metrics_of(report(3.0, **names))
    assert metrics["val_loss/a" + "x" * 31] == 0.0 and len(metrics) == 2 + MAX_EVAL_SETS
    assert max(map(len, metrics)) <= MAX_METRIC_NAME
    check_metrics(metrics)  # a vote may carry them all


def test_the_checkpoint_meta_keeps_the_sets_and_is_unchanged_without_them():
    r = report(3.0, orig=2.0)
    assert EvalReport(**r.as_dict()) == r
    assert "sets" not in report(3.0).as_dict() and EvalReport(**report(3.0).as_dict()) == report(3.0)


# --- run id --------------------------------------------------------------------------------------------------
FPS = {"orig": "11" * 32, "fork": "22" * 32}


def rid(cfg, fps=None) -> str:
    return compute_run_id(cfg, VAL, FPS if fps is None else fps)


def test_without_sets_the_spec_and_run_id_are_what_they_were():
    cfg = load_config(TINY)
    assert "sets" not in cfg.lineage_spec()["eval"]
    assert not any(k.startswith("eval.sets") for k in cfg.shared_spec(VAL))
    assert compute_run_id(cfg, VAL, {}) == compute_run_id(cfg, VAL)
    # the defaults' id before eval sets existed: update it only for a deliberate change (a protocol bump)
    assert compute_run_id(load_config(None), VAL) == "0891d83a23e72ec2"


def test_the_run_id_covers_each_sets_data_batches_and_tolerance():
    base = with_sets(a_set("orig"), a_set("fork"))
    same = rid(base)
    assert rid(base) == same
    assert rid(base, {**FPS, "fork": "33" * 32}) != same  # another validation split of a set's corpus
    assert rid(with_sets(a_set("orig", tolerance=0.02), a_set("fork"))) != same
    assert rid(with_sets(a_set("orig"), a_set("fork", batches=9))) != same
    assert rid(with_sets(a_set("orig"), {**a_set("fork"), "data": {"source": "text", "val_fraction": 0.1}})) != same
    assert rid(with_sets(a_set("orig"), a_set("fork"), extra=["versioning.regression_tolerance=0.05"])) != same
    assert rid(with_sets(a_set("orig", tolerance=0.05), a_set("fork", tolerance=0.05))) != same
    # where the files are on this machine is local; their content is the fingerprint
    moved = {**a_set("orig"), "data": {"source": "text", "paths": ["/else/*.txt"]}}
    assert rid(with_sets(moved, a_set("fork"))) == same
    assert rid(with_sets(a_set("orig")), {"orig": FPS["orig"]}) != compute_run_id(load_config(TINY), VAL)


def test_every_sets_fingerprint_must_be_given():
    cfg = with_sets(a_set("orig"), a_set("fork"))
    with pytest.raises(ValueError, match="fingerprints"):
        cfg.shared_spec(VAL, {"orig": FPS["orig"]})
    with pytest.raises(ValueError, match="fingerprints"):
        compute_run_id(cfg, VAL)


def test_a_run_record_with_the_most_sets_passes_the_readers_schema_and_fits():
    names = [f"{chr(97 + i)}{'x' * 31}" for i in range(MAX_EVAL_SETS)]
    cfg = with_sets(*(a_set(n) for n in names))
    spec = cfg.shared_spec(VAL, {n: "ab" * 32 for n in names})
    first = f"eval.sets.{names[0]}"
    assert spec[f"{first}.val_fingerprint"] == "ab" * 32 and spec[f"{first}.tolerance"] == 0.01
    who = Identity.generate()
    body = run_record(who.peer_id, cfg, rid(cfg, {n: "ab" * 32 for n in names}), spec)
    check_schema(body, RUN_RECORD_FIELDS, "run record")  # what every reader checks first
    assert len(sign_message(who, RUN_KIND, body)) < MAX_RECORD_BYTES


# --- loading and evaluation ------------------------------------------------------------------------------------
def _corpus_dir(root: Path, name: str, text: str) -> str:
    d = root / name
    d.mkdir()
    for i in range(4):
        (d / f"{i}.txt").write_text(text * 400 + str(i))
    return str(d / "*.txt")


@pytest.fixture()
def two_corpora(tmp_path):
    orig = _corpus_dir(tmp_path, "orig", "def f(x):\n    return x + 1\n")
    fork = _corpus_dir(tmp_path, "fork", "The quick brown fox jumps over the lazy dog. ")
    return orig, fork


def _cfg(orig: str, fork: str):
    sets = [
        {"name": "orig", "data": {"source": "text", "paths": [orig], "val_fraction": 0.3}, "batches": 2},
        {"name": "fork", "data": {"source": "text", "paths": [fork], "val_fraction": 0.3}, "batches": 3},
    ]
    return with_sets(*sets, extra=["model.seq_len=32", "data.max_corpus_bytes=100000"])


def test_same_state_gives_the_same_per_set_metrics_twice(two_corpora):
    cfg = _cfg(*two_corpora)
    sets = load_eval_sets(cfg)
    assert [s.name for s in sets] == ["orig", "fork"] and sets[0].fingerprint != sets[1].fingerprint
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.train.seed)
    main = sets[0].val
    r1 = evaluate(model, main, 32, 2, 4, sets=sets)
    r2 = evaluate(build_model(cfg.model, cfg.train.seed), main, 32, 2, 4, sets=load_eval_sets(cfg))
    assert r1 == r2 and set(r1.sets) == {"orig", "fork"}
    assert r1.sets["orig"] == pytest.approx(r1.val_loss)  # the same tokens and batches as the main set here
    assert r1.sets["orig"] != r1.sets["fork"] and all(math.isfinite(v) for v in r1.sets.values())
    assert evaluate(model, main, 32, 2, 4).sets == {}  # without sets: the run's validation set only
    assert set_fingerprints(sets) == {"orig": sets[0].fingerprint, "fork": sets[1].fingerprint}


def test_a_set_with_the_runs_data_reuses_its_corpus_and_bad_data_names_the_set(two_corpora, tmp_path):
    from p2pmodel.data import load_data

    orig, fork = two_corpora
    cfg = _cfg(orig, fork)
    cfg.data = cfg.eval.sets[0].data.model_copy()
    main = load_data(cfg.data, cfg.model.seq_len + 2, cfg.model.vocab_size)
    assert load_eval_sets(cfg, main)[0].val is main.val
    missing = _cfg(orig, str(tmp_path / "nowhere" / "*.txt"))
    with pytest.raises(DataError, match="eval set 'fork': no files match"):
        load_eval_sets(missing)


def test_a_peer_judges_release_candidates_on_its_sets_only(two_corpora, tmp_path):
    from p2pmodel.node.peer import Peer

    cfg = _cfg(*two_corpora)
    cfg.versioning.release_every = 2
    peer = Peer(cfg, tmp_path / "peer", "peer-a")
    assert peer.run_id == compute_run_id(cfg, peer.corpus.fingerprint, set_fingerprints(peer.eval_sets))
    assert peer.is_release_round(4) and not peer.is_release_round(3)
    assert peer.evaluate().sets == {}
    judged = peer.evaluate(with_sets=True)
    assert set(judged.sets) == {"orig", "fork"} and judged.val_loss == peer.evaluate().val_loss
