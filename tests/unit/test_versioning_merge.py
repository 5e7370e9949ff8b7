"""Merges (versioning/merge.py and ``versions merge``): each method against its definition (mergekit's docs) on
hand-computed values, the CLI on pulled-like directories, and bad input as one-line usage errors (exit 2)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from p2pmodel.cli.app import app, main
from p2pmodel.eval.digest import state_digest
from p2pmodel.versioning.merge import merge

BASE = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0]), "b": torch.tensor([0.0])}
A = {"w": torch.tensor([2.0, 1.0, 0.0, 1.5]), "b": torch.tensor([1.0])}  # task vector (1, 0, -1, 0.5), (1)
B = {"w": torch.tensor([0.0, 3.0, 0.5, 1.0]), "b": torch.tensor([3.0])}  # task vector (-1, 2, -0.5, 0), (3)


@pytest.mark.timeout(10)
def test_linear_is_the_normalized_weighted_average():
    out = merge([A, B], "linear", [3.0, 1.0])
    assert torch.equal(out["w"], (3 * A["w"] + B["w"]) / 4) and torch.equal(out["b"], torch.tensor([1.5]))
    assert torch.equal(merge([A, A], "linear")["w"], A["w"])


@pytest.mark.timeout(10)
def test_task_arithmetic_adds_the_weighted_task_vectors_to_the_base():
    out = merge([A, B], "task-arithmetic", [1.0, 0.5], base=BASE)
    assert torch.equal(out["w"], torch.tensor([1.5, 2.0, -0.25, 1.5]))
    assert torch.equal(out["b"], torch.tensor([2.5]))


@pytest.mark.timeout(10)
def test_ties_elects_a_sign_per_coordinate_and_averages_the_agreeing_task_vectors():
    out = merge([A, B], "ties", base=BASE)
    # coordinate 0: +1 and -1 sum to 0 -> "+" elected (>= 0), only A agrees; 1: only B is nonzero; 2: both
    # negative, mean -0.75; 3: only A is nonzero
    assert torch.equal(out["w"], torch.tensor([2.0, 3.0, 0.25, 1.5]))
    assert torch.equal(out["b"], torch.tensor([2.0]))  # both positive: their mean
    trimmed = merge([A, B], "ties", base=BASE, density=0.5)  # keep the 2 largest |τ| of 4 per model
    # A keeps (1, -1) at 0 and 2; B keeps (-1, 2) at 0 and 1; coordinate 0 ties again -> A's +1
    assert torch.equal(trimmed["w"], torch.tensor([2.0, 3.0, 0.0, 1.0]))


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"models": [A, B], "method": "slerp"}, "unknown merge method"),
        ({"models": [A, B], "method": "ties"}, "needs a base"),
        ({"models": [A, B], "method": "linear", "weights": [1.0]}, "weights for 2 models"),
        ({"models": [A, B], "method": "linear", "weights": [1.0, float("nan")]}, "finite"),
        ({"models": [A, {"w": torch.zeros(3), "b": torch.zeros(1)}], "method": "linear"}, "shape"),
        ({"models": [A, {"w": A["w"]}], "method": "linear"}, "other tensors"),
        ({"models": [A, B], "method": "ties", "base": BASE, "density": 0.0}, "density"),
    ],
)
def test_bad_merges_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        merge(**kwargs)


def _pulled(path, version, state, model=None):
    path.mkdir()
    save_file(state, str(path / "model.safetensors"))
    manifest = {"version": version, "digest": state_digest(state), "model": model or {"kind": "gpt"}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.mark.timeout(30)
def test_the_cli_writes_a_verified_directory_that_diff_reads(tmp_path):
    a, b = _pulled(tmp_path / "a", "v0.2.0", A), _pulled(tmp_path / "b", "v0.1.3", B)
    base = _pulled(tmp_path / "base", "v0.1.0", BASE)
    out = tmp_path / "merged"
    runner = CliRunner()
    res = runner.invoke(app, ["versions", "merge", str(a), str(b), "--base", str(base), "--method", "ties",
                              "-o", str(out), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output)
    state = load_file(out / "model.safetensors")
    assert torch.equal(state["w"], merge([A, B], "ties", base=BASE)["w"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["digest"] == printed["digest"] == state_digest(state)
    assert [m["version"] for m in manifest["merged"]["models"]] == ["v0.2.0", "v0.1.3"]
    assert manifest["merged"]["base"]["version"] == "v0.1.0"
    diff = runner.invoke(app, ["versions", "diff", str(a), str(out), "--json"])
    assert diff.exit_code == 0, diff.output
    assert json.loads(diff.output)["to"] == "merge of v0.2.0 + v0.1.3"


def _main(argv: list[str], capsys) -> tuple[int, str]:
    """``p2pmodel ARGV`` in-process, through main(): its exit code and stderr."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value.code, capsys.readouterr().err


@pytest.mark.timeout(30)
def test_cli_errors_are_one_line_usage_errors(tmp_path, capsys):
    a, b = _pulled(tmp_path / "a", "v0.2.0", A), _pulled(tmp_path / "b", "v0.1.3", B)
    other = _pulled(tmp_path / "c", "v9.0.0", A, model={"kind": "hf"})
    cases = [
        ([str(b), "--method", "dare"], "--method must be one of"),
        ([str(b), "--method", "ties"], "needs a base model"),
        ([str(b), "--method", "linear", "--weights", "1,x"], "--weights must be comma-separated"),
        ([str(b), "--method", "linear", "--weights", "1,2,3"], "3 weights for 2 models"),
        ([str(other), "--method", "linear"], "different architectures"),
        ([str(tmp_path / "nope"), "--method", "linear"], "not a readable `versions pull` directory"),
    ]
    for extra, message in cases:
        code, err = _main(["versions", "merge", str(a), "-o", str(tmp_path / "o"), *extra], capsys)
        assert code == 2 and err.startswith("error: ") and message in err, (extra, err)
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.timeout(30)
def test_a_fork_merges_with_the_run_it_came_from(tmp_path, capsys):
    """A fork's run record names where its weights started (model.init_from, a local path): same architecture."""
    gpt = {"kind": "gpt", "n_layer": 4}
    original = _pulled(tmp_path / "a", "v0.2.0", A, model={**gpt, "init_from": None})
    fork = _pulled(tmp_path / "b", "v0.1.3", B, model={**gpt, "init_from": "/home/someone/pulled-v0.1.1"})
    base = _pulled(tmp_path / "base", "v0.1.1", BASE, model={**gpt, "init_from": None})
    argv = ["versions", "merge", str(original), str(fork), "--base", str(base), "--method", "task-arithmetic"]
    code, err = _main([*argv, "-o", str(tmp_path / "m")], capsys)
    assert code == 0, err
    deeper = _pulled(tmp_path / "c", "v0.1.4", B, model={**gpt, "n_layer": 8, "init_from": "/x"})
    code, err = _main([*argv[:4], str(deeper), "--method", "linear", "-o", str(tmp_path / "n")], capsys)
    assert code == 2 and "different architectures" in err, err
