"""Load a corpus and split it deterministically: the same files give the same bytes on every peer.

Byte-level sources (stdlib, text) become uint8 token tensors (vocab 256), or int32 ids when a tokenizer is
set (tokenize.py); nanoGPT ``.bin`` files are memory-mapped uint16 tokens; ``hf_disk`` reads a saved
``datasets`` dataset (hf_disk.py). Files go to validation by a hash of their relative path, so the split does not
depend on file order or on how many peers there are.
"""

import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from p2pmodel.core.errors import DataError


@dataclass(frozen=True)
class Corpus:
    train: torch.Tensor  # 1-D integer tokens
    val: torch.Tensor
    fingerprint: str  # sha256 of the validation tokens: peers with a different val set are another run

    @property
    def max_token(self) -> int:
        return int(max(self.train.max(), self.val.max()))


def _is_val(relpath: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big")
    return (h % 1_000_000) < val_fraction * 1_000_000


def stdlib_files() -> tuple[Path, list[Path]]:
    """Python's own source files, sorted by relative path (present wherever Python is)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    return root, files


def _read_split(root: Path, files: list[Path], max_bytes: int, val_fraction: float) -> tuple[bytes, bytes]:
    train, val, total = bytearray(), bytearray(), 0
    for f in files:
        if total >= max_bytes:
            break
        try:
            blob = f.read_bytes()[: max_bytes - total]
        except OSError as e:
            raise DataError(f"cannot read {f}: {e.strerror}") from None
        total += len(blob)
        rel = f.relative_to(root).as_posix() if f.is_relative_to(root) else f.as_posix()
        (val if _is_val(rel, val_fraction) else train).extend(blob)
    if not val or len(train) < len(val):  # one or few files: hold out the tail instead
        joined = bytes(train + val)
        cut = int(len(joined) * (1 - val_fraction))
        train, val = joined[:cut], joined[cut:]
    return bytes(train), bytes(val)


def _bytes_tokens(blob: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def _finish(train: torch.Tensor, val: torch.Tensor, what: str, min_tokens: int) -> Corpus:
    if len(train) < min_tokens or len(val) < min_tokens:
        raise DataError(f"{what}: too little data ({len(train)} train / {len(val)} val tokens, need {min_tokens} each)")
    fp = hashlib.sha256(val.numpy().tobytes()).hexdigest()
    return Corpus(train=train, val=val, fingerprint=fp)


def load_corpus(
    source: str,
    paths: list[str],
    max_bytes: int,
    val_fraction: float,
    min_tokens: int,
    tokenizer_path: str | None = None,
    text_field: str = "text",
    vocab_size: int | None = None,
) -> Corpus:
    """Load the configured corpus or raise DataError with one clear line.

    Without ``tokenizer_path`` text is byte-level (uint8, vocab 256); with it, text sources become int32 ids
    of that tokenizer, whose size must fit ``vocab_size`` when given."""
    tok = None
    if tokenizer_path:
        if source == "bin":
            raise DataError("data.tokenizer_path does not apply to data.source = 'bin' (already token ids)")
        from p2pmodel.data.tokenize import load_tokenizer

        tok = load_tokenizer(tokenizer_path)
        if vocab_size is not None and tok.size > vocab_size:
            raise DataError(f"tokenizer {tokenizer_path} has {tok.size} tokens but model.vocab_size is {vocab_size}")
    if tok is not None and source in ("stdlib", "text"):
        raw = load_corpus(source, paths, max_bytes, val_fraction, 1)  # the same bytes and split, then ids
        train, val = (tok.encode_text(t.numpy().tobytes().decode("utf-8", "replace")) for t in (raw.train, raw.val))
        return _finish(train, val, f"{source} corpus tokenized by {tokenizer_path}", min_tokens)
    if source == "hf_disk":
        if len(paths) != 1:
            raise DataError("data.source = 'hf_disk' needs data.paths = [one directory written by save_to_disk]")
        from p2pmodel.data.hf_disk import read_documents

        train_docs, val_docs = read_documents(paths[0], text_field, max_bytes, val_fraction)
        what = f"dataset {paths[0]}"
        if tok is not None:
            return _finish(tok.encode_documents(train_docs), tok.encode_documents(val_docs), what, min_tokens)
        joined = ("\n\n".join(docs).encode("utf-8") for docs in (train_docs, val_docs))
        return _finish(*(_bytes_tokens(b) for b in joined), what, min_tokens)
    if source == "stdlib":
        root, files = stdlib_files()
        if not files:
            raise DataError(f"no Python source files found under {root}")
        train, val = _read_split(root, files, max_bytes, val_fraction)
        return _finish(_bytes_tokens(train), _bytes_tokens(val), "stdlib corpus", min_tokens)
    if source == "text":
        if not paths:
            raise DataError("data.source = 'text' needs data.paths (one or more globs)")
        files = sorted({Path(f) for pat in paths for f in glob.glob(pat, recursive=True) if Path(f).is_file()})
        if not files:
            raise DataError(f"no files match data.paths {paths}")
        # split by the path relative to the files' common directory, so copies of the same files in two
        # places (two peers' machines) give the same validation set
        root = Path(os.path.commonpath([f.resolve().parent for f in files]))
        train, val = _read_split(root, [f.resolve() for f in files], max_bytes, val_fraction)
        return _finish(_bytes_tokens(train), _bytes_tokens(val), f"text files {paths}", min_tokens)
    if source == "bin":
        if len(paths) != 1:
            raise DataError("data.source = 'bin' needs data.paths = [one directory holding train.bin and val.bin]")
        d = Path(paths[0])
        split = []
        for name in ("train.bin", "val.bin"):
            f = d / name
            if not f.is_file():
                raise DataError(f"missing {f}")
            size = f.stat().st_size
            if size < 2:
                raise DataError(f"{f} is empty")
            if size % 2:
                raise DataError(f"{f} has an odd size ({size} bytes): not a file of uint16 tokens")
            try:
                mm = np.memmap(f, dtype=np.uint16, mode="r")
            except OSError as e:
                raise DataError(f"cannot read {f}: {e.strerror or e}") from None
            split.append(torch.from_numpy(np.asarray(mm, dtype=np.int32)))
        return _finish(split[0], split[1], f"bin dir {d}", min_tokens)
    raise DataError(f"unknown data source {source!r}")


def load_data(data_cfg, min_tokens: int, vocab_size: int | None = None) -> Corpus:
    """``load_corpus`` from a DataConfig section (every field, tokenizer included)."""
    return load_corpus(
        data_cfg.source,
        data_cfg.paths,
        data_cfg.max_corpus_bytes,
        data_cfg.val_fraction,
        min_tokens,
        tokenizer_path=getattr(data_cfg, "tokenizer_path", None),
        text_field=getattr(data_cfg, "text_field", "text"),
        vocab_size=vocab_size,
    )
