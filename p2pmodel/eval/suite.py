"""The release eval suite: the report's metrics plus the named threshold checks from the config, and the
PATCH rule (no regression beyond tolerance against the parent version). Pure functions: every peer that
evaluates the same state with the same config reaches the same verdict."""

from p2pmodel.eval.report import EvalReport


def metrics_of(report: EvalReport) -> dict[str, float]:
    return {"val_loss": float(report.val_loss), "perplexity": float(report.perplexity)}


def judge(report: EvalReport, parent_metrics: dict | None, tolerance: float, checks) -> tuple[str, list[str]]:
    """→ ("accept" | "reject", reasons). Rejects a regression beyond ``tolerance`` or a failed named check."""
    metrics, reasons = metrics_of(report), []
    for check in checks:
        if metrics[check.metric] > check.max:
            reasons.append(f"check {check.name}: {check.metric} {metrics[check.metric]:.4f} > {check.max}")
    if parent_metrics and "val_loss" in parent_metrics:
        limit = parent_metrics["val_loss"] * (1 + tolerance)
        if metrics["val_loss"] > limit:
            reasons.append(
                f"regression: val_loss {metrics['val_loss']:.4f} > parent's {parent_metrics['val_loss']:.4f}"
            )
    return ("reject" if reasons else "accept"), reasons
