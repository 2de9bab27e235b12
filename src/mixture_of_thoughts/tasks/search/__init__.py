"""Search over thoughts on a verifiable step task, every method at the same budget.

A *task* (:class:`Task`) has states, valid moves, a verifier and a text form a language model can
continue; Game of 24 is :class:`Game24Task`. A method spends a *budget* of model token positions
(:class:`Budget`): a row the model reads or writes costs one position per token, its prompt
included (the implementation recomputes prompts, and the count says so). What a method finds is a
set of distinct verified solutions (:class:`SearchResult`).

Every method is *anytime*: what it does never depends on the budget's size, only on when the budget
runs out. Each solution is recorded with the positions spent when it was found, so one run at the
largest budget gives the result at every smaller one (:meth:`SearchResult.upto`; a test checks this
equals running at the smaller budget).

Methods:

* :func:`sample_traces`: whole traces sampled at a temperature (and, with a thought model, a
  creativity), best-of-N by the verifier;
* :func:`distinct_traces`: whole traces sampled without replacement (stochastic beam search: the
  rows of a batch see each other, and no two are the same text), best-of-N by the verifier; with a
  learned value, the beam is pruned each time a row ends a step line (``distinct-value``);
* :func:`beam_search`: Tree of Thoughts' BFS over steps: the model proposes next lines, invalid
  ones are dropped, the ``width`` states with the highest model log-likelihood are kept (or, with a
  learned value, the ``width`` with the highest value, dead ones pruned);
* :func:`mcts`: PUCT over steps, the model's sampled step frequencies as priors (weighted by a value,
  which also prunes, when one is given), the verifier's reward (a new solution) at the leaves;
* :func:`hybrid`: the search picks first steps, a masked-diffusion model infills the rest of the
  trace (:class:`Infiller`), the verifier scores;
* :func:`denoised_answers`: whole answers written by a masked-diffusion model alone (MGDM's recipe,
  :mod:`.mgdm`), several rows per batch, best-of-N by the verifier;
* :func:`random_steps`: uniform random valid moves, as many attempts as the budget buys traces
  (the floor any model must beat); :func:`exact` is the ceiling (the solver: no model).

:class:`TaskEvaluator` puts the same interface under the diffusion multi-branch search
(:func:`..generation.denoise_search.branch_search`): the task's verifier scores the branches.

The package: :mod:`.base` (the task, budget and result types, the value protocol), :mod:`.models`
(the line model and the infiller), :mod:`.methods` (every method) and :mod:`.evaluator`.
"""

from ...rng import RowNoise  # noqa: F401  (search.RowNoise: the noise a LineModel's rows draw from)
from .base import BLOCK_SEP, Budget, Game24Task, SearchResult, StateValue, Task, TaskState, judge
from .evaluator import TaskEvaluator
from .methods import (
    FREE_SIMULATIONS,
    LINE_CHARS,
    REST_CHARS,
    TRACE_CHARS,
    beam_schedule,
    beam_search,
    denoised_answers,
    distinct_traces,
    exact,
    hybrid,
    mcts,
    random_steps,
    sample_traces,
    trace_cost,
)
from .models import Infiller, LineModel

__all__ = [
    "BLOCK_SEP", "Budget", "FREE_SIMULATIONS", "Game24Task", "Infiller", "LINE_CHARS", "LineModel",
    "REST_CHARS", "SearchResult", "StateValue", "TRACE_CHARS", "Task", "TaskEvaluator", "TaskState", "beam_schedule",
    "beam_search", "denoised_answers", "distinct_traces", "exact", "hybrid", "judge", "mcts", "random_steps",
    "sample_traces", "trace_cost",
]
