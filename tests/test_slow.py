"""Long-running checks, run by `make test-all` (marked `slow`)."""

from __future__ import annotations

import pytest

from mixture_of_thoughts.config import ModelConfig, TrainConfig, preset
from mixture_of_thoughts.training.trainer import train

NANOGPT_CPU_RECIPE_VAL_LOSS = 1.88  # nats per character, nanoGPT's README for this recipe


@pytest.mark.slow
def test_cpu_small_reaches_nanogpt_quality(shakespeare, tmp_path):
    """nanoGPT's CPU recipe (cpu-small, 2000 steps, batch 12) on Tiny Shakespeare: val loss <= 1.88."""
    p = preset("cpu-small")
    res = train(str(shakespeare), tmp_path / "run", ModelConfig.from_dict(p["model"]),
                TrainConfig.from_dict({**p["train"], "eval_interval": 500}), device="cpu")
    assert res.step == 2000
    assert res.last_val_loss <= NANOGPT_CPU_RECIPE_VAL_LOSS
