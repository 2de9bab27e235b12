"""Game of 24: the puzzles, an exact solver, a verifier and the step traces models learn from.

A puzzle is four numbers from 1 to 13; a solution combines all four with ``+ - * /`` (each number
used exactly once, any parentheses) into exactly 24. Arithmetic is exact (:class:`fractions.Fraction`):
``8 / (3 - 8 / 3)`` is a solution, ``24.0000001`` never is.

Traces follow Tree of Thoughts' step format, one step per line, then the final expression::

    4 5 6 10:
    10 - 6 = 4 (left: 4 4 5)
    4 + 5 = 9 (left: 4 9)
    ...
    answer: (4 + 5) * (10 - 6) ... = 24

Each step combines two of the numbers left (written in ascending order after ``left:``); a
non-integer intermediate is written as a fraction (``8/3``). Two solutions are *the same* when
their expressions are equal up to commutativity and associativity of ``+`` and ``*`` (and the
order of independent steps): :func:`canonical` gives the key.

The data come from Tree of Thoughts' ``24.csv`` (1,362 puzzles sorted by human solving time; MIT).
Rows 900-999 (0-based) are the test set, as in Tree of Thoughts: :func:`training_text` never uses them.
"""

from __future__ import annotations

import ast
import csv
import functools
import itertools
import os
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..errors import DataError

TARGET = 24
N_NUMBERS = 4
LOW, HIGH = 1, 13
TEST_ROWS = range(900, 1000)
VAL_ROWS = range(800, 900)  # held out too: search settings are tuned here, never on the test rows
PUZZLES_FILE = "24.csv"
OPS = ("+", "-", "*", "/")
ANSWER = "answer: "


# ------------------------------------------------------------------------------------ numbers


def fmt(x: Fraction) -> str:
    """``12``, ``-3`` or ``8/3``: an exact number as traces write it."""
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def parse_number(text: str) -> Fraction:
    """The inverse of :func:`fmt` (raises ``ValueError`` on anything else)."""
    text = text.strip()
    if "/" in text:
        n, d = text.split("/", 1)
        if not d.strip().isdigit() or int(d) == 0:
            raise ValueError(f"not a number: {text!r}")
        return Fraction(int(n), int(d))
    return Fraction(int(text))


def apply_op(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    """``a op b``, or None for a division by zero."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return None if b == 0 else a / b
    raise ValueError(f"unknown operator {op!r}")


def parse_puzzle(text: str | list) -> tuple[int, ...]:
    """Four integers from 1 to 13, from ``"4 5 6 10"`` (spaces or commas) or a list.

    Raises:
        DataError: another count of numbers, a number outside 1-13, or something that is not a number.
    """
    parts = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    if len(parts) != N_NUMBERS:
        raise DataError(f"a Game of 24 puzzle has {N_NUMBERS} numbers, got {len(parts)} in {text!r}")
    out = []
    for p in parts:
        try:
            v = int(p)
        except (TypeError, ValueError):
            raise DataError(f"{p!r} in puzzle {text!r} is not a whole number") from None
        if not LOW <= v <= HIGH:
            raise DataError(f"{v} in puzzle {text!r} is outside {LOW}-{HIGH}")
        out.append(v)
    return tuple(sorted(out))


# ------------------------------------------------------------------------------------ expressions


@dataclass(frozen=True)
class Expr:
    """An expression tree: a leaf holds ``value``; an inner node ``op`` over ``left`` and ``right``."""

    value: Fraction
    op: str | None = None
    left: Expr | None = None
    right: Expr | None = None

    def __str__(self) -> str:
        """Fully parenthesised: ``((4 + 5) * 2)``."""
        if self.op is None:
            return fmt(self.value)
        return f"({self.left} {self.op} {self.right})"

    def text(self) -> str:
        """The expression without its outermost parentheses: ``(4 + 5) * 2``."""
        s = str(self)
        return s[1:-1] if self.op is not None else s

    def leaves(self) -> list[Fraction]:
        return [self.value] if self.op is None else self.left.leaves() + self.right.leaves()


def canonical(e: Expr) -> str:
    """A key equal for expressions equal up to commutativity and associativity of ``+`` and ``*``.

    ``a - b`` is read as ``a + (-b)`` and ``a / b`` as ``a * (1/b)`` for the flattening, so
    ``(a + b) - c`` and ``a - (c - b)`` are the same solution; the operands of each flattened sum
    or product are sorted.
    """
    if e.op is None:
        return fmt(e.value)
    if e.op in "+-":
        terms = _flatten(e, "+-", "+")
        return "(" + " + ".join(sorted(("" if s == "+" else "-") + canonical(x) for s, x in terms)) + ")"
    factors = _flatten(e, "*/", "*")
    return "(" + " * ".join(sorted(("" if s == "*" else "/") + canonical(x) for s, x in factors)) + ")"


def _flatten(e: Expr, ops: str, sign: str) -> list[tuple[str, Expr]]:
    """The signed operands of a chain of ``ops`` (e.g. ``a - (b - c)`` -> ``+a, -b, +c``)."""
    if e.op is None or e.op not in ops:
        return [(sign, e)]
    inv = ops[1]
    flip = {ops[0]: inv, inv: ops[0]}
    right_sign = sign if e.op == ops[0] else flip[sign]
    return _flatten(e.left, ops, sign) + _flatten(e.right, ops, right_sign)


# ------------------------------------------------------------------------------------ states and steps


@dataclass(frozen=True)
class Step:
    """``a op b = result``: one line of a trace."""

    a: Fraction
    op: str
    b: Fraction
    result: Fraction

    def line(self, left: tuple[Fraction, ...]) -> str:
        return f"{fmt(self.a)} {self.op} {fmt(self.b)} = {fmt(self.result)} (left: {' '.join(fmt(x) for x in left)})"


def steps_of(numbers: tuple[Fraction, ...]) -> list[Step]:
    """Every distinct valid step on ``numbers``: two of them, one operator, a result >= 0 (as people
    write these traces: ``10 - 6``, never ``6 - 10``; every solution has such a form) and no division
    by zero."""
    out, seen = [], set()
    for i, j in itertools.permutations(range(len(numbers)), 2):
        a, b = numbers[i], numbers[j]
        for op in OPS:
            if op in "+*" and i > j:
                continue  # commutative: one order is enough
            r = apply_op(a, op, b)
            if r is None or r < 0 or (a, op, b) in seen:
                continue
            seen.add((a, op, b))
            out.append(Step(a, op, b, r))
    return out


@dataclass(frozen=True)
class State:
    """The numbers left (ascending), the expression each stands for, and the steps so far."""

    puzzle: tuple[int, ...]
    numbers: tuple[Fraction, ...]
    exprs: tuple[Expr, ...]
    steps: tuple[Step, ...] = ()

    @classmethod
    def start(cls, puzzle) -> State:
        p = parse_puzzle(puzzle) if not isinstance(puzzle, tuple) else puzzle
        nums = tuple(Fraction(x) for x in sorted(p))
        return cls(p, nums, tuple(Expr(x) for x in nums))

    @property
    def done(self) -> bool:
        return len(self.numbers) == 1

    @property
    def solved(self) -> bool:
        return self.done and self.numbers[0] == TARGET

    def moves(self) -> list[Step]:
        """Every distinct valid step from here (:func:`steps_of` the numbers left)."""
        return steps_of(self.numbers)

    def apply(self, step: Step) -> State:
        """The state after ``step``; raises ``ValueError`` if it does not apply here."""
        nums, exprs = list(self.numbers), list(self.exprs)
        try:
            i = nums.index(step.a)
            ea = exprs[i]
            del nums[i], exprs[i]
            j = nums.index(step.b)
            eb = exprs[j]
            del nums[j], exprs[j]
        except ValueError:
            raise ValueError(f"{fmt(step.a)} {step.op} {fmt(step.b)}: not both among the numbers left") from None
        r = apply_op(step.a, step.op, step.b)
        if r is None or r != step.result:
            raise ValueError(f"{fmt(step.a)} {step.op} {fmt(step.b)} is not {fmt(step.result)}")
        e = Expr(r, step.op, ea, eb)
        order = sorted(range(len(nums) + 1), key=lambda k: (nums + [r])[k])
        nums2, exprs2 = nums + [r], exprs + [e]
        return State(self.puzzle, tuple(nums2[k] for k in order), tuple(exprs2[k] for k in order),
                     self.steps + (step,))

    def expression(self) -> Expr | None:
        return self.exprs[0] if self.done else None

    def prompt(self) -> str:
        """The trace's first line: the puzzle and a colon."""
        return " ".join(str(x) for x in self.puzzle) + ":\n"

    def text(self) -> str:
        """The trace so far (the prompt, one line per step, and the answer line once solved)."""
        lines, s = [self.prompt().rstrip("\n")], State.start(self.puzzle)
        for st in self.steps:
            s = s.apply(st)
            lines.append(st.line(s.numbers))
        if self.done:
            lines.append(f"{ANSWER}{self.exprs[0].text()} = {fmt(self.numbers[0])}")
        return "\n".join(lines) + "\n"


def parse_step(state: State, line: str) -> Step | None:
    """The step a trace line states, if it is valid from ``state`` (right arithmetic, numbers left,
    the ``left:`` list matching); None for anything else."""
    try:
        head, _, rest = line.partition("=")
        a, op, b = head.split()
        res, _, left = rest.partition("(left:")
        step = Step(parse_number(a), op, parse_number(b), parse_number(res))
        if op not in OPS:
            return None
        nxt = state.apply(step)
        said = tuple(sorted(parse_number(x) for x in left.rstrip().rstrip(")").split()))
    except (ValueError, ZeroDivisionError):
        return None
    return step if said == nxt.numbers else None


# ------------------------------------------------------------------------------------ verifier


_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def parse_expression(text: str) -> Expr:
    """An arithmetic expression of integers, ``+ - * /`` and parentheses (nothing else is evaluated).

    Raises:
        ValueError: anything else (names, calls, powers, unary minus, floats, a division by zero).
    """
    text = text.strip()
    if len(text) > 200:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {text!r}") from None

    def walk(node) -> Expr:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Expr(Fraction(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            op = _AST_OPS[type(node.op)]
            a, b = walk(node.left), walk(node.right)
            v = apply_op(a.value, op, b.value)
            if v is None:
                raise ValueError("division by zero")
            return Expr(v, op, a, b)
        raise ValueError(f"only whole numbers, + - * / and parentheses are allowed: {text!r}")

    return walk(tree)


def verify(puzzle, answer: str) -> bool:
    """Whether ``answer`` (an expression, optionally followed by ``= 24``) uses each number of
    ``puzzle`` exactly once and equals 24 exactly."""
    nums = parse_puzzle(puzzle) if not isinstance(puzzle, tuple) else puzzle
    expr = answer.split("=")[0]
    try:
        e = parse_expression(expr)
    except ValueError:
        return False
    return e.value == TARGET and sorted(e.leaves()) == sorted(Fraction(x) for x in nums)


def answer_of(trace: str) -> str | None:
    """The expression of a trace's ``answer:`` line (the first one), or None."""
    for line in trace.splitlines():
        if line.startswith(ANSWER):
            return line[len(ANSWER):].split("=")[0].strip()
    return None


def check_trace(puzzle, trace: str) -> str | None:
    """The canonical key of the solution a generated trace reaches, or None if it is not one.

    The answer line decides (its expression must verify); the step lines need not be perfect, as
    with Tree of Thoughts' scoring of the final answer.
    """
    ans = answer_of(trace)
    if ans is None or not verify(puzzle, ans):
        return None
    return canonical(parse_expression(ans))


# ------------------------------------------------------------------------------------ solver


@functools.lru_cache(maxsize=4096)
def solve(puzzle) -> dict[str, tuple[tuple[tuple[Step, ...], Expr], ...]]:
    """Every solution of ``puzzle``: ``{canonical key: ((step sequence, its expression), ...)}``.

    Exhaustive over pairs of *positions* (two equal numbers may stand for different expressions:
    after ``10 - 6 = 4`` in ``4 5 6 10`` there are two 4s), with the moves of :meth:`State.moves`
    (results >= 0), exact in fractions; at most a few thousand sequences per puzzle.
    """
    out: dict[str, list[tuple[tuple[Step, ...], Expr]]] = {}

    def rec(nums: list[Fraction], exprs: list[Expr], steps: tuple[Step, ...]) -> None:
        if len(nums) == 1:
            if nums[0] == TARGET:
                out.setdefault(canonical(exprs[0]), []).append((steps, exprs[0]))
            return
        for i, j in itertools.permutations(range(len(nums)), 2):
            for op in OPS:
                if op in "+*" and i > j:
                    continue
                r = apply_op(nums[i], op, nums[j])
                if r is None or r < 0:
                    continue
                rest = [k for k in range(len(nums)) if k not in (i, j)]
                rec([nums[k] for k in rest] + [r], [exprs[k] for k in rest] + [Expr(r, op, exprs[i], exprs[j])],
                    steps + (Step(nums[i], op, nums[j], r),))

    nums = [Fraction(x) for x in sorted(puzzle)]
    rec(nums, [Expr(x) for x in nums], ())
    return {k: tuple(v) for k, v in sorted(out.items())}


def solve_from(state: State) -> bool:
    """Whether ``state`` can still reach 24 (exhaustive over its remaining moves)."""
    return solvable(state.numbers)


def after(numbers: tuple[Fraction, ...], step: Step) -> tuple[Fraction, ...]:
    """The numbers left (sorted) after ``step``."""
    rest = list(numbers)
    rest.remove(step.a)
    rest.remove(step.b)
    return tuple(sorted(rest + [step.result]))


@functools.lru_cache(maxsize=1 << 20)
def solvable(numbers: tuple[Fraction, ...], target: int = TARGET) -> bool:
    """Whether ``numbers`` (sorted) can still make ``target`` with the steps of :func:`steps_of`;
    memoised, since states of different puzzles repeat."""
    if len(numbers) == 1:
        return numbers[0] == target
    return any(solvable(after(numbers, st), target) for st in steps_of(numbers))


def solutions(puzzle) -> list[str]:
    """One expression per distinct solution."""
    return [seqs[0][1].text() for seqs in solve(tuple(sorted(puzzle))).values()]


def trace_of(puzzle, steps: tuple[Step, ...], expr: Expr | None = None) -> str:
    """The trace of a step sequence; ``expr`` (the solver's) names the answer when equal numbers make
    the sequence ambiguous."""
    s = State.start(tuple(sorted(puzzle)))
    for st in steps:
        s = s.apply(st)
    text = s.text()
    if expr is not None and s.done:
        text = text[:text.rindex(ANSWER)] + f"{ANSWER}{expr.text()} = {fmt(expr.value)}\n"
    return text


# ------------------------------------------------------------------------------------ data


def puzzles_path() -> Path:
    """``$MOT_DATA_DIR/game24/24.csv`` (the shared copy), or an error saying where to put it."""
    base = os.environ.get("MOT_DATA_DIR")
    cands = [Path(base) / "game24" / PUZZLES_FILE] if base else []
    for p in cands:
        if p.is_file():
            return p
    raise DataError("the Game of 24 puzzles (Tree of Thoughts' 24.csv) were not found: set MOT_DATA_DIR to the "
                    "folder holding game24/24.csv (https://github.com/princeton-nlp/tree-of-thought-llm, "
                    "src/tot/data/24/24.csv)")


def load_puzzles(path: str | Path | None = None) -> list[tuple[int, ...]]:
    """Every puzzle of the csv, in file order (row i of the data = index i)."""
    p = Path(path) if path is not None else puzzles_path()
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"cannot read the puzzles file {p}: {e}") from None
    if not rows or "Puzzles" not in rows[0]:
        raise DataError(f"{p} has no 'Puzzles' column: is it Tree of Thoughts' 24.csv?")
    return [parse_puzzle(r["Puzzles"]) for r in rows]


def split(puzzles: list[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]],
                                                  list[tuple[int, ...]]]:
    """``(train, val, test)``: the test set is rows 900-999 (Tree of Thoughts'), the validation set rows
    800-899 (similar difficulty: the file is sorted by human solving time); training takes every
    other row, less any puzzle equal to a held-out one."""
    test = [puzzles[i] for i in TEST_ROWS if i < len(puzzles)]
    val = [puzzles[i] for i in VAL_ROWS if i < len(puzzles)]
    held = set(test) | set(val)
    train = [p for i, p in enumerate(puzzles) if i not in TEST_ROWS and i not in VAL_ROWS and p not in held]
    return train, val, test


def synthetic_puzzles(up_to: int, exclude=()) -> list[tuple[int, ...]]:
    """Puzzles of the same form beyond the file: four numbers from 1 to ``up_to``, at least one above 13,
    that can make 24, less every multiset in ``exclude`` (pass the validation and test puzzles).

    Every multiset of 1-13 that can make 24 is already a row of ``24.csv``, so more data of the same
    form (same target, same prompt) needs larger numbers: up to 20 adds 4,344 puzzles to the 1,162
    training rows. (Other targets would need the target in every prompt, and so another format for
    every model and record.)

    Raises:
        DataError: ``up_to`` of 13 or less (nothing to add) or above 99.
    """
    if isinstance(up_to, bool) or not isinstance(up_to, int) or not HIGH < up_to <= 99:
        raise DataError(f"synthetic puzzles need numbers up to something between {HIGH + 1} and 99, got {up_to!r}")
    held = {tuple(sorted(p)) for p in exclude}
    return [p for p in itertools.combinations_with_replacement(range(LOW, up_to + 1), N_NUMBERS)
            if p[-1] > HIGH and p not in held and solvable(tuple(Fraction(x) for x in p))]


def training_text(puzzles: list[tuple[int, ...]], *, per_solution: int = 2, seed: int = 0) -> str:
    """Traces of every distinct solution of every puzzle (up to ``per_solution`` step orders each),
    shuffled, separated by blank lines. Pass only training puzzles (see :func:`split`)."""
    rng = random.Random(seed)
    blocks = []
    for p in puzzles:
        for seqs in solve(tuple(sorted(p))).values():
            picks = rng.sample(list(seqs), min(per_solution, len(seqs)))
            blocks += [trace_of(p, steps, expr) for steps, expr in picks]
    rng.shuffle(blocks)
    return "\n".join(blocks)
