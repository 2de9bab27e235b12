"""Search over thoughts on Game of 24: budgets, the methods' logic and the floor/ceiling anchors."""

from __future__ import annotations

import random

import pytest
import torch

from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.tasks import game24 as g
from mixture_of_thoughts.tasks import search as S

ALPHABET = "0123456789+-*/=():left answr\n"


class ScriptedLM:
    """A stand-in proposer for testing the search logic: writes, for each prompt, a step line chosen
    from the state's moves (valid with probability ``valid``) or the rest of a solver trace."""

    def __init__(self, valid: float = 1.0, solve_first: bool = False):
        self.valid, self.solve_first, self.calls = valid, solve_first, 0

    def continue_(self, prompts, seeds, max_chars, stop):
        out = []
        for p, seed in zip(prompts, seeds, strict=True):
            rng = random.Random(seed)
            lines = p.strip("\n").splitlines()
            puzzle = g.parse_puzzle(lines[0].rstrip(":"))
            s = g.State.start(puzzle)
            for line in lines[1:]:
                s = s.apply(g.parse_step(s, line))
            if stop == "\n\n":  # a whole trace: a solver trace or a random one
                sols = list(g.solve(puzzle).values())
                if sols and rng.random() < self.valid:
                    steps, expr = rng.choice(sols)[0]
                    text = g.trace_of(puzzle, steps, expr)[len(s.prompt()):] + "\n"
                else:
                    text = "1 + 1 = 2 (left: 2)\nanswer: 1 + 1 = 2\n\n"
            else:
                moves = s.moves()
                if self.solve_first:  # a move on the way to a solution where there is one
                    good = [m for m in moves if g.solve_from(s.apply(m))]
                    moves = good or moves
                m = rng.choice(moves)
                text = m.line(s.apply(m).numbers) + "\n" if rng.random() < self.valid else "7 ^ 7 = 1\n"
            out.append((text, -float(len(text)) * rng.random(), len(p) + len(text)))
            self.calls += 1
        return out


def test_budget_takes_rows_while_they_fit():
    b = S.Budget(100)
    assert b.take([40, 40, 40]) == 2 and b.spent == 80 and b.left == 20
    assert b.take([30]) == 0 and b.spent == 80
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ConfigError, match="budget"):
            S.Budget(bad)


def test_sampling_spends_at_most_its_budget_and_verifies():
    task = S.Game24Task()
    for limit in (60, 500, 2000):
        r = S.sample_traces(ScriptedLM(valid=0.5), task, (4, 5, 6, 10), S.Budget(limit), batch=4, seed=1)
        assert r.positions <= limit and r.attempts * 20 <= limit
        for key, text in r.solutions.items():
            assert g.check_trace((4, 5, 6, 10), "4 5 6 10:\n" + text) == key
    bad = S.sample_traces(ScriptedLM(valid=0.0), task, (4, 5, 6, 10), S.Budget(2000), batch=4)
    assert bad.attempts > 0 and not bad.solved  # wrong traces are never counted as solutions


def test_beam_search_finds_solutions_with_a_guiding_proposer():
    task = S.Game24Task()
    r = S.beam_search(ScriptedLM(solve_first=True), task, (4, 5, 6, 10), S.Budget(3000), width=3, proposals=4)
    assert r.solved and r.positions <= 3000
    assert set(r.solutions) <= set(g.solve((4, 5, 6, 10)))
    # invalid proposals are dropped: a proposer that only writes invalid lines finds nothing
    none = S.beam_search(ScriptedLM(valid=0.0), task, (4, 5, 6, 10), S.Budget(3000))
    assert not none.solved and none.positions <= 3000


def test_mcts_finds_distinct_solutions_within_budget():
    task = S.Game24Task()
    r = S.mcts(ScriptedLM(), task, (1, 1, 4, 6), S.Budget(20000), proposals=6, seed=3)
    assert r.positions <= 20000 and len(r.solutions) >= 2  # the novelty reward moves it to new solutions
    assert set(r.solutions) <= set(g.solve((1, 1, 4, 6)))
    for key, text in r.solutions.items():
        assert g.check_trace((1, 1, 4, 6), text) == key
    dead = S.mcts(ScriptedLM(valid=0.0), task, (1, 1, 4, 6), S.Budget(2000))
    assert not dead.solved and dead.positions <= 2000


class ScriptedInfiller:
    """Writes the rest of a solver trace from the prompt's state when one exists (else nonsense)."""

    def complete(self, prompts, seeds, length):
        out = []
        for p in prompts:
            lines = p.strip("\n").splitlines()
            puzzle = g.parse_puzzle(lines[0].rstrip(":"))
            s = g.State.start(puzzle)
            for line in lines[1:]:
                s = s.apply(g.parse_step(s, line))
            text = "9 + 9 = 18 (left: 18)\nanswer: 9 + 9 = 18\n"
            for m in s.moves():
                nxt = s.apply(m)
                if g.solve_from(nxt):
                    t = nxt
                    while not t.done:
                        t = t.apply(next(x for x in t.moves() if g.solve_from(t.apply(x))))
                    text = t.text()[len(s.text()):]
                    break
            out.append((text + "\n", 10 * length))
        return out


def test_hybrid_infills_after_the_first_steps():
    task = S.Game24Task()
    r = S.hybrid(ScriptedLM(solve_first=True), ScriptedInfiller(), task, (4, 5, 6, 10), S.Budget(20000), batch=4)
    assert r.solved and r.positions <= 20000 and r.attempts >= 4
    for key, text in r.solutions.items():
        assert g.check_trace((4, 5, 6, 10), text) == key
    # a first step that leads nowhere cannot be completed into a solution
    poor = S.hybrid(ScriptedLM(), ScriptedInfiller(), task, (3, 3, 8, 8), S.Budget(3000), batch=2)
    assert poor.positions <= 3000


def test_infiller_with_a_tiny_diffusion_model(tiny_model_factory):
    from mixture_of_thoughts.config import ModelConfig
    from mixture_of_thoughts.models.transformer import Transformer

    _, tok = tiny_model_factory
    cfg = ModelConfig(vocab_size=tok.vocab_size + 1, block_size=64, n_layer=2, n_head=2, n_embd=32, causal=False,
                      time_conditioning=True)
    inf = S.Infiller(Transformer(cfg).init_weights(torch.Generator().manual_seed(0)), tok, steps=4)
    rows = inf.complete(["\n4 5 6 10:\n", "\n1 1 4 6:\n1 + 1 = 2 (left: 2 4 6)\n"], [1, 2], 48)
    prompt_len = len("\n1 1 4 6:\n1 + 1 = 2 (left: 2 4 6)\n")
    assert [len(t) for t, _ in rows] == [48 - prompt_len] * 2 and all(c == 4 * 48 for _, c in rows)
    with pytest.raises(ConfigError, match="block size"):
        inf.complete(["\n4 5 6 10:\n"], [1], 65)


def test_random_floor_and_solver_ceiling():
    task = S.Game24Task()
    ceiling = S.exact((1, 1, 4, 6))
    assert len(ceiling.solutions) == len(g.solve((1, 1, 4, 6)))
    floor = S.random_steps(task, (1, 1, 4, 6), S.Budget(200 * S.trace_cost((1, 1, 4, 6))), seed=0)
    assert floor.attempts == 200 and floor.solved  # an easy puzzle falls to 200 random attempts
    assert set(floor.solutions) <= set(ceiling.solutions)
    hard = S.random_steps(task, (3, 3, 8, 8), S.Budget(20 * S.trace_cost((3, 3, 8, 8))), seed=0)
    assert hard.attempts == 20 and not hard.solved


def test_line_model_pads_and_counts_positions(tiny_model_factory):
    model, tok = tiny_model_factory
    lm = S.LineModel(model, tok, temperature=1.0)
    rows = lm.continue_(["\n4 5 6 10:\n", "\n1 1 4 6:\n10 - 6"], [1, 2], 12, "\n")
    for (text, ll, pos), prompt in zip(rows, ["\n4 5 6 10:\n", "\n1 1 4 6:\n10 - 6"], strict=True):
        assert 1 <= len(text) <= 12 and pos == len(prompt) + len(text) and ll <= 0
        assert "\n" not in text[:-1]  # a row stops at its first newline
    # a dense model reads a prompt shared by several rows once: the same texts as reading it per row,
    # its positions charged to its first row only
    shared = lm.continue_(["\n4 5 6 10:\n"] * 3, [1, 5, 6], 12, "\n")
    solo = [lm.continue_(["\n4 5 6 10:\n"], [s], 12, "\n")[0] for s in (1, 5, 6)]
    assert [r[0] for r in shared] == [r[0] for r in solo]
    assert [r[1] for r in shared] == pytest.approx([r[1] for r in solo], abs=1e-4)
    assert shared[0][2] == solo[0][2] and shared[1][2] == len(shared[1][0])
    # seeded: the same call writes the same rows; other seeds write other rows
    assert lm.continue_(["\n4 5 6 10:\n", "\n1 1 4 6:\n10 - 6"], [1, 2], 12, "\n") == rows
    assert lm.continue_(["\n4 5 6 10:\n", "\n1 1 4 6:\n10 - 6"], [3, 4], 12, "\n") != rows


def test_a_thought_model_reads_its_prompt_per_row():
    """A MoT model's prompt activations depend on each row's noise: no sharing, every row pays its prompt."""
    from mixture_of_thoughts.config import ModelConfig, ThoughtConfig
    from mixture_of_thoughts.data.tokenizer import CharTokenizer
    from mixture_of_thoughts.models.transformer import Transformer

    tok = CharTokenizer.from_text(ALPHABET)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, thought_layers="all",
                      thoughts=ThoughtConfig(n_branches=4, k=2))
    lm = S.LineModel(Transformer(cfg).init_weights(torch.Generator().manual_seed(0)), tok, creativity=2.0)
    assert not lm.shares_prompts
    rows = lm.continue_(["\n4 5 6 10:\n"] * 2, [1, 2], 8, "\n")
    assert all(pos == len("\n4 5 6 10:\n") + len(text) for text, _, pos in rows)


@pytest.fixture
def tiny_model_factory():
    from mixture_of_thoughts.config import ModelConfig
    from mixture_of_thoughts.data.tokenizer import CharTokenizer
    from mixture_of_thoughts.models.transformer import Transformer

    tok = CharTokenizer.from_text(ALPHABET)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=2, n_head=2, n_embd=32)
    return Transformer(cfg).init_weights(torch.Generator().manual_seed(0)).eval(), tok


@pytest.mark.parametrize("args, match", [
    (["solve", "4 5 6"], "4 numbers"), (["solve", "4 5 6 14"], "outside 1-13"),
    (["solve", "4 5 six 10"], "not a whole number"), (["solve", "4 5 6 10", "--method", "mcts9"], "unknown method"),
    (["solve", "4 5 6 10", "--method", "random", "--budget", "0"], "--budget must be"),
    (["solve", "4 5 6 10", "--method", "beam"], "needs --model"),
    (["solve", "4 5 6 10", "--method", "mcts"], "needs --model"),
    (["solve", "4 5 6 10", "--method", "thoughts"], "needs --mot-model"),
    (["solve", "4 5 6 10", "--method", "hybrid", "--model", "x"], "--diffusion-model"),
    (["eval", "--methods", "random,nope"], "unknown method"),
    (["eval", "--methods", "random", "--budgets", "10,x"], "--budgets"),
])
def test_cli_errors_are_one_line(args, match, capsys):
    from mixture_of_thoughts.cli import main

    assert main(["game24", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mot: error:") and match in err and len(err.splitlines()) == 1


def test_cli_solve_prints_solutions(capsys):
    from mixture_of_thoughts.cli import main

    assert main(["game24", "solve", "3 3 8 8", "--method", "solver"]) == 0
    out = capsys.readouterr().out
    assert "1 distinct solution" in out and "8 / (3 - (8 / 3)) = 24" in out


def test_eval_report_with_a_tiny_model(tmp_path, tiny_model_factory):
    """The whole eval pipeline on a few puzzles: a random model solves little; the floor and the ceiling
    are computed; the report and plot are written."""
    import json

    from mixture_of_thoughts.experiments.game24_eval import Game24EvalConfig, run_eval
    from mixture_of_thoughts.training.checkpoint import save_checkpoint

    model, tok = tiny_model_factory
    run = tmp_path / "ck"
    save_checkpoint(run, model, tok, objective="ar")
    cfg = Game24EvalConfig(model=str(run), methods=("sample", "beam", "mcts", "random"), budgets=(40, 400),
                           puzzles=[(1, 1, 4, 6), (4, 5, 6, 10)], out=str(tmp_path / "rep"), proposals=2, width=2)
    res = run_eval(cfg)
    rows = {(r["method"], r["budget"]): r for r in res["rows"]}
    assert set(rows) == {(m, b) for m in ("sample", "beam", "mcts", "random") for b in (40, 400)}
    for r in rows.values():
        assert r["positions"] <= r["budget"] and 0 <= r["ci"][0] <= r["success"] <= r["ci"][1] <= 1
    assert res["solver"]["success"] == 1.0 and res["solver"]["distinct_correct"] > 1
    assert (tmp_path / "rep" / "success.png").stat().st_size > 0
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["n_puzzles"] == 2
    assert "Tree of Thoughts" in (tmp_path / "rep" / "report.md").read_text()


def test_cli_data_writes_training_traces_only(tmp_path, capsys):
    import os

    from mixture_of_thoughts.cli import main

    if not os.environ.get("MOT_DATA_DIR"):
        pytest.skip("MOT_DATA_DIR (with game24/24.csv) is not set")
    out = tmp_path / "t.txt"
    assert main(["game24", "data", "--out", str(out), "--per-solution", "1"]) == 0
    text = out.read_text()
    test = g.split(g.load_puzzles())[1]
    heads = {line for line in text.splitlines() if line.endswith(":")}
    assert len(heads) == 1262 - sum(1 for p in set(g.split(g.load_puzzles())[0]) if not g.solve(p))
    assert not heads & {" ".join(map(str, p)) + ":" for p in test}
    assert "the 100 test puzzles" in capsys.readouterr().out
