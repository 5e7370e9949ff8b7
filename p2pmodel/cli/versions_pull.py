"""``p2pmodel versions pull VERSION -o DIR [--from DIR_A]``: download a tagged state, verified by its digest, whole
or as a patch from an earlier pulled version (node/patch_pull.py), falling back to the whole state whenever the
patch cannot be had or does not check out. A pull also writes the tag's outer momentum where its votes name one
(``momentum.bin``), which is what a later ``--from`` needs to replay the rounds after it."""

import json
from pathlib import Path

import typer

from p2pmodel.cli.output import emit_json
from p2pmodel.cli.versions import ALLOW, MAX_HF_CONFIG_BYTES, PEERS, RUN, _find, _reading, _summary, _version
from p2pmodel.cli.versions_files import creatable, new_dir
from p2pmodel.core.errors import IntegrityError, SwarmError, UsageError, WireError

MOMENTUM_FILE = "momentum.bin"


def pull(
    version: str,
    initial_peers: list[str] = PEERS,
    out: Path = typer.Option(..., "-o", "--out", help="Directory to write model.safetensors + manifest.json."),
    from_dir: Path = typer.Option(
        None, "--from", help="A pulled earlier version of this run: fetch only the rounds since (else the whole state)."
    ),
    run_id: str = RUN,
    allow: list[str] = ALLOW,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Download VERSION's weights (hash-verified) as safetensors with a manifest, whole or as a patch (--from)."""
    from safetensors.torch import save

    from p2pmodel.eval.digest import canonical_bytes, parse_canonical, state_digest
    from p2pmodel.node.light import pull_blob
    from p2pmodel.node.patch_pull import PatchUnavailable
    from p2pmodel.versioning.atomic import atomic_write
    from p2pmodel.versioning.tag import patch_refs

    _version(version)
    creatable(out, "--out")
    base = _read_base(from_dir) if from_dir is not None else None
    fallback, momentum, momentum_id = "", None, ""
    with _reading(initial_peers, run_id, allow) as (dht, rid, run, certs):
        cert = _find(certs, version)

        def fetch(blob_id: str, max_bytes: int, what: str = "a round object") -> bytes:
            return pull_blob(dht, rid, blob_id, max_bytes, what, cert["electorate"])

        patched = None
        if base is not None:
            try:
                patched = _patch(base, rid, certs, cert, fetch)
            except (PatchUnavailable, IntegrityError, WireError, SwarmError) as e:  # the whole state instead
                fallback = str(e)
                typer.echo(f"warning: no patch from {from_dir}: {e}; pulling {cert['version']} whole", err=True)
        if patched is not None:
            state, momentum, momentum_id = patched.state, patched.momentum, patched.momentum_id
            fetched, how, rounds = patched.fetched_bytes, "patch", patched.rounds
        else:
            blob = fetch(cert["digest"], 16 << 30, cert["version"])
            state, fetched, how, rounds = parse_canonical(blob), len(blob), "full", 0
            momentum_id = patch_refs(cert)[1] or ""
            if momentum_id:  # what a later --from needs; a pull works without it
                try:
                    momentum_blob = fetch(momentum_id, len(blob), "the outer momentum")
                    momentum = _momentum(momentum_blob, state)
                    fetched += len(momentum_blob)
                except (IntegrityError, WireError, SwarmError) as e:
                    momentum, momentum_id = None, ""
                    typer.echo(f"warning: outer momentum not pulled ({e}): a later --from cannot start here", err=True)
        model = run.get("model") if isinstance(run.get("model"), dict) else {}
        hf = model.get("kind") == "hf"
        if hf:  # its config, content-addressed by the sha256 the run's spec names; any peer of the run serves it
            config_id = str((run.get("spec") or {}).get("model.hf_config"))
            config_json = pull_blob(dht, rid, config_id, MAX_HF_CONFIG_BYTES, "the HF config")
    if state_digest(state) != cert["digest"]:  # the bytes were verified; check the parse too
        raise UsageError("downloaded state does not match the tag's digest")
    manifest = {
        **_summary(cert),
        "run_id": rid,
        "run_name": run.get("run_name"),
        "model": run.get("model"),
        "files": {"model.safetensors": "float32 parameters; sha256 of their canonical bytes = digest"},
    }
    with new_dir(out, "--out"):  # created only now that there is something to write
        if hf:  # transformers' layout: AutoModelForCausalLM.from_pretrained(out) loads it
            from p2pmodel.models.hf import export_pretrained

            files = export_pretrained(config_json, state, int(model.get("seq_len") or 0), out)
            manifest.update(format="hf", files={f: "written by transformers' save_pretrained" for f in files})
        else:
            meta = {"digest": cert["digest"], "version": cert["version"]}
            atomic_write(out / "model.safetensors", save(state, metadata=meta))
        if momentum is not None:
            atomic_write(out / MOMENTUM_FILE, canonical_bytes(momentum))
            manifest["momentum"] = momentum_id
            manifest["files"][MOMENTUM_FILE] = "outer momentum (canonical bytes; sha256 = momentum): for --from"
        atomic_write(out / "manifest.json", json.dumps(manifest, indent=2, default=str).encode())
    result = {"version": cert["version"], "digest": cert["digest"], "dir": str(out), "method": how}
    result.update(bytes=fetched, rounds=rounds, **({"fallback": fallback} if fallback else {}))
    if as_json:
        emit_json(result)
    else:
        via = f"as a patch of {rounds} round(s)" if how == "patch" else "whole"
        typer.echo(f"{cert['version']} ({cert['digest'][:12]}) written to {out}: {fetched} bytes fetched {via}")


def _read_base(path: Path) -> dict:
    """The --from directory: its manifest, verified weights and outer momentum (UsageError if it is not one)."""
    from p2pmodel.core.ids import sha256_hex
    from p2pmodel.versioning.pulled import read_pulled

    try:
        manifest, state = read_pulled(path)
    except ValueError as e:
        raise UsageError(f"--from: {e}") from None
    blob = None
    if manifest.get("momentum") and (path / MOMENTUM_FILE).is_file():
        blob = (path / MOMENTUM_FILE).read_bytes()
        if sha256_hex(blob) != manifest["momentum"]:
            raise UsageError(f"--from: {path / MOMENTUM_FILE} does not match its manifest")
    return {"manifest": manifest, "state": state, "momentum": blob}


def _momentum(blob: bytes, state: dict) -> dict:
    from p2pmodel.node.patch_pull import momentum_of

    return momentum_of(blob, {n: tuple(t.shape) for n, t in state.items()})


def _patch(base: dict, rid: str, certs: list[dict], cert: dict, fetch):
    from p2pmodel.eval.digest import canonical_bytes
    from p2pmodel.node.patch_pull import PatchUnavailable, patch, path_between

    manifest = base["manifest"]
    if manifest.get("run_id") != rid:
        raise PatchUnavailable(f"it holds run {manifest.get('run_id')}, not {rid}")
    if base["momentum"] is None:
        raise PatchUnavailable("it has no outer momentum (its tag recorded none, or it was pulled before patches)")
    path = path_between(certs, str(manifest.get("version")), str(manifest.get("digest")), cert["version"])
    if not path:
        raise UsageError(f"--from already holds {cert['version']}")
    state = base["state"]
    full = len(canonical_bytes(state))
    return patch(path, state, _momentum(base["momentum"], state), fetch, full)
