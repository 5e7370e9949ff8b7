"""Datasets as token tensors. corpus.py: the embedded default (Python's stdlib source), user text files and
nanoGPT ``.bin`` files, each split into a fixed validation set every peer computes identically;
stream.py: a per-peer training stream that is a pure function of (seed, peer key, step); tokenize.py: a
tokenizer from a local path (tokenizers / transformers) for text sources; hf_disk.py: documents of a
``datasets`` dataset saved to disk (optional dependency)."""

from p2pmodel.data.corpus import Corpus, load_corpus, load_data
from p2pmodel.data.stream import TrainStream, validation_batches

__all__ = ["Corpus", "load_corpus", "load_data", "TrainStream", "validation_batches"]
