"""The search interface: a task, a budget of model positions, what a method found, a state value."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ...errors import ConfigError
from .. import game24

BLOCK_SEP = "\n"  # the training text separates traces by a blank line: a prompt starts after one


class TaskState(Protocol):
    """What the methods read of a task's state (``game24.State`` is one)."""

    puzzle: tuple

    @property
    def done(self) -> bool: ...

    def prompt(self) -> str:
        """The trace's first line (what a model is prompted with)."""

    def text(self) -> str:
        """The trace so far: the prompt and one line per step."""


class Task(Protocol):
    """A step task: what the search methods need of it (Game of 24 is :class:`Game24Task`)."""

    def start(self, puzzle) -> TaskState: ...

    def moves(self, state) -> list: ...

    def apply(self, state, move): ...

    def solution(self, state) -> str | None:
        """The canonical key of the solution ``state`` reaches, or None."""

    def parse_line(self, state, line: str): ...

    def state_key(self, state):
        """A hashable key equal for states a search need not keep twice."""

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

    def state_key(self, state: game24.State):
        """The numbers left and the expressions they stand for (step order does not matter)."""
        return state.numbers, tuple(sorted(map(str, state.exprs)))

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


class StateValue(Protocol):
    """What search needs of a value (:class:`..tasks.value.Value`): P(a state can still reach the
    target) for many states in one call, the positions a read of a state costs, a pruning threshold."""

    threshold: float

    def probs(self, states: list) -> Sequence[float]: ...

    def cost(self, state) -> int: ...


def read_values(value: StateValue, states: list, texts: list[str]) -> Sequence[float]:
    """P(live) of each state: a value head (:class:`..tasks.value.HeadValue`) reads ``texts`` (what the
    row wrote to reach the state, the prompt and its step lines), any other value the states."""
    reads = getattr(value, "probs_texts", None)
    return reads(texts) if reads else value.probs(states)


def judge(value: StateValue, states: list, budget: Budget, texts: list[str]) -> list[float] | None:
    """The value of each state, its reads charged to ``budget``; None when the budget runs out first.
    ``texts[i]`` is what the row wrote to reach ``states[i]`` (:func:`read_values`). A finished state
    (one number left) is judged by the verifier, free: 1 if it is a solution, else 0."""
    open_ = [i for i, s in enumerate(states) if not s.done]
    if budget.take([value.cost(states[i]) for i in open_]) < len(open_):
        return None
    p = [1.0 if s.solved else 0.0 for s in states]
    if open_:
        for i, q in zip(open_, read_values(value, [states[i] for i in open_], [texts[i] for i in open_]), strict=True):
            p[i] = float(q)
    return p
