"""EvalReport: what a peer measured on a state, with the digest of that state."""

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EvalReport:
    val_loss: float
    perplexity: float
    tokens: int
    digest: str

    def as_dict(self) -> dict:
        return asdict(self)
