"""Train/validation split and seeded random batches (nanoGPT's recipe: first 90% train)."""

from __future__ import annotations

import torch

from ..errors import DataError
from .tokenizer import CharTokenizer

TRAIN_FRACTION = 0.9


class CharDataset:
    """The encoded corpus split into train (first 90%) and validation (last 10%).

    Args:
        text: the whole corpus.
        tokenizer: encodes it; built from ``text`` when ``None``.
        block_size: context length; both splits must hold more than one block.
    """

    def __init__(self, text: str, block_size: int, tokenizer: CharTokenizer | None = None):
        self.tokenizer = tokenizer or CharTokenizer.from_text(text)
        ids = self.tokenizer.encode_tensor(text)
        n = int(TRAIN_FRACTION * len(ids))
        self.train, self.val = ids[:n], ids[n:]
        self.block_size = block_size
        for name, split in (("training", self.train), ("validation", self.val)):
            if len(split) <= block_size:
                need = int((block_size + 1) / (1 - TRAIN_FRACTION)) + 1
                raise DataError(
                    f"the corpus is too short: its {name} split has {len(split)} characters but one "
                    f"block needs {block_size + 1}; give at least ~{need} characters or a smaller --block-size")

    def split(self, name: str) -> torch.Tensor:
        return self.train if name == "train" else self.val


def get_batch(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows ``x = data[i:i+T]``, ``y = data[i+1:i+T+1]``, offsets from ``generator``.

    Returns:
        ``(x, y)``, each ``(batch_size, block_size)`` long tensors on ``device``.
    """
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    offsets = ix[:, None] + torch.arange(block_size + 1)[None, :]  # (B, T+1), one gather, no loop
    chunk = data[offsets]
    return chunk[:, :-1].to(device), chunk[:, 1:].to(device)
