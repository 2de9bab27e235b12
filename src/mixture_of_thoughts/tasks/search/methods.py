"""The methods, each anytime over one budget: sampling, beam search, MCTS, the diffusion-alone and
hybrid methods, the random floor and the exact ceiling."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from .. import game24
from .base import BLOCK_SEP, Budget, SearchResult, StateValue, Task, judge, read_values
from .models import Infiller, LineModel

TRACE_CHARS = 160  # a whole trace: 3 step lines and the answer line fit in this (or in the model's block)


def _best_of_n(lm: LineModel, task: Task, puzzle, budget: Budget, method: str, draw) -> SearchResult:
    """Best-of-N by the verifier over whole traces: ``draw(prompt, call, room)`` writes the ``call``-th
    batch of rows (``(text, log-likelihood, positions)`` each, at most ``room`` characters), charged in
    their order until the budget is spent."""
    res = SearchResult(method)
    start = task.start(puzzle)
    prompt = BLOCK_SEP + start.prompt()
    call, room = 0, min(TRACE_CHARS, lm.block_size - len(prompt))
    while budget.left > 0:
        rows = draw(prompt, call, room)
        call += 1
        used = budget.take([r[2] for r in rows])
        for (text, _, _), at in zip(rows[:used], budget.marks, strict=True):
            if text is not None:  # None: a row the search dropped, charged but not an attempt
                res.add(task.check_text(start.puzzle, start.prompt() + text), text, at)
                res.attempts += 1
        if used < len(rows):
            break
    return res.finish(budget)


def sample_traces(lm: LineModel, task: Task, puzzle, budget: Budget, *, batch: int = 16, seed: int = 0,
                  method: str = "sample") -> SearchResult:
    """Whole traces, ``batch`` independent rows at a time, until the budget is spent; best-of-N."""
    return _best_of_n(lm, task, puzzle, budget, method, lambda prompt, call, room: lm.continue_(
        [prompt] * batch, [seed + call * batch + i for i in range(batch)], room, "\n\n"))


def distinct_traces(lm: LineModel, task: Task, puzzle, budget: Budget, *, width: int = 64, seed: int = 0,
                    value: StateValue | None = None, threshold: float | None = None, twist: float = 0.0,
                    method: str | None = None) -> SearchResult:
    """Whole traces sampled *without replacement* (:meth:`LineModel.sample_distinct`, stochastic beam
    search), ``width`` at a time, until the budget is spent; best-of-N where no two attempts of a batch
    are the same text. The rows are charged in their sampled order, so at any budget the traces read
    are a sample without replacement.

    With a ``value`` the beam searches (``distinct-value``): each step line a row writes is checked
    (a line that is not a valid step from the row's state drops the row, free, as beam search drops
    invalid proposals), the state it reaches is read by the value (charged, :func:`judge`'s cost; a
    value head, :class:`..value.HeadValue`, reads the row's own line from the model, free) and
    a row whose state is below the threshold is dropped, its place in the beam taken by other
    continuations; a state of one number is judged by the verifier, free. With ``twist`` > 0 a kept
    row's completions are weighted by ``P(live) ** twist``: the beam samples without replacement from
    the model's distribution times the value's, so the live-looking traces are read first. Dropped
    rows are charged what they wrote and what judging them cost, in the beam's order
    (:meth:`LineModel.sample_distinct`).
    """
    prune = None if value is None else _line_pruner(task, task.start(puzzle), value,
                                                    value.threshold if threshold is None else threshold, twist)
    name = method or ("distinct" if value is None else "distinct-value")
    return _best_of_n(lm, task, puzzle, budget, name, lambda prompt, call, room: lm.sample_distinct(
        prompt, seed + call, width, room, "\n\n", prune))


def _line_pruner(task: Task, start, value: StateValue, cut: float, twist: float = 0.0):
    """``prune(texts)`` for :meth:`LineModel.sample_distinct`: texts that end a line -> (log-weight,
    cost) each: -inf drops a row (an invalid step, a one-number miss, a value below ``cut``); a kept
    state read by the value is weighted by ``P(live) ** twist`` (0: no weight)."""
    drop = float("-inf")

    def prune(texts: list[str]) -> tuple[list[float], list[int]]:
        w, cost, open_ = [0.0] * len(texts), [0] * len(texts), []
        for j, text in enumerate(texts):
            s = start
            for line in text.split("\n")[:-1]:
                if line.startswith(game24.ANSWER):  # the answer line: the verifier reads it at the end
                    break
                move = task.parse_line(s, line)
                if move is None:
                    w[j] = drop
                    break
                s = task.apply(s, move)
            else:
                if s.done:
                    w[j] = 0.0 if s.solved else drop
                elif s is not start:
                    open_.append((j, s))
        if open_:
            p = read_values(value, [s for _, s in open_], [start.prompt() + texts[j] for j, _ in open_])
            for (j, s), q in zip(open_, p, strict=True):
                q = float(q)
                w[j] = drop if q < cut else twist * math.log(max(q, 1e-6))
                cost[j] = value.cost(s)
        return w, cost
    return prune


LINE_CHARS = 40  # one step line


def beam_schedule(width: int, proposals: int):
    """``(width, proposals)`` of each beam pass: 1 state x 4 proposals first, doubling up to the cap."""
    i = 0
    while True:
        yield min(width, 2 ** i), min(proposals, 4 * 2 ** i)
        i += 1


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
        frontier: list[tuple[float, game24.State, str]] = [(0.0, root, root.text())]
        while frontier and not frontier[0][1].done:
            prompts, owners = [], []
            for i, (_, s, _) in enumerate(frontier):
                prompts += [BLOCK_SEP + s.text()] * n
                owners += [i] * n
            rows = lm.continue_(prompts, [seed + k + j for j in range(len(prompts))], LINE_CHARS, "\n")
            k += len(prompts)
            if budget.take([r[2] for r in rows]) < len(rows):  # the budget is spent within this level
                return res.finish(budget)
            children: dict[tuple, tuple[float, game24.State, str]] = {}  # score, state, the text that reached it
            for (text, ll, _), i in zip(rows, owners, strict=True):
                score, s, _ = frontier[i]
                move = task.parse_line(s, text.strip("\n"))
                if move is None:
                    continue
                child = task.apply(s, move)
                key = task.state_key(child)
                if key not in children or children[key][0] < score + ll:
                    children[key] = (score + ll, child, s.text() + text)
            ranked = sorted(children.values(), key=lambda x: -x[0])
            if value is not None:
                p = judge(value, [c[1] for c in ranked], budget, [c[2] for c in ranked])
                if p is None:
                    return res.finish(budget)
                order = sorted((i for i in range(len(ranked)) if p[i] >= cut), key=lambda i: -p[i])  # stable: ll ties
                ranked = [ranked[i] for i in order]
            frontier = ranked[:w]
        for _, s, _ in frontier:
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
    tree = _Tree(lm, task, puzzle, budget, res, proposals=proposals, c_puct=c_puct, seed=seed, value=value,
                 cut=None if value is None else (value.threshold if threshold is None else threshold))
    free = 0
    while budget.left > 0 and free < FREE_SIMULATIONS:
        before = budget.spent
        path = tree.select()
        reward = None if path is None else tree.rollout(path[-1])
        if reward is None:
            break  # the budget ran out mid-simulation
        tree.backup(path, reward)
        free = free + 1 if budget.spent == before else 0
    return res.finish(budget)


class _Tree:
    """MCTS's four phases over one puzzle's tree: :meth:`select` (descend by PUCT), :meth:`expand`
    (ask a state for proposals, on the way down, at most once a simulation), :meth:`rollout` (score
    the state reached) and :meth:`backup` (add the reward along the path). Seeds are drawn in order,
    so a search is reproducible from ``seed``."""

    def __init__(self, lm: LineModel, task: Task, puzzle, budget: Budget, res: SearchResult, *, proposals: int,
                 c_puct: float, seed: int, value: StateValue | None, cut: float | None):
        self.lm, self.task, self.budget, self.res = lm, task, budget, res
        self.proposals, self.c_puct, self.value, self.cut = proposals, c_puct, value, cut
        self.root = _Node(task.start(puzzle))
        self.seed, self.k = seed, 0

    def _seeds(self, n: int) -> list[int]:
        out = [self.seed + self.k + j for j in range(n)]
        self.k += n
        return out

    def select(self) -> list[_Node] | None:
        """The path from the root to the state to score: down by PUCT, expanding the first state on
        the way that wants proposals (a second one ends the descent: a rollout from there). None when
        the budget ran out."""
        path, node, expanded = [self.root], self.root, False
        while not node.state.done:
            if node.wants_proposals():
                if expanded:
                    break
                expanded = True
                if not self.expand(node):
                    return None
            if not node.children:
                break  # no valid proposal yet: reward 0, asked again when reached again
            node = max(node.children.values(), key=lambda ch: ch.ucb(node.visits, self.c_puct))
            path.append(node)
        return path

    def expand(self, node: _Node) -> bool:
        """Ask ``node`` for ``proposals`` next lines; the new valid moves become its children (those the
        value rules out are pruned), priors are the proposal shares weighted by the value. False when
        the budget ran out."""
        rows = self.lm.continue_([BLOCK_SEP + node.state.text()] * self.proposals, self._seeds(self.proposals),
                                 LINE_CHARS, "\n")
        if self.budget.take([r[2] for r in rows]) < len(rows):
            return False
        node.asked += 1
        new, wrote = {}, {}
        for text, _, _ in rows:
            move = self.task.parse_line(node.state, text.strip("\n"))
            if move is not None:
                node.counts[move] = node.counts.get(move, 0) + 1
                if move not in node.children and move not in node.pruned and move not in new:
                    new[move], wrote[move] = _Node(self.task.apply(node.state, move)), node.state.text() + text
        if self.value is not None and new:
            p = judge(self.value, [ch.state for ch in new.values()], self.budget, [wrote[m] for m in new])
            if p is None:
                return False
            for (m, ch), q in zip(list(new.items()), p, strict=True):
                ch.worth = q
                if q < self.cut:
                    node.pruned.add(m)
                    del new[m]
        node.children.update(new)
        weights = {m: node.counts[m] * ch.worth for m, ch in node.children.items()}
        total = sum(weights.values())
        for m, ch in node.children.items():
            ch.prior = weights[m] / total if total > 0 else 1.0 / len(node.children)
        return True

    def rollout(self, node: _Node) -> float | None:
        """The reward of ``node``: a finished state is checked by the verifier; otherwise the model
        writes the rest of the trace in one go and the verifier scores it. 1 for a solution not found
        before, else 0 (visits drift to unexplored branches); None when the budget ran out."""
        res, root = self.res, self.root
        if node.state.done:
            res.attempts += 1
            return float(res.add(self.task.solution(node.state), node.state.text(), self.budget.spent))
        prompt = BLOCK_SEP + node.state.text()
        text, _, cost = self.lm.continue_([prompt], self._seeds(1), min(TRACE_CHARS, self.lm.block_size - len(prompt)),
                                          "\n\n")[0]
        if self.budget.take([cost]) < 1:
            return None
        res.attempts += 1
        trace = node.state.text() + text
        return float(res.add(self.task.check_text(root.state.puzzle, trace), trace.split("\n\n")[0], self.budget.spent))

    @staticmethod
    def backup(path: list[_Node], reward: float) -> None:
        """Every state on the path counts one more visit and the reward."""
        for n in path:
            n.visits += 1
            n.value += reward


def denoised_answers(den, puzzle, budget: Budget, *, batch: int = 8, seed: int = 0,
                     method: str = "mgdm") -> SearchResult:
    """Answers written by a masked-diffusion model alone (:class:`.mgdm.Denoiser`), ``batch`` rows at a
    time until the budget is spent; each row costs ``steps x length`` positions; best-of-N by the
    verifier, which replays every step (:func:`.mgdm.read_solution`)."""
    from .. import mgdm

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


REST_CHARS = 32  # what diffusion writes per step left after the search's steps (one step line fits)


def _kept_lines(task: Task, state, text: str) -> tuple:
    """``(state, lines)``: the leading step lines of ``text`` valid from ``state`` (each with its
    newline) and the state they reach; a last step that ends the numbers away from the target is not
    kept (the verifier rejects it as surely as a wrong one)."""
    kept, states = [], [state]
    for line in text.split("\n")[:-1]:
        move = None if states[-1].done else task.parse_line(states[-1], line)
        if move is None:
            break
        states.append(task.apply(states[-1], move))
        kept.append(line + "\n")
    if states[-1].done and not states[-1].solved:
        states.pop()
        kept.pop()
    return states[-1], "".join(kept)


def _directions(lm: LineModel, task: Task, root, budget: Budget, *, proposals: int, depth: int, seed: int,
                value: StateValue | None, cut: float | None) -> list | None:
    """The states ``depth`` steps below ``root`` the search picks, each as often as the model proposed it
    (its last level): every state of a level asks ``proposals`` next lines, the valid ones (read by the
    ``value``, those below ``cut`` dropped) make the next level; a level with none asks again, new seeds.
    None when the budget ran out."""
    k, level = 0, [root]
    for _ in range(depth):
        found = []
        while not found:
            parents = list({task.state_key(s): s for s in level}.values())  # each distinct state asks once
            prompts = [BLOCK_SEP + s.text() for s in parents for _ in range(proposals)]
            rows = lm.continue_(prompts, [seed + k + j for j in range(len(prompts))], LINE_CHARS, "\n")
            k += len(prompts)
            if budget.take([r[2] for r in rows]) < len(rows):
                return None
            for j, (t, _, _) in enumerate(rows):
                parent = parents[j // proposals]
                move = task.parse_line(parent, t.strip("\n"))
                if move:
                    found.append((task.apply(parent, move), parent.text() + t))
            if value is not None and found:
                p = judge(value, [f[0] for f in found], budget, [f[1] for f in found])
                if p is None:
                    return None
                found = [f for f, q in zip(found, p, strict=True) if q >= cut]
        level = [f[0] for f in found]
    return level


def hybrid(lm: LineModel, infiller: Infiller, task: Task, puzzle, budget: Budget, *, proposals: int = 8,
           batch: int = 2, rest: int | None = None, seed: int = 0, value: StateValue | None = None,
           threshold: float | None = None, repairs: int = 0, depth: int = 1) -> SearchResult:
    """The search + diffusion hybrid: the search picks the first steps, diffusion writes and repairs the rest.

    The autoregressive model proposes ``proposals`` next lines per state for ``depth`` levels
    (:func:`_directions`); the valid states of the last level are the directions, tried in proportion
    to how often the model proposed each. With a ``value`` (``hybrid-value``) each proposed state is
    read and those below the threshold are dropped. For each direction the diffusion model infills the
    step lines left (``rest`` positions after the longest prompt, by default :data:`REST_CHARS` per
    step left); the verifier replays them exactly and a trace whose steps reach the target is a
    solution (its answer expression composed from the steps, as for ``mgdm``: the diffusion model
    never learned to compose the answer line). A trace that fails is repaired up to ``repairs`` times:
    its step lines from the first the verifier rejects onwards (or a last step that misses the target)
    are masked again and denoised anew, the valid ones before it kept (the seed's multi-branch
    denoising with an evaluator; each repair costs what an infill costs).
    """
    res = SearchResult("hybrid" if value is None else "hybrid-value")
    root = task.start(puzzle)
    rest = REST_CHARS * (len(puzzle) - 1 - depth) if rest is None else rest  # the steps left
    firsts = _directions(lm, task, root, budget, proposals=proposals, depth=depth, seed=seed, value=value,
                         cut=None if value is None else (value.threshold if threshold is None else threshold))
    if firsts is None:
        return res.finish(budget)
    i = 0
    while True:
        states = [firsts[(i + j) % len(firsts)] for j in range(batch)]  # proportional to the proposals
        # per row: the state its kept lines reach, its trace so far, and the positions it may still write
        # (``rest`` less the lines kept; every row of a call writes the most any of them may, the prompts
        # being padded on the left)
        rows, todo = [(s, s.text(), rest) for s in states], list(range(batch))
        for r in range(repairs + 1):
            prompts = [BLOCK_SEP + rows[j][1] for j in todo]
            length = min(infiller.model.config.block_size, max(map(len, prompts)) + max(rows[j][2] for j in todo))
            done = infiller.complete(prompts, [seed + 7919 * (i + j) + 104729 * r + 1 for j in todo], length)
            used = budget.take([c for _, c in done])
            failed = []
            for j, (text, _), at in zip(todo[:used], done[:used], budget.marks, strict=True):
                res.attempts += 1
                state, lines = _kept_lines(task, rows[j][0], text)
                rows[j] = (state, rows[j][1] + lines, rows[j][2] - len(lines))
                res.add(task.solution(state), state.text(), at)  # solved: the answer line composed from the steps
                if not state.solved and rows[j][2] >= LINE_CHARS // 2:  # room left to rewrite a line
                    failed.append(j)
            if used < len(done):
                return res.finish(budget)
            todo = failed
            if not todo:
                break
        i += batch


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
