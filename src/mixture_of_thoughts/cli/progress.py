"""Progress bars for the commands (library code takes callbacks and imports no tqdm).

* :class:`TqdmTrainProgress`: a tqdm-backed :class:`~mixture_of_thoughts.training.trainer.TrainProgress`.
* :func:`tqdm_track`: wraps a list in a tqdm bar (``track`` of ``experiments.compare.run_compare``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def tqdm_track(items: list, desc: str) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


class TqdmTrainProgress:
    """A tqdm bar over the training steps, showing the step's loss and the last evaluation."""

    def __init__(self) -> None:
        self._bar = None
        self._last_eval: dict[str, str] = {}

    def start(self, total: int, initial: int, desc: str) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step")

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        evaluated = "val_loss" in metrics
        if evaluated:
            self._last_eval = {"train": f"{metrics['train_loss']:.4f}", "val": f"{metrics['val_loss']:.4f}",
                               "tok_s": f"{metrics['tokens_per_s']:.0f}"}
        self._bar.set_postfix(loss=f"{metrics['loss']:.4f}", **self._last_eval, refresh=False)
        self._bar.update(step - self._bar.n)  # redraws (at tqdm's rate) with the new postfix
        if evaluated:
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
