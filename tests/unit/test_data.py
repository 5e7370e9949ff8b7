"""Data: the stdlib split is deterministic and disjoint, streams are pure functions of (seed, peer, step),
text and nanoGPT .bin sources load, and every bad input is a one-line DataError."""

import os

import numpy as np
import pytest
import torch

from p2pmodel.core.errors import DataError, UsageError
from p2pmodel.data import TrainStream, load_corpus, validation_batches
from p2pmodel.data.corpus import _is_val, stdlib_files

MAX_BYTES = 2_000_000
VAL_FRACTION = 0.05

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def stdlib():
    return load_corpus("stdlib", [], MAX_BYTES, VAL_FRACTION, 130)


def test_stdlib_split_is_deterministic(stdlib):
    again = load_corpus("stdlib", [], MAX_BYTES, VAL_FRACTION, 130)
    assert torch.equal(stdlib.train, again.train) and torch.equal(stdlib.val, again.val)
    assert stdlib.fingerprint == again.fingerprint and len(stdlib.fingerprint) == 64
    assert stdlib.train.dtype == torch.uint8 and stdlib.max_token < 256
    assert len(stdlib.train) + len(stdlib.val) == MAX_BYTES


def test_stdlib_split_is_by_file_and_disjoint(stdlib):
    root, files = stdlib_files()
    train, val, total = bytearray(), bytearray(), 0
    train_files, val_files = set(), set()
    for f in files:
        if total >= MAX_BYTES:
            break
        blob = f.read_bytes()[: MAX_BYTES - total]
        total += len(blob)
        rel = f.relative_to(root).as_posix()
        if _is_val(rel, VAL_FRACTION):
            val.extend(blob)
            val_files.add(rel)
        else:
            train.extend(blob)
            train_files.add(rel)
    assert val_files and train_files and not val_files & train_files
    assert bytes(stdlib.val.numpy()) == bytes(val)
    assert bytes(stdlib.train.numpy()) == bytes(train)
    # content check: held-out windows are (almost all) absent from the training bytes
    train_bytes = bytes(train)
    windows = [bytes(val[i : i + 200]) for i in range(0, len(val) - 200, max(1, len(val) // 40))]
    unseen = sum(w not in train_bytes for w in windows)
    assert unseen >= 0.9 * len(windows), (unseen, len(windows))


def test_validation_batches_fixed(stdlib):
    a = list(validation_batches(stdlib.val, 64, 3, 4))
    b = list(validation_batches(stdlib.val, 64, 3, 4))
    assert len(a) == 3
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape == (4, 64) and torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[:, 1:], ya[:, :-1])


# --- the training stream --------------------------------------------------------------------------
def test_train_stream_is_a_pure_function(stdlib):
    a = TrainStream(stdlib.train, 64, seed=0, peer_key="peer-a")
    a2 = TrainStream(stdlib.train, 64, seed=0, peer_key="peer-a")
    x1, y1 = a.batch(5, 8)
    a.batch(6, 8)  # no hidden state: drawing other steps changes nothing
    x2, y2 = a2.batch(5, 8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(a.batch(5, 8)[0], x1)
    assert x1.shape == (8, 64) and x1.dtype == torch.long
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the next tokens


def test_train_stream_differs_by_peer_seed_and_step(stdlib):
    x = TrainStream(stdlib.train, 64, 0, "peer-a").batch(3, 8)[0]
    assert not torch.equal(x, TrainStream(stdlib.train, 64, 0, "peer-b").batch(3, 8)[0])
    assert not torch.equal(x, TrainStream(stdlib.train, 64, 1, "peer-a").batch(3, 8)[0])
    assert not torch.equal(x, TrainStream(stdlib.train, 64, 0, "peer-a").batch(4, 8)[0])


def test_train_stream_too_short():
    with pytest.raises(ValueError):
        TrainStream(torch.zeros(10, dtype=torch.uint8), 64, 0, "p")


# --- text files -----------------------------------------------------------------------------------
def _write_text_files(d, n=30):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (d / f"doc{i:02d}.txt").write_text(f"document {i}: " + "lorem ipsum dolor sit amet " * (40 + i))
    (d / "skip.md").write_text("not matched " * 100)


def test_text_source_by_glob(tmp_path):
    _write_text_files(tmp_path / "corpus")
    pattern = str(tmp_path / "corpus" / "*.txt")
    c = load_corpus("text", [pattern], 10_000_000, 0.1, 65)
    expected = sum(f.stat().st_size for f in (tmp_path / "corpus").glob("*.txt"))
    assert len(c.train) + len(c.val) == expected  # only *.txt, every byte once
    assert b"not matched" not in bytes(c.train.numpy()) + bytes(c.val.numpy())
    again = load_corpus("text", [pattern], 10_000_000, 0.1, 65)
    assert torch.equal(c.train, again.train) and c.fingerprint == again.fingerprint


def test_text_split_does_not_depend_on_where_the_files_are(tmp_path):
    _write_text_files(tmp_path / "one" / "data")
    _write_text_files(tmp_path / "two")
    a = load_corpus("text", [str(tmp_path / "one" / "data" / "*.txt")], 10_000_000, 0.1, 65)
    b = load_corpus("text", [str(tmp_path / "two" / "*.txt")], 10_000_000, 0.1, 65)
    assert a.fingerprint == b.fingerprint and torch.equal(a.train, b.train)


def test_text_recursive_glob_and_max_bytes(tmp_path):
    _write_text_files(tmp_path / "a" / "b")
    c = load_corpus("text", [str(tmp_path / "**" / "*.txt")], 5000, 0.1, 65)
    assert len(c.train) + len(c.val) == 5000


# --- nanoGPT .bin ---------------------------------------------------------------------------------
def test_bin_source(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 50257, 5000, dtype=np.uint16)
    val = rng.integers(0, 50257, 1000, dtype=np.uint16)
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    c = load_corpus("bin", [str(tmp_path)], 0, 0.05, 65)
    assert np.array_equal(c.train.numpy(), train.astype(np.int32))
    assert np.array_equal(c.val.numpy(), val.astype(np.int32))
    assert c.max_token == int(max(train.max(), val.max())) > 255
    x, y = TrainStream(c.train, 64, 0, "p").batch(0, 2)
    assert x.dtype == torch.long and int(x.max()) < 50257


# --- bad data -------------------------------------------------------------------------------------
def _data_error(*args) -> str:
    with pytest.raises(DataError) as e:
        load_corpus(*args)
    msg = str(e.value)
    assert msg and "\n" not in msg and isinstance(e.value, UsageError) and e.value.exit_code == 2
    return msg


def test_text_missing_files(tmp_path):
    assert "no files match" in _data_error("text", ["/nonexistent/*.txt"], 10_000, 0.1, 65)
    assert "data.paths" in _data_error("text", [], 10_000, 0.1, 65)
    (tmp_path / "dir.txt").mkdir()  # a directory is not a file
    assert "no files match" in _data_error("text", [str(tmp_path / "*.txt")], 10_000, 0.1, 65)


def test_text_empty_or_too_small(tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("tiny")
    assert "too little data" in _data_error("text", [str(tmp_path / "*.txt")], 10_000, 0.1, 65)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_text_unreadable(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x" * 10_000)
    f.chmod(0)
    try:
        assert "cannot read" in _data_error("text", [str(f)], 100_000, 0.1, 65)
    finally:
        f.chmod(0o600)


def test_bin_missing_empty_odd(tmp_path):
    assert "missing" in _data_error("bin", [str(tmp_path / "nope")], 0, 0.05, 65)
    assert "one directory" in _data_error("bin", [str(tmp_path), str(tmp_path)], 0, 0.05, 65)
    assert "one directory" in _data_error("bin", [], 0, 0.05, 65)
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    assert "val.bin" in _data_error("bin", [str(tmp_path)], 0, 0.05, 65)
    (tmp_path / "val.bin").write_bytes(b"")
    assert "empty" in _data_error("bin", [str(tmp_path)], 0, 0.05, 65)
    (tmp_path / "val.bin").write_bytes(b"abc")  # not whole uint16 tokens
    assert "odd size" in _data_error("bin", [str(tmp_path)], 0, 0.05, 65)
    np.arange(10, dtype=np.uint16).tofile(tmp_path / "val.bin")
    assert "too little data" in _data_error("bin", [str(tmp_path)], 0, 0.05, 65)


def test_unknown_source():
    assert "unknown data source" in _data_error("parquet", [], 10_000, 0.1, 65)
