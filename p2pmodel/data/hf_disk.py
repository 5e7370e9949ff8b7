"""Documents from a Hugging Face ``datasets`` dataset saved with ``save_to_disk`` (read locally, never downloaded).

A DatasetDict uses its ``train`` split and, when present, ``validation``/``valid``/``val``/``test`` for
validation; otherwise (or for a single Dataset) rows go to validation by a hash of their index, so every
peer with the same dataset gets the same split. ``datasets`` is optional: without it this source says how to
install it.
"""

import hashlib
import os
from pathlib import Path

from p2pmodel.core.errors import DataError

VAL_SPLITS = ("validation", "valid", "val", "test")
_ROWS_PER_READ = 1000


def _is_val_row(i: int, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(f"row/{i}".encode()).digest()[:8], "big")
    return (h % 1_000_000) < val_fraction * 1_000_000


def _load(path: Path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise DataError(
            "data.source = 'hf_disk' needs the datasets package: pip install datasets (with the hf extra)"
        ) from None
    if not path.is_dir():
        raise DataError(f"data.paths: {path} is not a directory saved by datasets' save_to_disk")
    try:
        return datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise DataError(f"cannot load dataset {path}: {str(e).strip().splitlines()[0] if str(e) else e}") from None


def _rows(ds, field: str, what: str):
    """Yield (index, text) of one Dataset, reading ``_ROWS_PER_READ`` rows at a time."""
    if field not in ds.column_names:
        raise DataError(f"{what} has no column {field!r} (columns: {', '.join(ds.column_names)}): set data.text_field")
    for start in range(0, len(ds), _ROWS_PER_READ):
        for k, text in enumerate(ds[start : start + _ROWS_PER_READ][field]):
            if text is None:
                continue
            if not isinstance(text, str):
                raise DataError(f"{what}: column {field!r} holds {type(text).__name__}, not text")
            yield start + k, text


def _take(rows, budget: int, out: list[str]) -> int:
    """Append texts until ``budget`` UTF-8 bytes are used (the last one cut); bytes used."""
    used = 0
    for _, text in rows:
        if used >= budget:
            break
        blob = text.encode("utf-8")[: budget - used]
        used += len(blob)
        out.append(blob.decode("utf-8", errors="ignore"))
    return used


def read_documents(path: str, field: str, max_bytes: int, val_fraction: float) -> tuple[list[str], list[str]]:
    """(train documents, validation documents) of the dataset saved at ``path``, at most ``max_bytes`` of text."""
    p = Path(path).expanduser()
    ds = _load(p)
    train: list[str] = []
    val: list[str] = []
    if isinstance(ds, dict):  # DatasetDict
        if not ds:
            raise DataError(f"dataset {p} has no splits")
        train_name = "train" if "train" in ds else next((s for s in ds if s not in VAL_SPLITS), None)
        if train_name is None:
            raise DataError(f"dataset {p} has no train split (splits: {', '.join(ds)})")
        val_name = next((s for s in VAL_SPLITS if s in ds), None)
        if val_name is not None:
            val_budget = max(1, int(max_bytes * val_fraction))
            _take(_rows(ds[val_name], field, f"{p} [{val_name}]"), val_budget, val)
            _take(_rows(ds[train_name], field, f"{p} [{train_name}]"), max_bytes - val_budget, train)
            return train, val
        ds = ds[train_name]
    used = 0
    for i, text in _rows(ds, field, str(p)):
        if used >= max_bytes:
            break
        blob = text.encode("utf-8")[: max_bytes - used]
        used += len(blob)
        (val if _is_val_row(i, val_fraction) else train).append(blob.decode("utf-8", errors="ignore"))
    if not val or len(train) < len(val):  # very few rows: hold out the last ones (or the tail of one) instead
        docs = train + val
        if len(docs) == 1:
            cut = int(len(docs[0]) * (1 - val_fraction))
            return [docs[0][:cut]], [docs[0][cut:]]
        cut = max(1, int(len(docs) * (1 - val_fraction)))
        train, val = docs[:cut], docs[cut:]
    return train, val
