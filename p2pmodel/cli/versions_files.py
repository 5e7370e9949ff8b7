"""``p2pmodel versions diff|merge``: commands on directories written by ``versions pull`` (no swarm needed)."""

import contextlib
import json
import shutil
import statistics
from pathlib import Path

import typer
from rich.table import Table

from p2pmodel.cli.output import default_is, emit_json, print_table
from p2pmodel.core.errors import UsageError
from p2pmodel.core.paths import writable_dir


def creatable(path: Path, what: str) -> None:
    """UsageError unless ``path`` is a writable directory or could be created as one; creates nothing, so a
    command that fails later (unknown version, unreachable swarm) leaves no empty directory behind."""
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"cannot use {what} {path}: not a directory")
        writable_dir(path, what)
        return
    top = path.absolute()
    while not top.parent.exists():
        top = top.parent
    try:  # the one reliable test (read-only file systems, /proc, root ignoring modes): make it, take it back
        top.mkdir()
        top.rmdir()
    except OSError as e:
        raise UsageError(f"cannot use {what} {path}: {e.strerror or e}") from None


@contextlib.contextmanager
def new_dir(path: Path, what: str):
    """Create ``path`` (parents too) for the writes inside; if they fail, remove what was created here."""
    created = path.absolute()
    while not created.parent.exists():
        created = created.parent
    created = None if path.exists() else created
    writable_dir(path, what)
    try:
        yield path
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def load_dir(path: Path) -> tuple[str, dict]:
    """(version, state) of a pulled directory, digest checked; UsageError (exit 2) if it is not one."""
    from p2pmodel.versioning.pulled import read_pulled

    try:
        manifest, state = read_pulled(path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return str(manifest.get("version")), state


def diff(a: Path, b: Path, as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Per-tensor change statistics between two pulled versions (directories written by `versions pull`)."""
    for p in (a, b):
        if not (p / "manifest.json").is_file():
            raise UsageError(f"{p} is not a directory written by `p2pmodel versions pull`")
    va, sa = load_dir(a)
    vb, sb = load_dir(b)
    if set(sa) != set(sb) or any(sa[n].shape != sb[n].shape for n in sa):
        raise UsageError(f"{va} and {vb} have different parameter schemas (a MAJOR change)")
    rows = []
    for name in sorted(sa):
        d = sb[name].float() - sa[name].float()
        base = sa[name].float().norm().item()
        rows.append(
            {
                "tensor": name,
                "shape": list(sa[name].shape),
                "l2_change": d.norm().item(),
                "relative_change": d.norm().item() / base if base else float("inf"),
                "max_abs_change": d.abs().max().item() if d.numel() else 0.0,
                "changed_fraction": (d != 0).float().mean().item() if d.numel() else 0.0,
            }
        )
    summary = {
        "from": va,
        "to": vb,
        "tensors": rows,
        "median_relative_change": statistics.median(r["relative_change"] for r in rows) if rows else 0.0,
    }
    if as_json:
        emit_json(summary)
        return
    table = Table(title=f"{va} → {vb}")
    for col in ("tensor", "shape", "rel. change", "max |Δ|", "changed"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["tensor"],
            "×".join(map(str, r["shape"])),
            f"{r['relative_change']:.4f}",
            f"{r['max_abs_change']:.3g}",
            f"{100 * r['changed_fraction']:.1f}%",
        )
    print_table(table)


def _architecture(manifest: dict) -> dict | None:
    """The manifest's model section less where its weights started from (a fork's ``init_from``): a fork has the
    architecture of the run it came from."""
    model = manifest.get("model")
    if not isinstance(model, dict):
        return model
    return {k: v for k, v in model.items() if k not in ("init_from", "hf_config_path")}  # local paths


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def merge(
    models: list[Path] = typer.Argument(..., help="Directories written by `versions pull` (or by a merge)."),
    out: Path = typer.Option(..., "-o", "--out", help="Directory to write model.safetensors + manifest.json."),
    method: str = typer.Option(..., "--method", help="linear, task-arithmetic or ties (as mergekit defines them)."),
    base: Path = typer.Option(None, "--base", help="The common ancestor (task-arithmetic, ties)."),
    weights: str = typer.Option(None, "--weights", help="Comma-separated, one per model. " + default_is("1 each")),
    density: float = typer.Option(1.0, "--density", help="ties: fraction of each task vector kept (largest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Merge pulled versions into a new state (same architecture): a fork folded back in, or forks combined.
    The result is a directory like a pulled version's (`versions diff` compares it), its manifest naming its
    sources."""
    from safetensors.torch import save

    from p2pmodel.eval.digest import state_digest
    from p2pmodel.versioning.atomic import atomic_write
    from p2pmodel.versioning.merge import METHODS
    from p2pmodel.versioning.merge import merge as merge_states

    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    if len(models) < 2 and method == "linear":
        raise UsageError("linear needs at least two models")
    try:
        w = None if weights is None else [float(x) for x in weights.split(",")]
    except ValueError:
        raise UsageError(f"--weights must be comma-separated numbers, got {weights!r}") from None
    creatable(out, "--out")
    inputs = [load_dir(m) for m in models]
    ancestor = load_dir(base) if base is not None else None
    kinds = {json.dumps(_architecture(_manifest(p)), sort_keys=True) for p in [*models, *([base] if base else [])]}
    if len(kinds) > 1:
        raise UsageError("the models have different architectures (their manifests' model sections differ)")
    try:
        merged = merge_states([s for _, s in inputs], method, w, ancestor[1] if ancestor else None, density)
    except ValueError as e:
        raise UsageError(str(e)) from None
    digest = state_digest(merged)
    first = _manifest(models[0])
    manifest = {
        "version": f"merge of {' + '.join(v for v, _ in inputs)}",
        "digest": digest,
        "merged": {
            "method": method,
            "models": [
                {"version": v, "digest": _manifest(m)["digest"]} for (v, _), m in zip(inputs, models, strict=True)
            ],
            "weights": w or [1.0] * len(inputs),
            "base": {"version": ancestor[0], "digest": _manifest(base)["digest"]} if ancestor else None,
            "density": density if method == "ties" else None,
        },
        "run_id": first.get("run_id"),
        "run_name": first.get("run_name"),
        "model": first.get("model"),
        "files": {"model.safetensors": "float32 parameters; sha256 of their canonical bytes = digest"},
    }
    with new_dir(out, "--out"):
        atomic_write(out / "model.safetensors", save(merged, metadata={"digest": digest, "version": "merged"}))
        atomic_write(out / "manifest.json", json.dumps(manifest, indent=2, default=str).encode())
    if as_json:
        emit_json({"digest": digest, "dir": str(out), **manifest["merged"]})
    else:
        typer.echo(f"{manifest['version']} ({method}) = {digest[:12]} written to {out}")
