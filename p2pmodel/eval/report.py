"""EvalReport: what a peer measured on a state, with the digest of that state."""

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class EvalReport:
    val_loss: float
    perplexity: float
    tokens: int
    digest: str
    sets: dict[str, float] = field(default_factory=dict)  # named eval set → val loss (release candidates only)

    def as_dict(self) -> dict:
        """The fields (checkpoint meta); ``sets`` only when there are any, so a run without named sets writes what
        it always wrote."""
        out = asdict(self)
        if not out["sets"]:
            del out["sets"]
        return out
