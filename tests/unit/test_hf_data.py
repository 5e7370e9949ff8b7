"""data/tokenize.py and data/hf_disk.py: a local tokenizer for text sources (int32 ids) and datasets saved to disk;
the byte-level default is untouched."""

import sys
import types
from pathlib import Path

import pytest
import torch

from p2pmodel.config import load_config
from p2pmodel.core.errors import DataError
from p2pmodel.data import TrainStream, load_corpus, load_data, validation_batches

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "configs" / "hf" / "tokenizer-tiny"
TEXT = "def add(a, b):\n    return a + b  # sum\n\nclass Point:\n    x: int = 0\n"


def _write_files(tmp_path: Path, n: int = 12) -> str:
    for i in range(n):
        (tmp_path / f"f{i:02d}.py").write_text(TEXT * 40 + f"# file {i}\n")
    return str(tmp_path / "*.py")


def test_shipped_tokenizer_loads_and_round_trips():
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer

    from p2pmodel.data.tokenize import load_tokenizer

    tok = load_tokenizer(str(TOKENIZER))
    assert tok.size == 512 and tok.eos_id == 0
    ids = tok.encode_text(TEXT)
    assert ids.dtype == torch.int32 and 0 < len(ids) < len(TEXT.encode()) and int(ids.max()) < 512
    raw = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    assert raw.decode(ids.tolist()) == TEXT
    # the file itself works too, and long text is cut at line ends without changing the result much
    assert torch.equal(load_tokenizer(str(TOKENIZER / "tokenizer.json")).encode_text(TEXT), ids)
    docs = tok.encode_documents(["a = 1", "b = 2"])
    assert (docs == 0).sum() == 2 and docs[-1] == 0


def test_transformers_autotokenizer_gives_the_same_ids():
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from p2pmodel.data.tokenize import load_tokenizer

    auto = AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)
    ours = load_tokenizer(str(TOKENIZER)).encode_text(TEXT).tolist()
    assert auto(TEXT, add_special_tokens=False)["input_ids"] == ours
    assert len(auto) == 512 and auto.eos_token_id == 0


def test_text_source_with_tokenizer_gives_int32_ids_over_the_same_split(tmp_path):
    pytest.importorskip("tokenizers")
    pat = _write_files(tmp_path)
    raw = load_corpus("text", [pat], 1_000_000, 0.2, 64)
    assert raw.train.dtype == torch.uint8  # the default stays bytes
    tok = load_corpus("text", [pat], 1_000_000, 0.2, 64, tokenizer_path=str(TOKENIZER), vocab_size=512)
    assert tok.train.dtype == tok.val.dtype == torch.int32
    assert tok.max_token < 512 and len(tok.train) < len(raw.train)
    assert tok.fingerprint != raw.fingerprint
    again = load_corpus("text", [pat], 1_000_000, 0.2, 64, tokenizer_path=str(TOKENIZER))
    assert again.fingerprint == tok.fingerprint and torch.equal(again.train, tok.train)
    x, y = TrainStream(tok.train, 32, 0, "p").batch(0, 4)
    assert x.dtype == torch.long and x.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    assert next(validation_batches(tok.val, 32, 1, 2))[0].dtype == torch.long


def test_stdlib_with_tokenizer_through_the_config_section():
    pytest.importorskip("tokenizers")
    cfg = load_config(None, ["data.max_corpus_bytes=200000", f"data.tokenizer_path={TOKENIZER}"])
    corpus = load_data(cfg.data, 130, vocab_size=512)
    assert corpus.train.dtype == torch.int32 and corpus.max_token < 512
    assert load_data(load_config(None, ["data.max_corpus_bytes=200000"]).data, 130).train.dtype == torch.uint8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tokenizer_path": "/nonexistent/tok"}, "does not exist"),
        ({"tokenizer_path": str(TOKENIZER), "vocab_size": 256}, "has 512 tokens but model.vocab_size is 256"),
    ],
)
def test_tokenizer_errors_are_one_line_data_errors(tmp_path, kwargs, message):
    pytest.importorskip("tokenizers")
    with pytest.raises(DataError, match=message) as exc:
        load_corpus("text", [_write_files(tmp_path)], 1_000_000, 0.2, 64, **kwargs)
    assert "\n" not in str(exc.value)


def test_tokenizer_errors_without_the_library(tmp_path, monkeypatch):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    if "tokenizers" in sys.modules or pytest.importorskip("tokenizers"):
        with pytest.raises(DataError, match="cannot load"):
            load_corpus("stdlib", [], 100_000, 0.05, 64, tokenizer_path=str(bad))
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(DataError, match=r"p2pmodel\[hf\]"):
        load_corpus("stdlib", [], 100_000, 0.05, 64, tokenizer_path=str(bad))
    with pytest.raises(DataError, match="does not apply"):
        load_corpus("bin", [str(tmp_path)], 100_000, 0.05, 64, tokenizer_path=str(bad))


# --- hf_disk, against a stand-in with the datasets API used (load_from_disk, Dataset slicing, DatasetDict) ---


class _Dataset:
    def __init__(self, columns: dict[str, list]):
        self._cols = columns

    @property
    def column_names(self):
        return list(self._cols)

    def __len__(self):
        return len(next(iter(self._cols.values())))

    def __getitem__(self, s: slice):
        return {k: v[s] for k, v in self._cols.items()}


class _DatasetDict(dict):
    pass


def _fake_datasets(monkeypatch, saved: dict):
    mod = types.ModuleType("datasets")
    mod.load_from_disk = lambda path: saved[path]
    monkeypatch.setitem(sys.modules, "datasets", mod)


def _docs(n: int, tag: str = "doc") -> list[str]:
    return [f"{tag} {i}: " + "lorem ipsum dolor sit amet " * 8 for i in range(n)]


def test_hf_disk_dataset_split_by_row_hash_bytes_and_tokens(tmp_path, monkeypatch):
    _fake_datasets(monkeypatch, {str(tmp_path): _Dataset({"text": _docs(400), "id": list(range(400))})})
    a = load_corpus("hf_disk", [str(tmp_path)], 1_000_000, 0.1, 64)
    assert a.train.dtype == torch.uint8 and len(a.val) > 0 and len(a.train) > 5 * len(a.val)
    assert load_corpus("hf_disk", [str(tmp_path)], 1_000_000, 0.1, 64).fingerprint == a.fingerprint
    small = load_corpus("hf_disk", [str(tmp_path)], 20_000, 0.1, 64)
    assert len(small.train) + len(small.val) <= 20_000 + 2 * 400
    if pytest.importorskip("tokenizers"):
        t = load_corpus("hf_disk", [str(tmp_path)], 1_000_000, 0.1, 64, tokenizer_path=str(TOKENIZER))
        assert t.train.dtype == torch.int32 and int((t.train == 0).sum() + (t.val == 0).sum()) == 400  # eos per doc


def test_hf_disk_dataset_dict_uses_its_validation_split(tmp_path, monkeypatch):
    dd = _DatasetDict(train=_Dataset({"body": _docs(100)}), validation=_Dataset({"body": _docs(10, "val")}))
    _fake_datasets(monkeypatch, {str(tmp_path): dd})
    cfg = load_config(None, ["data.source=hf_disk", f'data.paths=["{tmp_path}"]', "data.text_field=body"])
    c = load_data(cfg.data, 64)
    assert bytes(c.val.numpy()).startswith(b"val 0:") and bytes(c.train.numpy()).startswith(b"doc 0:")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body\)"):
        load_corpus("hf_disk", [str(tmp_path)], 1_000_000, 0.1, 64)


def test_hf_disk_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="needs the datasets package"):
        load_corpus("hf_disk", [str(tmp_path)], 1_000_000, 0.1, 64)
    with pytest.raises(DataError, match="one directory"):
        load_corpus("hf_disk", [], 1_000_000, 0.1, 64)
    _fake_datasets(monkeypatch, {str(tmp_path): _Dataset({"text": [None, 3]})})
    with pytest.raises(DataError, match="holds int, not text"):
        load_corpus("hf_disk", [str(tmp_path)], 1_000_000, 0.1, 64)
    with pytest.raises(DataError, match="not a directory"):
        load_corpus("hf_disk", [str(tmp_path / "missing")], 1_000_000, 0.1, 64)
