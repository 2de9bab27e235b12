"""Game of 24: puzzle parsing, the exact solver, the verifier, traces and the train/test split."""

from __future__ import annotations

import itertools
import os
from fractions import Fraction
from pathlib import Path

import pytest

from mixture_of_thoughts.errors import DataError
from mixture_of_thoughts.tasks import game24 as g


@pytest.mark.parametrize("bad, match", [("4 5 6", "4 numbers"), ("4 5 6 10 2", "4 numbers"), ("4 5 6 14", "outside"),
                                        ("0 5 6 10", "outside"), ("4 5 six 10", "not a whole number"),
                                        ("4 5 6 1.5", "not a whole number")])
def test_bad_puzzles_are_named(bad, match):
    with pytest.raises(DataError, match=match):
        g.parse_puzzle(bad)


def test_parse_puzzle_sorts_and_accepts_commas():
    assert g.parse_puzzle("10, 4 6,5") == (4, 5, 6, 10)


@pytest.mark.parametrize("answer, ok", [
    ("(10 - 6) * (1 + 5)", False),  # 24 but not this puzzle's numbers
    ("(5 * (10 - 4)) - 6", True),
    ("5 * (10 - 4) - 6 = 24", True),  # the "= 24" tail is allowed
    ("4 + 5 * (10 - 6)", True),
    ("4 * 5 + 10 - 6", True),
    ("4 * 5 + 10 - 6 - 0", False),  # a number that is not in the puzzle
    ("4 * 6", False),  # not every number used
    ("(4 + 5 + 6) + 10", False),  # 25
    ("4 * 5 * 6 / 10 / 0", False),  # division by zero
    ("__import__('os').getcwd()", False),
    ("4 ** 5 - 6 - 10", False),  # only + - * /
    ("-4 + 5 * 6 - 10 + 8", False),
])
def test_verify(answer, ok):
    assert g.verify("4 5 6 10", answer) is ok


def test_exact_arithmetic():
    # 8 / (3 - 8/3) = 24 only in exact arithmetic; it is the puzzle's one solution
    assert g.verify("3 3 8 8", "8 / (3 - 8 / 3)")
    assert g.solutions((3, 3, 8, 8)) == ["8 / (3 - (8 / 3))"]
    assert g.solve((1, 1, 1, 1)) == {}


def test_canonical_merges_commutative_and_associative_forms():
    key = g.canonical(g.parse_expression("(10 - 6) + (4 * 5)"))
    assert g.canonical(g.parse_expression("(5 * 4) + (10 - 6)")) == key
    assert g.canonical(g.parse_expression("10 - (6 - 4 * 5)")) == key
    assert g.canonical(g.parse_expression("4 + 5 * (10 - 6)")) != key


@pytest.mark.parametrize("puzzle", [(4, 5, 6, 10), (1, 2, 4, 7), (3, 3, 8, 8), (1, 1, 4, 6), (2, 5, 8, 11)])
def test_every_solver_trace_is_valid_and_reaches_its_solution(puzzle):
    sols = g.solve(puzzle)
    assert sols, "these puzzles are solvable"
    for key, seqs in sols.items():
        for steps, expr in seqs:
            trace = g.trace_of(puzzle, steps, expr)
            assert g.check_trace(puzzle, trace) == key
            # the step lines parse back, one after the other, from the start state
            s = g.State.start(puzzle)
            for line in trace.splitlines()[1:-1]:
                st = g.parse_step(s, line)
                assert st is not None, line
                s = s.apply(st)
            assert s.solved
    assert len(set(g.solutions(puzzle))) == len(sols)


def test_states_and_steps():
    s = g.State.start((4, 5, 6, 10))
    moves = s.moves()
    assert all(m.result >= 0 for m in moves)
    assert len({(m.a, m.op, m.b) for m in moves}) == len(moves)
    assert g.Step(Fraction(10), "-", Fraction(6), Fraction(4)) in moves
    assert g.Step(Fraction(6), "-", Fraction(10), Fraction(-4)) not in moves
    nxt = s.apply(g.Step(Fraction(10), "-", Fraction(6), Fraction(4)))
    assert nxt.numbers == (4, 4, 5) and nxt.text().splitlines()[1] == "10 - 6 = 4 (left: 4 4 5)"
    with pytest.raises(ValueError):
        s.apply(g.Step(Fraction(7), "+", Fraction(6), Fraction(13)))  # 7 is not there
    with pytest.raises(ValueError):
        s.apply(g.Step(Fraction(10), "-", Fraction(6), Fraction(5)))  # wrong arithmetic
    # a generated line is accepted only with the right arithmetic and the right numbers left
    assert g.parse_step(s, "10 - 6 = 4 (left: 4 4 5)") is not None
    assert g.parse_step(s, "10 - 6 = 5 (left: 4 5 5)") is None
    assert g.parse_step(s, "10 - 6 = 4 (left: 4 5)") is None
    assert g.parse_step(s, "10 ^ 6 = 4 (left: 4 4 5)") is None
    assert g.parse_step(s, "answer: 24") is None
    assert g.parse_step(s, "10 / 4 = 5/2 (left: 5/2 5 6)") is not None


def test_check_trace_reads_the_answer_line():
    assert g.check_trace((4, 5, 6, 10), "4 5 6 10:\nanswer: 4 + 5 * (10 - 6) = 24\n") is not None
    assert g.check_trace((4, 5, 6, 10), "4 5 6 10:\nanswer: 4 + 5 * (10 - 6) + 1 = 25\n") is None
    assert g.check_trace((4, 5, 6, 10), "4 5 6 10:\n10 - 6 = 4 (left: 4 4 5)\n") is None


@pytest.fixture
def puzzles():
    if not os.environ.get("MOT_DATA_DIR"):
        pytest.skip("MOT_DATA_DIR (the shared data folder with game24/24.csv) is not set")
    return g.load_puzzles()


def test_split_keeps_the_test_puzzles_out(puzzles):
    assert len(puzzles) == 1362 and puzzles[900] == (4, 5, 6, 10)
    train, val, test = g.split(puzzles)
    assert len(test) == 100 and len(val) == 100 and not set(train) & (set(test) | set(val))
    assert test[0] == puzzles[900] and val[0] == puzzles[800] and len(train) == 1362 - 200
    text = g.training_text(train[:40], seed=1)
    heads = {line for line in text.splitlines() if line.endswith(":")}
    assert heads and not heads & {" ".join(map(str, p)) + ":" for p in test}
    # every block of the training text is a valid solution trace of its puzzle
    for block in text.strip().split("\n\n"):
        p = g.parse_puzzle(block.splitlines()[0].rstrip(":"))
        assert g.check_trace(p, block) is not None


def test_synthetic_puzzles_are_new_solvable_and_leave_the_held_out_multisets_out():
    held = [(1, 2, 12, 14), (1, 1, 1, 14)]  # the first can make 24 (14 + 12 - 2 * 1), so only exclude keeps it out
    extra = g.synthetic_puzzles(14, exclude=held)
    assert extra and all(max(p) == 14 and len(p) == 4 and p == tuple(sorted(p)) for p in extra)
    assert not set(extra) & set(held) and len(set(extra)) == len(extra) and g.solutions((1, 2, 12, 14))
    assert all(g.solutions(p) for p in extra)  # each can make 24 (the solver finds a solution)
    # and none that can make 24 is missing: every other multiset with a 14 has no solution
    rest = {p for p in itertools.combinations_with_replacement(range(1, 15), 4) if p[-1] == 14} - set(extra) - set(held)
    assert rest and not any(g.solutions(p) for p in rest)
    for bad in (13, 100, True, "20"):
        with pytest.raises(DataError, match="between 14 and 99"):
            g.synthetic_puzzles(bad)


def test_missing_puzzles_file_says_where(monkeypatch, tmp_path):
    monkeypatch.setenv("MOT_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="MOT_DATA_DIR"):
        g.puzzles_path()
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="Puzzles"):
        g.load_puzzles(Path(bad))
