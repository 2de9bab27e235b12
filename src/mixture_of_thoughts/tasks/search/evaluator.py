"""A task's verifier as an evaluator of the diffusion branch search
(:func:`...generation.denoise_search.branch_search`)."""

from __future__ import annotations

import torch

from .base import Task


class TaskEvaluator:
    """A task's verifier as an evaluator of :func:`..generation.denoise_search.branch_search` (``score(texts,
    prompt) -> (N,)``, higher is better), so multi-branch denoising searches any :class:`Task`:

    1 for a trace that states a verified solution; otherwise partial credit for its leading valid step
    lines, ``0.5 * (1 - 2**-valid)`` (below any solution, more for a longer valid start), 0 for none.
    The prompt is the task's text of the start state (leading newlines are ignored).
    """

    def __init__(self, task: Task, puzzle):
        self.task, self.puzzle = task, puzzle

    def score(self, texts: list[str], prompt: str) -> torch.Tensor:
        out = []
        for t in texts:
            trace = (prompt + t).lstrip("\n").split("\n\n")[0]
            if self.task.check_text(self.puzzle, trace) is not None:
                out.append(1.0)
                continue
            s, valid = self.task.start(self.puzzle), 0
            for line in trace.splitlines()[1:]:
                move = None if s.done else self.task.parse_line(s, line)
                if move is None:
                    break
                s, valid = self.task.apply(s, move), valid + 1
            out.append(0.5 * (1 - 2.0 ** -valid))
        return torch.tensor(out)
