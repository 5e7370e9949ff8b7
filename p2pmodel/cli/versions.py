"""``p2pmodel versions list|log|show|pull|plot|propose``: read the swarm's tags as a light client (no training, no GPU);
every certificate is verified (signatures, quorum, parent chain) before it is shown or used."""

import contextlib
import tempfile
from pathlib import Path

import typer
from rich.table import Table

from p2pmodel.cli.output import default_is, emit_json, print_table
from p2pmodel.cli.versions_files import creatable as _creatable
from p2pmodel.cli.versions_files import diff, merge
from p2pmodel.cli.versions_files import new_dir as _new_dir
from p2pmodel.core.errors import SwarmError, UsageError
from p2pmodel.core.logging import setup_logging

app = typer.Typer(help="List, verify, download and compare tagged versions.", no_args_is_help=True)
MAX_HF_CONFIG_BYTES = 1 << 20
PEERS = typer.Option(..., "--initial-peers", help="Multiaddr of any swarm member (repeatable).")
RUN = typer.Option(None, "--run-id", help="Run to read. " + default_is("the only run online"))
ALLOW = typer.Option(
    None,
    "--allow",
    help="Count only votes signed by this PeerID (repeatable), as versioning.allowlist on peers. "
    + default_is("any member of the tag's electorate"),
)


def _summary(cert: dict) -> dict:
    return {
        "version": cert["version"],
        "digest": cert["digest"],
        "parent": cert["parent"],
        "round": cert["round"],
        "metrics": cert["metrics"],
        "votes": len(cert["votes"]),
        "electorate": len(cert["electorate"]),
        "required": cert["required"],
        "time": cert.get("time"),
    }


def _eval_sets(metrics: dict) -> dict[str, float]:
    """{name: val loss} of the named eval sets in a tag's or vote's metrics (``val_loss/NAME``, eval/suite.py)."""
    return {k.removeprefix("val_loss/"): v for k, v in sorted(metrics.items()) if k.startswith("val_loss/")}


def _set_changes(cert: dict, parent: dict | None) -> dict[str, dict]:
    """{name: {"val_loss", "change"}} per named eval set of ``cert``; change None where the parent lacks the set."""
    before = _eval_sets(parent["metrics"]) if parent else {}
    return {
        name: {"val_loss": v, "change": v - before[name] if name in before else None}
        for name, v in _eval_sets(cert["metrics"]).items()
    }


def _allowlist(allow: list[str] | None) -> set[str] | None:
    """The --allow PeerIDs, each checked (a typo would silently refuse every tag)."""
    if not allow:
        return None
    from hivemind.p2p import PeerID

    for peer_id in allow:
        try:
            raw = PeerID.from_base58(peer_id).to_bytes()
        except Exception:
            raw = b""
        # any base58 word decodes: require a multihash, sha2-256 (0x12, 32 bytes) or identity (0x00, inline key)
        if not (
            (len(raw) == 34 and raw[:2] == b"\x12\x20") or (len(raw) > 2 and raw[0] == 0 and raw[1] == len(raw) - 2)
        ):
            raise UsageError(f"--allow: not a PeerID: {peer_id!r}")
    return set(allow)


@contextlib.contextmanager
def _reading(initial_peers, run_id, allow):
    """A light client on the swarm: (dht, run id, run record, its verified tags); the DHT is open inside."""
    from p2pmodel.node.light import fetch_tags, light_client, pick_run

    allowlist = _allowlist(allow)
    setup_logging("warning")
    with light_client(initial_peers) as dht, tempfile.TemporaryDirectory() as tmp:
        rid, run = pick_run(dht, run_id)
        yield dht, rid, run, fetch_tags(dht, rid, tmp, allowlist)


def _tags(initial_peers, run_id, allow):
    with _reading(initial_peers, run_id, allow) as (_, rid, run, certs):
        return rid, run, certs


@app.command("list")
def list_(
    initial_peers: list[str] = PEERS,
    run_id: str = RUN,
    allow: list[str] = ALLOW,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Tags with digest, round, metrics and votes x/N (each certificate verified)."""
    rid, run, certs = _tags(initial_peers, run_id, allow)
    origin = _forked_from(run)
    if as_json:
        versions = [_summary(c) for c in certs]
        emit_json({"run_id": rid, "run_name": run.get("run_name"), "forked_from": origin, "versions": versions})
        return
    fork_note = f", forked from {origin['version']} of run {origin['run_id']}" if origin else ""
    if not certs:  # an empty table says less than this
        head = f"run {rid} ({run.get('run_name')}{fork_note})"
        typer.echo(f"{head}: no version tagged yet (a candidate every release_every rounds)")
        return
    table = Table(title=f"run {rid} ({run.get('run_name')}{fork_note}): {len(certs)} version(s)")
    for col in ("version", "digest", "round", "val loss", "votes", "parent"):
        table.add_column(col, overflow="fold")
    for c in certs:
        table.add_row(
            c["version"],
            c["digest"][:12],
            str(c["round"]),
            f"{c['metrics'].get('val_loss', float('nan')):.4f}",
            f"{len(c['votes'])}/{len(c['electorate'])}",
            c["parent"] or "-",
        )
    print_table(table)


@app.command()
def log(
    initial_peers: list[str] = PEERS,
    run_id: str = RUN,
    allow: list[str] = ALLOW,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """The run's history, newest version first, like `git log --stat`: each version's rounds since its parent,
    its validation loss and the change from the parent (on each named eval set too), its votes, who contributed
    and the bytes of its patch from the parent (`pull --from`; each tag verified)."""
    from p2pmodel.versioning.tag import contributors, patch_refs

    rid, run, certs = _tags(initial_peers, run_id, allow)
    entries = []
    for i, c in enumerate(certs):
        parent = certs[i - 1] if i else None
        loss, before = c["metrics"].get("val_loss"), parent["metrics"].get("val_loss") if parent else None
        credited, attested = contributors(c)
        rounds = patch_refs(c)[0] if parent else None
        entries.append(
            {
                **_summary(c),
                "rounds": [parent["round"] + 1 if parent else 1, c["round"]],
                "val_loss_change": loss - before if loss is not None and before is not None else None,
                "eval_sets": _set_changes(c, parent),
                "contributors": [{"peer": p, "samples": n} for p, n in credited],
                "contributors_attested_by": attested,
                # the round objects its votes name (None: pulled whole only)
                "patch_bytes": sum(size for _, size in rounds) if rounds else None,
            }
        )
    entries.reverse()
    if as_json:
        emit_json({"run_id": rid, "run_name": run.get("run_name"), "versions": entries})
        return
    if not entries:
        typer.echo(f"run {rid} ({run.get('run_name')}): no version tagged yet")
        return
    for e in entries:
        change = "" if e["val_loss_change"] is None else f" ({e['val_loss_change']:+.4f})"
        typer.echo(f"{e['version']}  {e['digest']}")
        typer.echo(f"  parent   {e['parent'] or '- (first version)'}")
        typer.echo(f"  rounds   {e['rounds'][0]}-{e['rounds'][1]}    tagged {_utc(e['time'])}")
        loss = e["metrics"].get("val_loss", float("nan"))
        typer.echo(f"  val_loss {loss:.4f}{change}    votes {e['votes']}/{e['electorate']}")
        for name, s in e["eval_sets"].items():
            delta = "" if s["change"] is None else f" ({s['change']:+.4f})"
            typer.echo(f"  eval set {name}: val_loss {s['val_loss']:.4f}{delta}")
        if e["patch_bytes"] is not None:
            typer.echo(f"  patch    {e['patch_bytes']} bytes from {e['parent']} (versions pull --from)")
        total = sum(x["samples"] for x in e["contributors"])
        if e["contributors"]:
            who = f"{len(e['contributors'])} contributor(s), {total} samples"
            typer.echo(f"  {who} (as {e['contributors_attested_by']} votes record them):")
            for x in e["contributors"]:
                typer.echo(f"    {x['samples']:>10}  {x['peer']}")
        typer.echo("")


def _forked_from(run: dict) -> dict | None:
    """Where a forked run's lineage came from, as its run record's spec says (``peer run --fork``); else None."""
    spec = run.get("spec") if isinstance(run.get("spec"), dict) else {}
    if spec.get("fork.digest") is None:
        return None
    return {
        "run_id": spec.get("fork.from_run"),
        "version": spec.get("fork.from_version"),
        "digest": spec["fork.digest"],
    }


def _version(text: str):
    """VERSION as given on the command line, checked before any network work."""
    from p2pmodel.versioning.semver import Version

    try:
        return Version.parse(text)
    except ValueError:
        raise UsageError(f"not a version: {text!r} (expected vMAJOR.MINOR.PATCH, e.g. v0.1.0)") from None


def _find(certs, version: str) -> dict:
    from p2pmodel.versioning.semver import Version

    want = _version(version)
    for c in certs:
        if Version.parse(c["version"]) == want:
            return c
    # what the swarm holds is a runtime condition (peers may still be publishing), not a usage mistake: exit 1
    raise SwarmError(f"unknown version {version} (known: {', '.join(c['version'] for c in certs) or 'none'})")


@app.command()
def show(
    version: str,
    initial_peers: list[str] = PEERS,
    run_id: str = RUN,
    allow: list[str] = ALLOW,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """The full certificate of VERSION, every vote's signature checked, and who contributed since its parent."""
    from p2pmodel.swarm.signed import open_signed
    from p2pmodel.versioning.tag import contributors
    from p2pmodel.versioning.votes import VOTE_KIND

    _version(version)
    _, _, certs = _tags(initial_peers, run_id, allow)
    cert = _find(certs, version)
    votes = []
    for raw in cert["votes"]:
        body, signer = open_signed(raw, VOTE_KIND)  # raises if any signature is bad (the ledger checked already)
        votes.append(
            {
                "voter": signer,
                "verdict": body["verdict"],
                "metrics": body["metrics"],
                "time": body.get("time"),
                "signature": "valid",
            }
        )
    out = {
        **_summary(cert),
        "electorate_peers": cert["electorate"],
        "bump": cert["bump"],
        "candidate": cert["candidate"],
        "vote_details": votes,
        "verified": True,
        "eval_sets": _eval_sets(cert["metrics"]),  # also in metrics, as val_loss/NAME
    }
    credited, attested = contributors(cert)
    out["contributors"] = [{"peer": p, "samples": n} for p, n in credited]
    out["contributors_attested_by"] = attested  # how many of the tag's votes record exactly this list
    if as_json:
        emit_json(out)
    else:
        typer.echo("\n".join(_certificate_lines(out)))


def _utc(t: float | None) -> str:
    import datetime

    if not isinstance(t, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _metrics(m: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(m.items())) or "-"


def _certificate_lines(c: dict) -> list[str]:
    """``versions show`` for people: one fact per line, full ids (nothing wrapped or cut), times in UTC."""
    lines = [
        f"{c['version']}  verified: {c['votes']} of {c['electorate']} votes, {c['required']} required",
        f"  digest     {c['digest']}",
        f"  parent     {c['parent'] or '- (first version)'}",
        f"  round      {c['round']}",
        f"  bump       {c['bump']}",
        f"  tagged     {_utc(c['time'])}",
        f"  metrics    {_metrics(c['metrics'])}",
        *(f"  eval set   {name}: val_loss {v:.4f}" for name, v in c["eval_sets"].items()),
        "  votes (signatures checked):",
    ]
    voted = set()
    for v in c["vote_details"]:
        voted.add(v["voter"])
        mark = "✓" if v["verdict"] == "accept" else "✗"
        lines.append(f"    {mark} {v['voter']}  {v['verdict']}  {_utc(v['time'])}  {_metrics(v['metrics'])}")
    lines += [f"    · {p}  no vote in the tag" for p in c["electorate_peers"] if p not in voted]
    since = f"since {c['parent']}" if c["parent"] else "since the start"
    if c["contributors"]:
        lines.append(f"  contributors {since} (as {c['contributors_attested_by']} of {c['votes']} votes record them):")
        width = max(len(str(x["samples"])) for x in c["contributors"])
        lines += [f"    {x['samples']:>{width}} samples  {x['peer']}" for x in c["contributors"]]
    else:
        lines.append(f"  contributors {since}: not recorded in this tag's votes")
    return lines


@app.command()
def plot(
    initial_peers: list[str] = PEERS,
    out: Path = typer.Option(..., "-o", "--out", help="PNG file to write."),
    run_id: str = RUN,
    allow: list[str] = ALLOW,
):
    """Validation loss by round (median over peers) with the tagged versions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from p2pmodel.node.light import fetch_history

    if out.suffix.lower() != ".png":
        raise UsageError(f"--out must name a .png file, got {out}")
    _creatable(out.parent, "--out")
    with _reading(initial_peers, run_id, allow) as (dht, rid, run, certs):
        history = fetch_history(dht, rid)
    if not history and not certs:
        raise UsageError(f"run {rid} has no history yet")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(
        list(history), list(history.values()), marker=".", color="#4c72b0", label="validation loss (median of peers)"
    )
    for c in certs:
        y = c["metrics"].get("val_loss")
        ax.scatter([c["round"]], [y], color="#dd8452", zorder=3, s=60)
        ax.annotate(c["version"], (c["round"], y), textcoords="offset points", xytext=(4, 8), fontsize=9)
    ax.set_xlabel("outer round")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{run.get('run_name')} ({rid}): {len(certs)} tagged version(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with _new_dir(out.parent, "--out"):
        fig.savefig(out)
    plt.close(fig)
    typer.echo(f"wrote {out} ({len(history)} rounds, {len(certs)} versions)")


app.command()(diff)
app.command()(merge)

from p2pmodel.cli.versions_propose import propose  # noqa: E402  (they use the options and helpers above)
from p2pmodel.cli.versions_pull import pull  # noqa: E402

app.command()(pull)
app.command()(propose)
