"""Named eval sets (``eval.sets``), the tests of a model: each set's validation tokens, loaded once when a peer
starts, and their fingerprint. The run id covers the fingerprints, because every peer must judge a release
candidate on the same tokens to reach the same verdict."""

from dataclasses import dataclass

import torch

from p2pmodel.core.errors import DataError
from p2pmodel.data.corpus import Corpus, load_data


@dataclass(frozen=True)
class EvalSetData:
    name: str
    val: torch.Tensor  # 1-D integer tokens: the validation split of the set's corpus
    batches: int
    fingerprint: str  # sha256 of ``val`` (Corpus.fingerprint)


def load_eval_sets(cfg, main: Corpus | None = None) -> list[EvalSetData]:
    """Every set of ``cfg.eval.sets`` in config order. A set whose data section equals the run's reuses ``main``
    (the run's corpus, already loaded) and sets with equal data sections share one load; only the validation
    split is kept. DataError (one line naming the set) when its data is missing or does not fit the model."""
    loaded: dict[str, Corpus] = {}
    if main is not None:
        loaded[cfg.data.model_dump_json()] = main
    out = []
    for s in cfg.eval.sets:
        key = s.data.model_dump_json()
        if key not in loaded:
            try:
                loaded[key] = load_data(s.data, cfg.model.seq_len + 2, cfg.model.vocab_size)
            except DataError as e:
                raise DataError(f"eval set {s.name!r}: {e}") from None
        corpus = loaded[key]
        top = int(corpus.val.max())
        if top >= cfg.model.vocab_size:
            raise DataError(f"eval set {s.name!r} has token id {top} but model.vocab_size is {cfg.model.vocab_size}")
        out.append(EvalSetData(name=s.name, val=corpus.val, batches=s.batches, fingerprint=corpus.fingerprint))
    return out


def set_fingerprints(sets: list[EvalSetData]) -> dict[str, str]:
    """{name: fingerprint}, as ``Config.shared_spec`` takes them."""
    return {s.name: s.fingerprint for s in sets}
