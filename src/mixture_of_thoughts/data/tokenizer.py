"""A character tokenizer: one id per distinct character of the training text.

It is built from the training text, saved as ``tokenizer.json`` beside the weights and loaded from
there, so a model always decodes with the vocabulary it was trained on. Characters a prompt holds
but the vocabulary lacks are an error by default (naming them and their positions); ``skip`` drops
them and ``replace`` maps them to a replacement character that is in the vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError, DataError

UNKNOWN_POLICIES = ("error", "skip", "replace")


class CharTokenizer:
    """Maps characters to ids (sorted by code point, as nanoGPT does) and back.

    Args:
        chars: the vocabulary, one string per id.
    """

    def __init__(self, chars: list[str]):
        if not chars or len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise DataError("a tokenizer vocabulary must be a non-empty list of distinct single characters")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, unknown: str = "error", replacement: str | None = None) -> list[int]:
        """Ids of ``text``.

        Args:
            text: the string to encode.
            unknown: what to do with characters outside the vocabulary: ``"error"`` (raise a
                :class:`DataError` naming them and their positions), ``"skip"`` (drop them) or
                ``"replace"`` (use ``replacement``; default ``" "`` if in the vocabulary, else
                the first vocabulary character).
        """
        if unknown not in UNKNOWN_POLICIES:
            raise DataError(f"unknown-chars policy must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        bad = [(i, c) for i, c in enumerate(text) if c not in self.stoi]
        if bad and unknown == "error":
            shown = ", ".join(f"{c!r} at {i}" for i, c in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise DataError(f"the text holds characters outside the model's vocabulary: {shown}{more}. "
                            "Remove them, or pass --unknown-chars skip|replace")
        if unknown == "replace":
            rep = replacement if replacement is not None else (" " if " " in self.stoi else self.chars[0])
            if rep not in self.stoi:
                raise DataError(f"replacement character {rep!r} is not in the vocabulary either")
            return [self.stoi.get(c, self.stoi[rep]) for c in text]
        return [self.stoi[c] for c in text if c in self.stoi]

    def encode_tensor(self, text: str) -> torch.Tensor:
        """:meth:`encode` with ``unknown="error"`` as a ``long`` tensor, vectorised for a whole corpus.

        Code points are looked up in the sorted vocabulary with one ``searchsorted``: ~40 ms for the
        1.1 M characters of Tiny Shakespeare, where the per-character lookup takes ~250 ms.
        """
        if not text:
            return torch.zeros(0, dtype=torch.long)
        codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
        vocab, order = torch.sort(torch.tensor([ord(c) for c in self.chars]))
        at = torch.searchsorted(vocab, codes).clamp_(max=len(self.chars) - 1)
        if not torch.equal(vocab[at], codes):
            self.encode(text, unknown="error")  # raises, naming the characters and their positions
        return order[at]

    def decode(self, ids) -> str:
        if torch.is_tensor(ids):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            if d.get("type") != "char" or not isinstance(d.get("chars"), list):
                raise ValueError("not a character tokenizer")
            return cls(d["chars"])
        except (OSError, ValueError, DataError) as e:
            raise CheckpointError(f"tokenizer file {path} is missing or corrupt ({e})") from None
