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
        self.block_size = 256

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
        if limit >= 500:  # it stops only when the next row no longer fits: at most one trace (<= 160) unspent
            assert r.positions > limit - 160
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

    model = type("M", (), {"config": type("C", (), {"block_size": 128})})

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


class SlipInfiller(ScriptedInfiller):
    """The scripted infiller, but its first infill of each prompt writes one right step, then a wrong one."""

    def __init__(self):
        self.seen, self.prompts = set(), []

    def complete(self, prompts, seeds, length):
        self.prompts.append(list(prompts))
        out = super().complete(prompts, seeds, length)
        for i, p in enumerate(prompts):
            if p not in self.seen:
                self.seen.add(p)
                out[i] = (out[i][0].split("\n")[0] + "\n1 + 1 = 3 (left: 3)\n", out[i][1])
        return out


class ConstValue:
    """A value that puts every state at ``p``, read for ``cost`` positions."""

    def __init__(self, p: float, cost: int = 0):
        self.p, self.threshold, self.c = p, 0.5, cost

    def probs(self, states):
        return [self.p] * len(states)

    def cost(self, state):
        return self.c


def test_kept_lines_stop_at_the_first_step_the_verifier_rejects():
    task, s = S.Game24Task(), g.State.start((4, 5, 6, 10))
    state, lines = S.methods._kept_lines(task, s, "10 - 6 = 4 (left: 4 4 5)\n4 * 4 = 17 (left: 5 17)\n5 + 17 = 22\n")
    assert lines == "10 - 6 = 4 (left: 4 4 5)\n" and sorted(state.numbers) == [4, 4, 5]
    # a last step that ends away from 24 is not kept: a repair rewrites it
    miss = "10 - 6 = 4 (left: 4 4 5)\n4 * 5 = 20 (left: 4 20)\n4 + 20 = 24 (left: 24)\n"
    state, lines = S.methods._kept_lines(task, s, miss.replace("4 + 20 = 24 (left: 24)", "20 - 4 = 16 (left: 16)"))
    assert lines.count("\n") == 2 and not state.done
    state, lines = S.methods._kept_lines(task, s, miss + "answer: whatever\n")
    assert lines == miss and state.solved


def test_hybrid_repairs_rewrite_what_follows_the_last_right_step():
    task, p = S.Game24Task(), (4, 5, 6, 10)
    slip = SlipInfiller()
    none = S.hybrid(ScriptedLM(solve_first=True), slip, task, p, S.Budget(3000), batch=2, depth=1)
    assert none.attempts > 0 and not none.solved  # every first infill slips, and nothing repairs it
    slip = SlipInfiller()
    r = S.hybrid(ScriptedLM(solve_first=True), slip, task, p, S.Budget(8000), batch=2, depth=1, repairs=1)
    assert r.solved and r.attempts >= 2
    first, repair = slip.prompts[:2]
    # the repair's prompt is the first's with the right step the row wrote, the wrong one dropped
    assert all(b.startswith(a) and b.count("\n") == a.count("\n") + 1 for a, b in zip(first, repair, strict=True))
    for key, text in r.solutions.items():
        assert g.check_trace(p, text) == key


def test_hybrid_value_and_depth_pick_the_directions():
    task, p = S.Game24Task(), (4, 5, 6, 10)
    deep = SlipInfiller()
    r = S.hybrid(ScriptedLM(solve_first=True), deep, task, p, S.Budget(6000), batch=2, depth=2, repairs=1)
    assert r.solved and all(q.count("\n") >= 4 for q in deep.prompts[0])  # the prompt, two steps by the search
    keep = S.hybrid(ScriptedLM(solve_first=True), ScriptedInfiller(), task, p, S.Budget(3000), batch=2,
                    value=ConstValue(1.0))
    plain = S.hybrid(ScriptedLM(solve_first=True), ScriptedInfiller(), task, p, S.Budget(3000), batch=2)
    assert keep.method == "hybrid-value" and keep.found == plain.found and keep.positions == plain.positions
    # a value that drops every direction: proposals asked again and again, no infill, the budget kept to
    drop = S.hybrid(ScriptedLM(solve_first=True), ScriptedInfiller(), task, p, S.Budget(3000), value=ConstValue(0.0))
    assert not drop.solved and drop.attempts == 0 and drop.positions <= 3000
    # the value's reads are charged
    paid = S.hybrid(ScriptedLM(solve_first=True), ScriptedInfiller(), task, p, S.Budget(3000), batch=2,
                    value=ConstValue(1.0, cost=50))
    assert paid.found != plain.found or paid.positions != plain.positions


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
    (["solve", "4 5 6 10", "--method", "beam", "--model", "/nonexistent/run"], "does not exist"),
    (["solve", "4 5 6 10", "--method", "thoughts", "--mot-model", "/nonexistent/run"], "does not exist"),
    (["solve", "4 5 6 10", "--method", "sample@-1"], "temperature > 0"),
    (["solve", "4 5 6 10", "--method", "sample@hot"], "after @ comes a number"),
    (["solve", "4 5 6 10", "--method", "random@2"], "no knob"),
    (["eval", "--methods", "random", "--split", "train"], "--split"),
    (["eval", "--methods", "random,random"], "listed twice"),
    (["eval", "--methods", "random,nope"], "unknown method"),
    (["eval", "--methods", "random", "--budgets", "10,x"], "--budgets"),
    (["eval", "--methods", "mcts", "--c-puct", "-1"], "--c-puct"),
    (["eval", "--methods", "beam", "--proposals", "0"], "--proposals"),
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
    train, val, test = g.split(g.load_puzzles())
    heads = {line for line in text.splitlines() if line.endswith(":")}
    assert len(heads) == 1162 - sum(1 for p in set(train) if not g.solve(p))
    assert not heads & {" ".join(map(str, p)) + ":" for p in test + val}
    assert "100 test puzzles" in capsys.readouterr().out


def test_every_method_is_anytime():
    """One run at a large budget, read at a smaller one, equals running at the smaller budget."""
    task, p = S.Game24Task(), (4, 5, 6, 10)
    runs = {
        "sample": lambda b: S.sample_traces(ScriptedLM(valid=0.3), task, p, S.Budget(b), batch=4, seed=2),
        "beam": lambda b: S.beam_search(ScriptedLM(0.7, True), task, p, S.Budget(b), width=3, proposals=4, seed=2),
        "mcts": lambda b: S.mcts(ScriptedLM(0.7, True), task, p, S.Budget(b), proposals=4, seed=2),
        "hybrid": lambda b: S.hybrid(ScriptedLM(solve_first=True), ScriptedInfiller(), task, p, S.Budget(b),
                                     proposals=3, batch=2),
        "hybrid, depth 2, repairs": lambda b: S.hybrid(ScriptedLM(solve_first=True), SlipInfiller(), task, p,
                                                       S.Budget(b), proposals=3, batch=2, depth=2, repairs=2),
        "random": lambda b: S.random_steps(task, (1, 1, 4, 6), S.Budget(b), seed=2),
    }
    for name, run in runs.items():
        big = run(6000)
        assert big.solved, name
        for b in (150, 400, 900, 2500):
            small, read = run(b), big.upto(b)
            assert small.found == read.found, (name, b)
            assert set(small.solutions) == set(read.solutions) and read.positions <= b
        assert big.upto(6000).found == big.found


def test_beam_passes_widen():
    from itertools import islice

    assert list(islice(S.beam_schedule(5, 8), 5)) == [(1, 4), (2, 8), (4, 8), (5, 8), (5, 8)]
    # the first, narrow pass finishes within a small budget: a guiding proposer solves at once
    r = S.beam_search(ScriptedLM(solve_first=True), S.Game24Task(), (4, 5, 6, 10), S.Budget(800))
    assert r.solved and r.positions <= 800 and r.attempts == 1


def test_method_knobs_parse():
    from mixture_of_thoughts.experiments.game24_eval import Game24EvalConfig, MethodSpec, parse_method

    assert parse_method("sample") == MethodSpec("sample")
    assert parse_method("sample@0.7") == MethodSpec("sample", 0.7) and parse_method("sample@0.7").label == "sample@0.7"
    assert parse_method("thoughts@0").knob == 0.0
    cfg = Game24EvalConfig(methods=("sample@0.5", "thoughts@2", "beam"), temperature=0.9, creativity=1.5)
    assert [cfg.lm_settings(s) for s in cfg.specs] == [(0.5, 1.5), (0.9, 2.0), (0.9, 1.5)]
    cfg = Game24EvalConfig(methods=("sample", "thoughts@2"), temperature=0.9, thoughts_temperature=0.7)
    assert [cfg.lm_settings(s) for s in cfg.specs] == [(0.9, 1.0), (0.7, 2.0)]
    with pytest.raises(ConfigError, match="--thoughts-temperature"):
        Game24EvalConfig(methods=("thoughts",), thoughts_temperature=0.0)
    for bad in ("sample@0", "thoughts@-1", "beam@inf"):
        with pytest.raises(ConfigError):
            parse_method(bad)


def _rec(found: dict, positions=1000):
    return {"found": found, "solutions": {k: "" for k in found}, "attempts": 1, "positions": positions,
            "seconds": 1.0, "clock": [[positions, 1.0]]}


def test_goals_are_computed_from_the_records():
    from mixture_of_thoughts.experiments.game24_eval import _goals_markdown, budget_rows, goals

    n = 60
    records = {  # per puzzle: found -> positions spent when found
        "sample@0.5": [_rec({"a": 50}) if i < 30 else _rec({}) for i in range(n)],
        "sample@1": [_rec({"a": 50, "b": 300}) if i < 42 else _rec({}) for i in range(n)],
        "thoughts@2": [_rec({"a": 80, "b": 90, "c": 200}) if i < 36 else _rec({}) for i in range(n)],
        "beam": [_rec({"a": 60}) if i < 57 else _rec({}) for i in range(n)],
        "random": [_rec({"a": 500}) if i < 45 else _rec({}) for i in range(n)],
    }
    budgets = [100, 400, 1000]
    rows = [r for lab, recs in records.items() for r in budget_rows(lab, recs, budgets)]
    by = {(r["method"], r["budget"]): r for r in rows}
    assert by[("sample@1", 100)]["success"] == 0.7 and by[("sample@1", 100)]["distinct_correct"] == 0.7
    assert by[("sample@1", 400)]["distinct_correct"] == 1.4 and by[("random", 100)]["success"] == 0.0
    g = goals(records, budgets, rows, resamples=200)
    small, mid = g["best_method"]  # 74% at the smallest budget, 90% at the middle one
    assert (small["budget"], small["goal"], mid["budget"], mid["goal"]) == (100, 0.74, 400, 0.90)
    assert small["best"] == mid["best"] == "beam" and mid["success"] == 0.95 and small["met"] and mid["met"]
    s100, s400 = g["search_vs_sampling"]
    assert not s100["value"] and s100["search"] == "beam" and s100["sampling"] == "sample@1"
    assert s100["met"] and s400["budget"] == 400  # 0.95 vs 0.70 at 100
    assert "74% at 100 positions: met" in "\n".join(_goals_markdown(g))
    # with a value method in the run, it is the search judged (beam without the value is not)
    valued = {**records, "beam-value": [_rec({"a": 60}) if i < 33 else _rec({}) for i in range(n)]}
    vrows = [r for lab, recs in valued.items() for r in budget_rows(lab, recs, budgets)]
    vs = goals(valued, budgets, vrows, resamples=50)["search_vs_sampling"][0]
    assert vs["value"] and vs["search"] == "beam-value" and not vs["met"]  # 0.55 vs 0.70
    th = {e["budget"]: e for e in g["thoughts_vs_temperature"]}
    # at 400: thoughts 0.6 success, 3 distinct on its solved puzzles -> 1.8; the temperature line through
    # (0.5, 0.5) and (0.7, 1.4) reads 0.95 at 0.6
    assert th[400]["success"] == pytest.approx(0.6) and th[400]["temperature_line"] == pytest.approx(0.95)
    assert th[400]["delta"] == pytest.approx(0.85) and th[400]["ci"][0] > 0
    # the floor reaches 0.75 at 1000: above the samplers there, below everything at 100 and 400
    assert g["above_floor"]["met"] is False
    assert set(g["above_floor"]["not_above"]) == {"sample@0.5 @ 1000", "sample@1 @ 1000", "thoughts@2 @ 1000"}
    records["random"] = [_rec({}) for _ in range(n)]
    rows = [r for lab, recs in records.items() for r in budget_rows(lab, recs, budgets)]
    assert goals(records, budgets, rows, resamples=50)["above_floor"]["met"]


def test_eval_resumes_from_saved_records(tmp_path, tiny_model_factory, monkeypatch):
    from mixture_of_thoughts.experiments import game24_eval as E
    from mixture_of_thoughts.training.checkpoint import save_checkpoint

    model, tok = tiny_model_factory
    save_checkpoint(tmp_path / "ck", model, tok, objective="ar")
    cfg = dict(model=str(tmp_path / "ck"), methods=("sample@0.8", "random"), budgets=(60, 200),
               puzzles=[(1, 1, 4, 6), (4, 5, 6, 10)], out=str(tmp_path / "rep"))
    first = E.run_eval(E.Game24EvalConfig(**cfg))
    assert (tmp_path / "rep" / "methods" / "sample_at_0.8.json").is_file()

    def boom(*a, **k):
        raise AssertionError("a saved method ran again")

    monkeypatch.setattr(E, "run_method", boom)
    again = E.run_eval(E.Game24EvalConfig(**cfg))
    assert again["rows"] == first["rows"]
    with pytest.raises(AssertionError, match="ran again"):  # another seed is another record
        E.run_eval(E.Game24EvalConfig(**cfg, seed=5))


def test_missing_model_names_the_flag(monkeypatch, tmp_path):
    from mixture_of_thoughts.experiments import game24_eval as E

    monkeypatch.setattr(E, "SHIPPED_RUNS", {k: tmp_path / k for k in E.SHIPPED_RUNS})
    with pytest.raises(ConfigError, match="need --model"):
        E.load_line_models(E.Game24EvalConfig(methods=("beam", "mcts")))
    with pytest.raises(ConfigError, match="needs --mot-model"):
        E.load_line_models(E.Game24EvalConfig(methods=("thoughts",)))


def test_export_half_is_half_the_size_and_loads(tmp_path, tiny_model_factory):
    from mixture_of_thoughts.training.checkpoint import export_half, load_checkpoint, save_checkpoint

    model, tok = tiny_model_factory
    save_checkpoint(tmp_path / "ck", model, tok, objective="ar")
    dest = export_half(tmp_path / "ck", tmp_path / "half")
    full, half = (tmp_path / "ck" / "model.safetensors").stat().st_size, (dest / "model.safetensors").stat().st_size
    assert half < 0.6 * full
    ck = load_checkpoint(dest)
    assert next(ck.model.parameters()).dtype == torch.float32
    x = torch.tensor([tok.encode("4 5 6 10:")])
    assert torch.allclose(ck.model(x).logits, model(x).logits, atol=2e-2)
    with pytest.raises(Exception, match="exists"):
        export_half(tmp_path / "ck", tmp_path / "half")


def test_task_evaluator_scores_traces_for_branch_search(tiny_model_factory):
    from mixture_of_thoughts.config import ModelConfig
    from mixture_of_thoughts.generation.denoise_search import branch_search
    from mixture_of_thoughts.models.transformer import Transformer

    ev = S.TaskEvaluator(S.Game24Task(), (4, 5, 6, 10))
    prompt = "\n4 5 6 10:\n"
    good = ("10 - 6 = 4 (left: 4 4 5)\n4 * 5 = 20 (left: 4 20)\n4 + 20 = 24 (left: 24)\n"
            "answer: 4 + (5 * (10 - 6)) = 24\n")
    two = "10 - 6 = 4 (left: 4 4 5)\n4 * 5 = 20 (left: 4 20)\n4 + 7 = 11\n"
    one = "10 - 6 = 4 (left: 4 4 5)\n4 * 4 = 17 (left: 5 17)\n"
    scores = ev.score([good, two, one, "nonsense", good.replace("(10 - 6)) = 24", "(10 + 6)) = 24")], prompt).tolist()
    assert scores[0] == 1.0 and scores[1] == 0.375 and scores[2] == 0.25 and scores[3] == 0.0
    assert scores[4] == 0.4375  # three valid steps, a wrong answer: the most partial credit, still below 1
    # branch_search takes it like any evaluator: ranked best first by the verifier
    _, tok = tiny_model_factory
    cfg = ModelConfig(vocab_size=tok.vocab_size + 1, block_size=64, n_layer=2, n_head=2, n_embd=32, causal=False,
                      time_conditioning=True)
    model = Transformer(cfg).init_weights(torch.Generator().manual_seed(0)).eval()
    res = branch_search(model, tok, prompt, length=48, branches=4, keep=2, points=(0.5,), evaluator=ev, steps=4)
    assert len(res.branches) == 4 and [b.score for b in res.branches] == sorted((b.score for b in res.branches),
                                                                                   reverse=True)


def test_cli_train_init_refusals_lose_nothing(tmp_path, capsys, tiny_model_factory):
    """``train --init`` names what is wrong in one line and leaves both runs as they were."""
    from mixture_of_thoughts.cli import main
    from mixture_of_thoughts.training.checkpoint import save_checkpoint

    model, tok = tiny_model_factory
    run, other = tmp_path / "run", tmp_path / "other"
    save_checkpoint(run / "latest", model, tok, objective="ar")
    (other / "keep.txt").parent.mkdir()
    (other / "keep.txt").write_text("mine")
    data = tmp_path / "t.txt"
    data.write_text(g.training_text([(4, 5, 6, 10)], per_solution=1))
    refused = [(["--init", str(tmp_path / "none"), "--steps", "6", "--out", str(tmp_path / "x")], "not a run"),
               (["--init", str(run), "--out", str(tmp_path / "x")], "needs --steps"),
               (["--init", str(run), "--steps", "6", "--out", str(run)], "must differ"),
               (["--init", str(run), "--steps", "6", "--out", str(other)], "not empty")]
    for args, match in refused:
        assert main(["game24", "train", "--data", str(data), *args]) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1
    assert (other / "keep.txt").read_text() == "mine" and not (tmp_path / "x").exists()
    assert sorted(q.name for q in run.iterdir()) == ["latest"]


@pytest.mark.slow
def test_cli_train_init_continues_a_copy_on_other_data(tmp_path, capsys):
    """``train --init RUN``: RUN's copy trains on the new traces to the new total; RUN is left as it was.
    (The docs tour runs the same command in the default suite; this checks what it leaves.)"""
    from mixture_of_thoughts.cli import main
    from mixture_of_thoughts.training.checkpoint import load_checkpoint

    extra = g.synthetic_puzzles(14)
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(g.training_text(extra[:40], per_solution=1))
    second.write_text(g.training_text(extra[40:80], per_solution=1))
    run, cont = tmp_path / "run", tmp_path / "cont"
    assert main(["game24", "train", "--kind", "ar", "--data", str(first), "--steps", "2", "--out", str(run),
                 "--quiet"]) == 0
    before = (run / "latest" / "model.safetensors").read_bytes()
    assert main(["game24", "train", "--init", str(run), "--data", str(second), "--steps", "4", "--out", str(cont),
                 "--quiet"]) == 0
    assert "to step 4" in capsys.readouterr().out
    assert load_checkpoint(cont, which="latest").meta["step"] == 4
    assert load_checkpoint(cont, which="latest").meta["data"] == str(second)
    assert load_checkpoint(run, which="latest").meta["step"] == 2
    assert (run / "latest" / "model.safetensors").read_bytes() == before
    # --force replaces the run's own files and keeps anything else in the folder
    (cont / "notes.txt").write_text("mine")
    assert main(["game24", "train", "--init", str(run), "--data", str(second), "--steps", "3", "--out", str(cont),
                 "--quiet", "--force"]) == 0
    assert load_checkpoint(cont, which="latest").meta["step"] == 3 and (cont / "notes.txt").read_text() == "mine"


def test_truncated_gumbel_is_the_papers_formula_with_its_max_at_the_parent():
    from mixture_of_thoughts.tasks.search.models import truncated_gumbel

    g = torch.Generator().manual_seed(0)
    Gc = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    G = torch.randn(5, 1, generator=g, dtype=torch.float64) + 1
    direct = -torch.log(torch.exp(-G) - torch.exp(-Gc.max(-1, keepdim=True).values) + torch.exp(-Gc))
    out = truncated_gumbel(G, Gc)
    torch.testing.assert_close(out, direct)
    assert torch.allclose(out.max(-1).values, G[:, 0]) and torch.equal(out.argsort(-1), Gc.argsort(-1))


def test_sampling_without_replacement_is_distinct_seeded_and_samples_the_model(tiny_model_factory):
    """Stochastic beam search: the rows are distinct texts; its first row is a sample from the model's
    distribution over whole texts at the temperature (checked against the exact probabilities of the
    first character and of the likeliest two-character text over many seeds)."""
    model, tok = tiny_model_factory
    lm = S.LineModel(model, tok, temperature=0.5)
    prompt = "\n4 5 6 10:\n"
    rows = lm.sample_distinct(prompt, 3, 8, 12, "\n")
    texts = [r[0] for r in rows]
    assert len(texts) == 8 and len(set(texts)) == 8
    assert rows[0][2] == len(prompt) + len(texts[0]) and all(r[2] == len(r[0]) for r in rows[1:])
    assert all(len(t) <= 12 and "\n" not in t[:-1] and r[1] <= 0 for t, r in zip(texts, rows, strict=True))
    assert lm.sample_distinct(prompt, 3, 8, 12, "\n") == rows and lm.sample_distinct(prompt, 4, 8, 12, "\n") != rows
    # exactness over two characters: p(c1) and p(c1 c2) at the temperature, from the model itself
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        p1 = torch.softmax(model(ids).logits[0, -1] / 0.5, -1)
        c1 = int(p1.argmax())
        p2 = torch.softmax(model(torch.cat([ids, torch.tensor([[c1]])], 1)).logits[0, -1] / 0.5, -1)
    c2 = int(p2.argmax())
    n = 600
    firsts = [lm.sample_distinct(prompt, s, 4, 2, "\n\n")[0][0] for s in range(n)]
    freq = torch.tensor([sum(f[0] == tok.decode([v]) for f in firsts) for v in range(len(p1))], dtype=torch.float) / n
    assert 0.5 * (freq - p1).abs().sum() < 0.1  # total variation of the first character
    p_top = float(p1[c1] * p2[c2])
    hits = sum(f == tok.decode([c1, c2]) for f in firsts) / n
    assert abs(hits - p_top) < 4 * (p_top * (1 - p_top) / n) ** 0.5 + 0.01


def test_distinct_traces_spend_at_most_the_budget_and_never_repeat_a_text(tiny_model_factory):
    model, tok = tiny_model_factory
    lm = S.LineModel(model, tok, temperature=1.0)
    b = S.Budget(300)
    r = S.distinct_traces(lm, S.Game24Task(), (4, 5, 6, 10), b, width=16)
    assert r.method == "distinct" and 0 < r.positions <= 300 and 1 <= r.attempts <= 16
    with pytest.raises(ConfigError, match="dense model"):
        from mixture_of_thoughts.config import ModelConfig, ThoughtConfig
        from mixture_of_thoughts.models.transformer import Transformer

        cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32,
                          thought_layers="all", thoughts=ThoughtConfig(n_branches=2, k=1))
        S.LineModel(Transformer(cfg), tok).sample_distinct("\n4 5 6 10:\n", 0, 4, 8, "\n")


def test_a_pruning_hook_that_keeps_every_row_changes_nothing_but_the_charges(tiny_model_factory):
    """``sample_distinct(prune=...)``: asked at every line a row ends (not at the stop), a hook that keeps
    every row leaves the texts as they were; each row is charged what it wrote plus what judging its
    lines cost."""
    model, tok = tiny_model_factory
    lm = S.LineModel(model, tok, temperature=1.5)
    prompt = "\n4 5 6 10:\n"
    plain = lm.sample_distinct(prompt, 2, 16, 40, "\n\n")
    calls: list[str] = []

    def keep_all(texts):
        calls.extend(texts)
        return [0.0] * len(texts), [3] * len(texts)

    judged = lm.sample_distinct(prompt, 2, 16, 40, "\n\n", keep_all)
    assert [(t, x) for t, x, _ in judged] == [(t, x) for t, x, _ in plain]
    assert calls and all(c.endswith("\n") for c in calls)
    for b, (t, _, cost) in enumerate(judged):
        lines = t.count("\n") - t.endswith("\n\n")  # the stop's second newline ends the row, unjudged
        assert cost == len(t) + 3 * lines + (len(prompt) if b == 0 else 0)


def test_a_pruning_hook_drops_rows_and_charges_them_in_the_beams_order(tiny_model_factory):
    model, tok = tiny_model_factory
    lm = S.LineModel(model, tok, temperature=1.5)
    prompt = "\n4 5 6 10:\n"
    seen: list[str] = []

    def drop_all(texts):
        seen.extend(texts)
        return [float("-inf")] * len(texts), [5] * len(texts)

    rows = lm.sample_distinct(prompt, 2, 16, 40, "\n\n", drop_all)
    kept = [t for t, _, _ in rows if t is not None]
    assert all("\n" not in t for t in kept)  # any newline is judged (a stop's first one too), so dropped
    dropped = [c for t, _, c in rows if t is None]
    assert len(dropped) == len(seen) > 0  # a row ends at its first judged line
    first = len(prompt) if rows[0][0] is None else 0
    assert sorted(c - (first if i == 0 else 0) for i, (t, _, c) in enumerate(rows) if t is None) == \
        sorted(len(s) + 5 for s in seen)
    # the distinct method reads the dropped rows as charged, not as attempts
    b = S.Budget(2000)
    lm_drop = S.LineModel(model, tok, temperature=1.5)
    lm_drop.sample_distinct = lambda *a, **k: [(None, float("nan"), 30)] * 4 + [("x\n\n", -1.0, 5)]
    r = S.distinct_traces(lm_drop, S.Game24Task(), (4, 5, 6, 10), b, width=5)
    assert r.attempts >= 1 and r.positions <= 2000 and r.attempts * 30 < r.positions


def test_a_pruning_hook_that_weights_rows_reads_them_later(tiny_model_factory):
    """A log-weight moves a row's perturbed value and every completion's with it (a twist): rows the hook
    weights by -50 at their first line come after every other row, where unweighted one leads others."""
    model, tok = tiny_model_factory
    lm = S.LineModel(model, tok, temperature=1.5)
    prompt = "\n4 5 6 10:\n"
    plain = [t for t, _, _ in lm.sample_distinct(prompt, 2, 16, 40, "\n\n")]
    lined = [t for t in plain if "\n" in t]
    assert lined  # the tiny model writes lines
    first = lined[0][0]

    def heavy(texts):
        return [-50.0 if t.count("\n") == 1 and t[0] == first else 0.0 for t in texts], [0] * len(texts)

    rows = [t for t, _, _ in lm.sample_distinct(prompt, 2, 16, 40, "\n\n", heavy)]
    hit = [t[0] == first and "\n" in t for t in rows]
    before = [t[0] == first and "\n" in t for t in plain]
    assert before != sorted(before)  # unweighted, such a row leads some other
    assert hit == sorted(hit)  # weighted, every one comes after every other (or leaves the beam)
    assert len(set(rows)) == len(rows)


def test_hybrid_value_from_the_command_line_and_its_knobs(capsys, tmp_path):
    """The shipped AR model, value head and denoiser: solve runs the hybrid with the knobs chosen on the
    validation rows (recorded in the eval's key); bad knobs are one-line errors."""
    import json

    from mixture_of_thoughts.cli import main
    from mixture_of_thoughts.experiments import game24_eval as E

    rc = main(["game24", "solve", "4 5 6 10", "--method", "hybrid-value", "--budget", "3600", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc in (0, 1) and out["method"] == "hybrid-value" and 0 < out["positions"] <= 3600
    assert all(g.check_trace((4, 5, 6, 10), t) for t in out["solutions"])
    cfg = E.Game24EvalConfig(methods=("hybrid-value",), budgets=(900,), puzzles=[(4, 5, 6, 10)],
                             out=str(tmp_path / "rep"))
    E.run_eval(cfg)
    key = json.loads((tmp_path / "rep" / "methods" / "hybrid-value.json").read_text())["key"]
    assert (key["depth"], key["diffusion_steps"], key["repairs"]) == (2, 4, 0) and "threshold" in key
    for args, match in ((["--depth", "3"], "--depth is 1 or 2"), (["--repairs", "-1"], "--repairs must"),
                        (["--diffusion-steps", "0"], "--diffusion-steps must")):
        assert main(["game24", "solve", "4 5 6 10", "--method", "hybrid", *args]) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1
