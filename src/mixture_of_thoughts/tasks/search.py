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
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..errors import ConfigError
from ..generation.decoder import left_pad
from ..rng import RowNoise
from . import game24

BLOCK_SEP = "\n"  # the training text separates traces by a blank line: a prompt starts after one


class Task(Protocol):
    """A step task: what the search methods need of it."""

    def start(self, puzzle) -> game24.State: ...

    def moves(self, state) -> list: ...

    def apply(self, state, move): ...

    def solution(self, state) -> str | None:
        """The canonical key of the solution ``state`` reaches, or None."""

    def parse_line(self, state, line: str): ...

    def check_text(self, puzzle, text: str) -> str | None:
        """The canonical key of the solution a generated trace states, or None."""


class Game24Task:
    """Game of 24 as a :class:`Task` (states, moves and traces of :mod:`.game24`)."""

    def start(self, puzzle) -> game24.State:
        return game24.State.start(puzzle)

    def moves(self, state: game24.State) -> list[game24.Step]:
        return state.moves()

    def apply(self, state: game24.State, move: game24.Step) -> game24.State:
        return state.apply(move)

    def solution(self, state: game24.State) -> str | None:
        return game24.canonical(state.exprs[0]) if state.solved else None

    def parse_line(self, state: game24.State, line: str) -> game24.Step | None:
        return game24.parse_step(state, line)

    def check_text(self, puzzle, text: str) -> str | None:
        return game24.check_trace(puzzle, text)


@dataclass
class Budget:
    """Model token positions a method may spend."""

    limit: int
    spent: int = 0
    marks: list[int] = field(default_factory=list)  # positions spent after each row the last take charged
    clock: list[tuple[int, float]] = field(default_factory=list)  # (spent, time) after each take

    def __post_init__(self):
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ConfigError(f"a budget is a whole number of token positions >= 1, got {self.limit!r}")

    @property
    def left(self) -> int:
        return self.limit - self.spent

    def take(self, costs: Sequence[int]) -> int:
        """Charge rows in order while they fit; returns how many did (the rest are not used)."""
        n, self.marks = 0, []
        for c in costs:
            if self.spent + c > self.limit:
                break
            self.spent += c
            self.marks.append(self.spent)
            n += 1
        self.clock.append((self.spent, time.time()))
        return n


@dataclass
class SearchResult:
    """What a method found on one puzzle."""

    method: str
    solutions: dict[str, str] = field(default_factory=dict)  # canonical key -> the text that stated it
    positions: int = 0
    attempts: int = 0  # complete traces or leaves examined
    seconds: float = 0.0
    found: dict[str, int] = field(default_factory=dict)  # canonical key -> positions spent when found
    started: float = field(default_factory=time.time)
    clock: list[tuple[int, float]] = field(default_factory=list)  # (positions, seconds) as it went

    @property
    def solved(self) -> bool:
        return bool(self.solutions)

    def add(self, key: str | None, text: str, at: int) -> bool:
        """Record a verified solution found after ``at`` positions; True if it is new."""
        if key is None or key in self.solutions:
            return False
        self.solutions[key], self.found[key] = text, at
        return True

    def finish(self, budget: Budget) -> SearchResult:
        self.positions, self.seconds = budget.spent, time.time() - self.started
        self.clock = [(s, t - self.started) for s, t in budget.clock]
        return self

    def upto(self, limit: int) -> SearchResult:
        """What the method had found when it had spent ``limit`` positions (the result at that budget)."""
        keys = [k for k, at in self.found.items() if at <= limit]
        done = [(s, t) for s, t in self.clock if s <= limit]
        return SearchResult(self.method, {k: self.solutions[k] for k in keys}, min(self.positions, limit),
                            self.attempts, done[-1][1] if done else 0.0, {k: self.found[k] for k in keys})


# ------------------------------------------------------------------------------------ the model side


class LineModel:
    """A character-level causal model continuing several prompts at once (thought branches included).

    Prompts of different lengths are left-padded with newlines, which the training text has between
    traces; a row's cost is its own prompt plus what it writes.
    """

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, creativity: float | None = None):
        self.model, self.tok = model.eval(), tokenizer
        self.temperature, self.creativity = float(temperature), creativity
        self.dev = next(model.parameters()).device
        self.pad = tokenizer.encode("\n")[0]
        self.block_size = model.config.block_size

    @property
    def shares_prompts(self) -> bool:
        """Rows with the same prompt read it once: true for a dense model (a thought model's prompt
        activations depend on each row's noise, so each of its rows reads its own prompt)."""
        return not self.model.config.has_thoughts

    @torch.no_grad()
    def continue_(self, prompts: list[str], seeds: list[int], max_chars: int,
                  stop: str) -> list[tuple[str, float, int]]:
        """Per prompt: ``(text written up to and including stop, its log-likelihood, positions used)``.

        With :attr:`shares_prompts`, each distinct prompt is read once and its KV cache copied to its
        rows; its positions are charged to its first row, the others pay for what they write only.
        """
        from ..generation.autoregressive import LOOKAHEAD, generate
        from ..generation.decoder import Sampling, decode

        ids = [self.tok.encode(p, unknown="replace") for p in prompts]
        block = self.model.config.block_size
        T0 = max(len(x) for x in ids)
        if T0 + max_chars > block:
            raise ConfigError(f"a prompt of {T0} characters plus {max_chars} new ones is longer than the model's "
                              f"block size {block}")
        batch, _ = left_pad(ids, self.pad, self.dev)
        noise = RowNoise(seeds, self.dev, lookahead=min(LOOKAHEAD, max_chars))
        stops = [self.tok.encode(stop)]
        if self.shares_prompts:
            gen = decode(_shared_prompt_step(self.model), batch, max_chars, noise, Sampling(self.temperature),
                         stop_sequences=stops)
        else:
            c = None if self.creativity is None else torch.full((len(ids),), float(self.creativity), device=self.dev)
            gen = generate(self.model, batch, max_chars, noise, temperature=self.temperature, creativity=c,
                           stop_ids=stops[0])
        first = {}
        for b, p in enumerate(prompts):
            first.setdefault(p, b)
        new = gen.tokens[:, T0:].tolist()
        lls = gen.logprobs.cumsum(-1)
        out = []
        for b, L in enumerate(gen.lengths.tolist()):
            read = len(ids[b]) if not self.shares_prompts or first[prompts[b]] == b else 0
            out.append((self.tok.decode(new[b][:L]), float(lls[b, L - 1]) if L else 0.0, read + L))
        return out


def _shared_prompt_step(model):
    """A decoder step function for a dense causal model that reads each distinct prompt row once."""
    from ..generation.decoder import Step

    cache = None

    def step(tokens: torch.Tensor, length: int) -> Step:
        nonlocal cache
        if cache is None:
            uniq, inv = torch.unique(tokens[:, :length], dim=0, return_inverse=True)
            cache = model.new_cache(uniq.shape[0])
            out = model(uniq, cache=cache, last_only=True)
            cache.k, cache.v = cache.k[:, inv], cache.v[:, inv]
            return Step(out.logits[inv, -1, :], {})
        out = model(tokens[:, length - 1:length], cache=cache, last_only=True)
        return Step(out.logits[:, -1, :], {})

    return step


# ------------------------------------------------------------------------------------ methods


TRACE_CHARS = 160  # a whole trace: 3 step lines and the answer line fit in this (or in the model's block)


def sample_traces(lm: LineModel, task: Task, puzzle, budget: Budget, *, batch: int = 16, seed: int = 0,
                  method: str = "sample") -> SearchResult:
    """Whole traces, ``batch`` rows at a time, until the budget is spent; best-of-N by the verifier."""
    res = SearchResult(method)
    start = task.start(puzzle)
    prompt = BLOCK_SEP + start.prompt()
    k, room = 0, min(TRACE_CHARS, lm.block_size - len(prompt))
    while budget.left > 0:
        rows = lm.continue_([prompt] * batch, [seed + k + i for i in range(batch)], room, "\n\n")
        k += batch
        used = budget.take([r[2] for r in rows])
        for (text, _, _), at in zip(rows[:used], budget.marks, strict=True):
            res.add(task.check_text(start.puzzle, start.prompt() + text), text, at)
        res.attempts += used
        if used < len(rows):
            break
    return res.finish(budget)


LINE_CHARS = 40  # one step line


def beam_schedule(width: int, proposals: int):
    """``(width, proposals)`` of each beam pass: 1 state x 4 proposals first, doubling up to the cap."""
    i = 0
    while True:
        yield min(width, 2 ** i), min(proposals, 4 * 2 ** i)
        i += 1


class StateValue(Protocol):
    """What search needs of a value (:class:`..tasks.value.Value`): P(a state can still reach the
    target) for many states in one call, the positions a read of a state costs, a pruning threshold."""

    threshold: float

    def probs(self, states: list) -> Sequence[float]: ...

    def cost(self, state) -> int: ...


def judge(value: StateValue, states: list, budget: Budget) -> list[float] | None:
    """The value of each state, its reads charged to ``budget``; None when the budget runs out first.
    A finished state (one number left) is judged by the verifier, free: 1 if it is a solution, else 0."""
    open_ = [i for i, s in enumerate(states) if not s.done]
    if budget.take([value.cost(states[i]) for i in open_]) < len(open_):
        return None
    p = [1.0 if s.solved else 0.0 for s in states]
    for i, q in zip(open_, value.probs([states[i] for i in open_]) if open_ else [], strict=True):
        p[i] = float(q)
    return p


def beam_search(lm: LineModel, task: Task, puzzle, budget: Budget, *, width: int = 5, proposals: int = 8,
                seed: int = 0, value: StateValue | None = None, threshold: float | None = None) -> SearchResult:
    """Breadth-first search over steps (Tree of Thoughts' BFS), restarted with new seeds while the
    budget lasts: each kept state gets ``proposals`` sampled next lines, the valid distinct children
    are ranked by the model's log-likelihood of their lines so far, the best ``width`` are kept.

    With a ``value`` (Tree of Thoughts' state evaluator, here learned: :mod:`.value`), every child is
    read by it (the reads charged to the budget), children below the threshold are pruned and the rest
    ranked by the value, the model's log-likelihood breaking ties.

    The passes widen (:func:`beam_schedule`: 1 x 4, 2 x 8, 4 x 8, then ``width`` x ``proposals``), so
    a small budget buys a narrow finished pass rather than an unfinished wide one, and the method
    stays anytime (what it does never depends on the budget's size).
    """
    res = SearchResult("beam" if value is None else "beam-value")
    cut = None if value is None else (value.threshold if threshold is None else threshold)
    root = task.start(puzzle)
    k = 0
    for w, n in beam_schedule(width, proposals):
        frontier: list[tuple[float, game24.State]] = [(0.0, root)]
        while frontier and not frontier[0][1].done:
            prompts, owners = [], []
            for i, (_, s) in enumerate(frontier):
                prompts += [BLOCK_SEP + s.text()] * n
                owners += [i] * n
            rows = lm.continue_(prompts, [seed + k + j for j in range(len(prompts))], LINE_CHARS, "\n")
            k += len(prompts)
            if budget.take([r[2] for r in rows]) < len(rows):  # the budget is spent within this level
                return res.finish(budget)
            children: dict[tuple, tuple[float, game24.State]] = {}
            for (text, ll, _), i in zip(rows, owners, strict=True):
                score, s = frontier[i]
                move = task.parse_line(s, text.strip("\n"))
                if move is None:
                    continue
                child = task.apply(s, move)
                key = (child.numbers, tuple(sorted(map(str, child.exprs))))
                if key not in children or children[key][0] < score + ll:
                    children[key] = (score + ll, child)
            ranked = sorted(children.values(), key=lambda x: -x[0])
            if value is not None:
                p = judge(value, [c for _, c in ranked], budget)
                if p is None:
                    return res.finish(budget)
                order = sorted((i for i in range(len(ranked)) if p[i] >= cut), key=lambda i: -p[i])  # stable: ll ties
                ranked = [ranked[i] for i in order]
            frontier = ranked[:w]
        for _, s in frontier:
            res.attempts += 1
            res.add(task.solution(s), s.text(), budget.spent)
    raise AssertionError("unreachable: the schedule never ends")


FREE_SIMULATIONS = 200  # simulations in a row that expand nothing: the tree is exhausted, stop


@dataclass
class _Node:
    state: game24.State
    prior: float = 1.0
    visits: int = 0
    value: float = 0.0
    children: dict = field(default_factory=dict)  # move -> _Node
    counts: dict = field(default_factory=dict)  # move -> proposals that named it
    asked: int = 0  # batches of proposals so far
    worth: float = 1.0  # the value's P(solvable) (1 without a value)
    pruned: set = field(default_factory=set)  # moves the value ruled out

    def ucb(self, parent_visits: int, c: float) -> float:
        q = self.value / self.visits if self.visits else 0.0
        return q + c * self.prior * math.sqrt(parent_visits + 1) / (1 + self.visits)

    def wants_proposals(self) -> bool:
        """Progressive widening: a first batch, then another each time the visits reach 4 x batches^2
        (or at once while no proposal so far was valid)."""
        return self.asked == 0 or not self.children or self.visits >= 4 * self.asked ** 2


def mcts(lm: LineModel, task: Task, puzzle, budget: Budget, *, proposals: int = 8, c_puct: float = 1.5,
         seed: int = 0, value: StateValue | None = None, threshold: float | None = None) -> SearchResult:
    """Monte Carlo tree search over steps (PUCT with progressive widening), until the budget is spent.

    Expanding a state asks the model for ``proposals`` next lines; the distinct valid moves among them
    are its children, with the share of proposals that named each as the prior (the model's step
    probabilities, estimated by sampling). Often-visited states ask again (progressive widening), so
    moves the first batch missed can still appear. A simulation descends by PUCT, expands at most one
    state on its way, and from the state it reaches the model writes the rest of the trace in one
    rollout (the classic simulation step; without it a small budget is spent on expansions before any
    trace is finished); the verifier's reward is 1 for a solution not found before, else 0, so
    visits drift from solutions already found to unexplored branches. The search stops when the
    budget is spent (or after many simulations in a row that cost nothing: an exhausted tree).

    With a ``value`` (:mod:`.value`), each newly proposed child is read once (charged to the budget):
    a child below the threshold is pruned (never entered, never read again), the others' priors are
    the proposal shares weighted by their values.
    """
    res = SearchResult("mcts" if value is None else "mcts-value")
    cut = None if value is None else (value.threshold if threshold is None else threshold)
    root = _Node(task.start(puzzle))
    k, free = 0, 0
    while budget.left > 0 and free < FREE_SIMULATIONS:
        path, node, spent, before, expanded = [root], root, False, budget.spent, False
        while not node.state.done:
            if node.wants_proposals():
                if expanded:
                    break  # one expansion a simulation: a rollout from here
                expanded = True
                rows = lm.continue_([BLOCK_SEP + node.state.text()] * proposals,
                                    [seed + k + j for j in range(proposals)], LINE_CHARS, "\n")
                k += proposals
                if budget.take([r[2] for r in rows]) < len(rows):
                    spent = True
                    break
                node.asked += 1
                new = {}
                for text, _, _ in rows:
                    move = task.parse_line(node.state, text.strip("\n"))
                    if move is not None:
                        node.counts[move] = node.counts.get(move, 0) + 1
                        if move not in node.children and move not in node.pruned and move not in new:
                            new[move] = _Node(task.apply(node.state, move))
                if value is not None and new:
                    p = judge(value, [ch.state for ch in new.values()], budget)
                    if p is None:
                        spent = True
                        break
                    for (m, ch), q in zip(list(new.items()), p, strict=True):
                        ch.worth = q
                        if q < cut:
                            node.pruned.add(m)
                            del new[m]
                node.children.update(new)
                weights = {m: node.counts[m] * ch.worth for m, ch in node.children.items()}
                total = sum(weights.values())
                for m, ch in node.children.items():
                    ch.prior = weights[m] / total if total > 0 else 1.0 / len(node.children)
            if not node.children:
                break  # no valid proposal yet: reward 0, asked again when reached again
            node = max(node.children.values(), key=lambda ch: ch.ucb(node.visits, c_puct))
            path.append(node)
        if spent:
            break
        if node.state.done:
            res.attempts += 1
            reward = float(res.add(task.solution(node.state), node.state.text(), budget.spent))
        else:  # the rollout: the model writes the rest of the trace, the verifier scores it
            prompt = BLOCK_SEP + node.state.text()
            text, _, cost = lm.continue_([prompt], [seed + k], min(TRACE_CHARS, lm.block_size - len(prompt)),
                                         "\n\n")[0]
            k += 1
            if budget.take([cost]) < 1:
                break
            res.attempts += 1
            trace = node.state.text() + text
            reward = float(res.add(task.check_text(root.state.puzzle, trace), trace.split("\n\n")[0], budget.spent))
        for n in path:
            n.visits += 1
            n.value += reward
        free = free + 1 if budget.spent == before else 0
    return res.finish(budget)


class Infiller:
    """A masked-diffusion model writing the rest of several traces at once (the hybrid's second half).

    Each row's prompt is kept; the model denoises ``length`` positions in all with ``steps`` top-k
    steps. A row's cost is what the model reads: ``length`` positions at every step.
    """

    def __init__(self, model, tokenizer, *, steps: int = 16, temperature: float = 1.0):
        self.model, self.tok = model.eval(), tokenizer
        self.steps, self.temperature = int(steps), float(temperature)
        self.dev = next(model.parameters()).device
        self.pad = tokenizer.encode("\n")[0]

    @torch.no_grad()
    def complete(self, prompts: list[str], seeds: list[int], length: int) -> list[tuple[str, int]]:
        from ..generation.diffusion import generate

        ids = [self.tok.encode(p, unknown="replace") for p in prompts]
        T0 = max(len(x) for x in ids)
        if length > self.model.config.block_size or length <= T0:
            raise ConfigError(f"the infill length {length} must exceed the longest prompt ({T0}) and fit the "
                              f"diffusion model's block size {self.model.config.block_size}")
        batch, _ = left_pad(ids, self.pad, self.dev)
        out = generate(self.model, batch, length, RowNoise(seeds, self.dev), sampler="topk",
                       steps=self.steps, temperature=self.temperature)
        texts = [self.tok.decode(row[T0:]) for row in out.tokens.tolist()]
        return [(t, out.steps * length) for t in texts]


def denoised_answers(den, puzzle, budget: Budget, *, batch: int = 8, seed: int = 0,
                     method: str = "mgdm") -> SearchResult:
    """Answers written by a masked-diffusion model alone (:class:`.mgdm.Denoiser`), ``batch`` rows at a
    time until the budget is spent; each row costs ``steps x length`` positions; best-of-N by the
    verifier, which replays every step (:func:`.mgdm.read_solution`)."""
    from . import mgdm

    res = SearchResult(method)
    puzzle = tuple(puzzle)
    k = 0
    while budget.left > 0:
        texts = den.answers([puzzle] * batch, [seed + k + i for i in range(batch)])
        k += batch
        used = budget.take([den.cost] * batch)
        for text, at in zip(texts[:used], budget.marks, strict=True):
            res.add(mgdm.read_solution(puzzle, text), text.split(mgdm.PAD * 2)[0].strip(), at)
        res.attempts += used
        if used < batch:
            break
    return res.finish(budget)


REST_CHARS = 96  # what diffusion writes after the first step: two step lines and the answer line


def hybrid(lm: LineModel, infiller: Infiller, task: Task, puzzle, budget: Budget, *, proposals: int = 8,
           batch: int = 8, rest: int = REST_CHARS, seed: int = 0) -> SearchResult:
    """The search + diffusion hybrid: the search picks first steps, diffusion writes the rest.

    The autoregressive model proposes ``proposals`` first lines (the search's first level); the
    distinct valid ones are the directions, tried in proportion to how often the model proposed each.
    For each direction the diffusion model infills the rest of the trace (``rest`` positions after
    the longest prompt: the two remaining steps and the answer fit); the verifier scores it.
    Proposals are asked again (new seeds) when none was valid.
    """
    res = SearchResult("hybrid")
    root = task.start(puzzle)
    k, firsts = 0, []
    while not firsts:
        rows = lm.continue_([BLOCK_SEP + root.text()] * proposals, [seed + k + j for j in range(proposals)],
                            LINE_CHARS, "\n")
        k += proposals
        if budget.take([r[2] for r in rows]) < len(rows):
            return res.finish(budget)
        firsts = [task.apply(root, m) for m in (task.parse_line(root, t.strip("\n")) for t, _, _ in rows) if m]
    i = 0
    while True:
        states = [firsts[(i + j) % len(firsts)] for j in range(batch)]  # proportional to the proposals
        prompts = [BLOCK_SEP + s.text() for s in states]
        length = min(infiller.model.config.block_size, max(map(len, prompts)) + rest)
        done = infiller.complete(prompts, [seed + 7919 * (i + j) + 1 for j in range(batch)], length)
        i += batch
        used = budget.take([c for _, c in done])
        for s, (text, _), at in zip(states[:used], done[:used], budget.marks, strict=True):
            res.attempts += 1
            res.add(task.check_text(root.puzzle, s.text() + text), s.text() + text.split("\n\n")[0], at)
        if used < len(done):
            break
    return res.finish(budget)


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


def trace_cost(puzzle) -> int:
    """Token positions of one typical whole trace (prompt and a solver trace, or 3 step lines)."""
    sols = game24.solve(tuple(sorted(puzzle)))
    if sols:
        steps, expr = next(iter(sols.values()))[0]
        return len(BLOCK_SEP + game24.trace_of(puzzle, steps, expr)) + 1
    return len(BLOCK_SEP + game24.State.start(puzzle).prompt()) + 4 * 30


def random_steps(task: Task, puzzle, budget: Budget, *, seed: int = 0) -> SearchResult:
    """Uniform random valid moves to the end, as many attempts as the budget buys whole traces."""
    import random

    res = SearchResult("random")
    rng = random.Random(seed)
    per = trace_cost(puzzle)
    res.attempts = budget.take([per] * (budget.limit // per))
    for at in budget.marks:
        s = task.start(puzzle)
        while not s.done:
            s = task.apply(s, rng.choice(task.moves(s)))
        res.add(task.solution(s), s.text(), at)
    return res.finish(budget)


def exact(puzzle) -> SearchResult:
    """The solver: every distinct solution, no model, no budget (the ceiling)."""
    t0 = time.time()
    sols = game24.solve(tuple(sorted(puzzle)))
    res = SearchResult("solver", {k: game24.trace_of(puzzle, *v[0]) for k, v in sols.items()})
    res.attempts, res.seconds = sum(len(v) for v in sols.values()), time.time() - t0
    return res


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% interval of a success rate."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)
