"""Mixture of Thoughts: parallel, reproducible thought branches in transformers.

    import mixture_of_thoughts as mot
    thinker = mot.load("smollm2")          # or a run directory, or nothing for the shipped model
    result = thinker.think("Name a new colour.", branches=8, creativity=1.0, max_new_tokens=40)

Everything else lives in the subpackages (docs/architecture.md shows their floors); ``load`` and
``Thinker`` are imported on first use, so ``import mixture_of_thoughts`` stays light.
"""

from __future__ import annotations

__all__ = ["load", "Thinker"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mixture_of_thoughts' has no attribute {name!r}")
