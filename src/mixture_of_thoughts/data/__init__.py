"""Corpus resolution, the character tokenizer, and seeded batches."""

from .batches import CharDataset, get_batch
from .corpus import load_corpus, resolve_corpus
from .tokenizer import CharTokenizer

__all__ = ["CharDataset", "CharTokenizer", "get_batch", "load_corpus", "resolve_corpus"]
