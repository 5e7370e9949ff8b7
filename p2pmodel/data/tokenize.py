"""Text → token ids with a tokenizer loaded from a local path (never downloaded).

``data.tokenizer_path`` is a ``tokenizers`` ``tokenizer.json`` file, a directory holding one, or a directory
that ``transformers.AutoTokenizer`` loads (e.g. GPT-2's vocab.json + merges.txt). A directory with a
tokenizer.json always goes through the ``tokenizers`` library, so the ids do not depend on whether
transformers is installed. Ids come back as int32 tensors (the byte path stays uint8).
"""

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from p2pmodel.core.errors import DataError

CHUNK_CHARS = 1 << 16  # long text is encoded in pieces cut at line ends (bounded memory, batch-parallel)
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


@dataclass(frozen=True)
class TextTokenizer:
    name: str
    size: int  # number of ids it can produce (including added/special tokens)
    eos_id: int | None  # appended after each document of a dataset, when known
    _encode_batch: Callable[[list[str]], list[list[int]]]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._encode_batch(texts) if texts else []

    def encode_text(self, text: str) -> torch.Tensor:
        """One long text (concatenated files) → 1-D int32 ids."""
        return _concat(self.encode_batch(_chunks(text)), None)

    def encode_documents(self, docs: Iterable[str], batch: int = 256) -> torch.Tensor:
        """Documents → their ids, each followed by the end-of-text id when the tokenizer has one."""
        out, pending = [], []
        for d in docs:
            pending.append(d)
            if len(pending) >= batch:
                out.append(_concat(self.encode_batch(pending), self.eos_id))
                pending = []
        if pending:
            out.append(_concat(self.encode_batch(pending), self.eos_id))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.int32)


def _chunks(text: str) -> list[str]:
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + CHUNK_CHARS)
        if end < len(text):
            nl = text.rfind("\n", start, end)
            if nl > start:
                end = nl + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def _concat(seqs: list[list[int]], sep: int | None) -> torch.Tensor:
    parts = []
    for s in seqs:
        parts.append(np.asarray(s, dtype=np.int64))
        if sep is not None:
            parts.append(np.asarray([sep], dtype=np.int64))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 2**31):
        raise DataError("tokenizer produced ids outside the int32 range")
    return torch.from_numpy(ids.astype(np.int32))


def _from_tokenizer_json(path: Path) -> TextTokenizer:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError(
            f"data.tokenizer_path {path} needs the tokenizers package: pip install 'p2pmodel[hf]'"
        ) from None
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise DataError(f"data.tokenizer_path: cannot load {path}: {str(e).splitlines()[0] if str(e) else e}") from None
    eos = next((i for t in _EOS_CANDIDATES if (i := tok.token_to_id(t)) is not None), None)

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    return TextTokenizer(str(path), tok.get_vocab_size(with_added_tokens=True), eos, encode)


def _from_transformers(path: Path) -> TextTokenizer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(
            f"data.tokenizer_path {path} has no tokenizer.json; loading it needs transformers: "
            "pip install 'p2pmodel[hf]'"
        ) from None
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"data.tokenizer_path: cannot load {path}: {str(e).strip().splitlines()[0]}") from None

    def encode(texts: list[str]) -> list[list[int]]:
        return tok(texts, add_special_tokens=False)["input_ids"]

    return TextTokenizer(str(path), len(tok), tok.eos_token_id, encode)


def load_tokenizer(path: str) -> TextTokenizer:
    """The tokenizer at ``path`` or DataError with one clear line."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data.tokenizer_path: {p} does not exist (a tokenizer.json or a local tokenizer directory)")
    if p.is_file():
        return _from_tokenizer_json(p)
    if (p / "tokenizer.json").is_file():
        return _from_tokenizer_json(p / "tokenizer.json")
    return _from_transformers(p)
