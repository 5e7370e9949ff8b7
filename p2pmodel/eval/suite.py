"""The release eval suite: the report's metrics plus the named threshold checks from the config, and the
PATCH rule (no regression beyond tolerance against the parent version), on the run's validation set and on every
named eval set (``val_loss/NAME``, each with its own tolerance). Pure functions: every peer that evaluates the
same state with the same config reaches the same verdict."""

from collections.abc import Mapping

from p2pmodel.eval.report import EvalReport

SET_METRIC = "val_loss/{}"  # a named eval set's metric in votes and tags


def metrics_of(report: EvalReport) -> dict[str, float]:
    metrics = {"val_loss": float(report.val_loss), "perplexity": float(report.perplexity)}
    metrics.update({SET_METRIC.format(name): float(loss) for name, loss in sorted(report.sets.items())})
    return metrics


def _regressed(metrics: dict, parent: dict, name: str, tolerance: float) -> str | None:
    """The reason ``metrics[name]`` regressed beyond ``tolerance`` against the parent's; None if it did not (or
    the parent has no such metric: a set added since is no regression)."""
    before = parent.get(name)
    if before is None or metrics[name] <= before * (1 + tolerance):
        return None
    return f"regression: {name} {metrics[name]:.4f} > parent's {before:.4f} (tolerance {tolerance:g})"


def judge(
    report: EvalReport,
    parent_metrics: dict | None,
    tolerance: float,
    checks,
    set_tolerances: Mapping[str, float] | None = None,
) -> tuple[str, list[str]]:
    """→ ("accept" | "reject", reasons). Rejects a regression beyond ``tolerance`` (val_loss) or beyond a named
    set's own tolerance (``set_tolerances``: {name: tolerance}, every set the config names), a named set the
    report lacks, or a failed named check."""
    metrics, reasons = metrics_of(report), []
    for check in checks:
        if metrics[check.metric] > check.max:
            reasons.append(f"check {check.name}: {check.metric} {metrics[check.metric]:.4f} > {check.max}")
    for name in sorted(set_tolerances or {}):
        if name not in report.sets:
            reasons.append(f"eval set {name}: not evaluated")
    parent = parent_metrics or {}
    found = [_regressed(metrics, parent, "val_loss", tolerance)]
    found += [
        _regressed(metrics, parent, SET_METRIC.format(name), tol)
        for name, tol in sorted((set_tolerances or {}).items())
        if name in report.sets
    ]
    reasons += [r for r in found if r]
    return ("reject" if reasons else "accept"), reasons
