"""The learned value of Game of 24 states: solver labels, the network, saving, and search that uses it."""

from __future__ import annotations

import json
import math
import os
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from mixture_of_thoughts.config import ModelConfig
from mixture_of_thoughts.data.tokenizer import CharTokenizer
from mixture_of_thoughts.errors import ConfigError, DataError
from mixture_of_thoughts.experiments import game24_eval as E
from mixture_of_thoughts.models.transformer import Transformer
from mixture_of_thoughts.tasks import game24 as g
from mixture_of_thoughts.tasks import search as S
from mixture_of_thoughts.tasks import value as V
from mixture_of_thoughts.training.checkpoint import save_checkpoint
from test_task_search import ALPHABET, ScriptedLM

PUZZLES = [(4, 5, 6, 10), (1, 1, 4, 6), (3, 3, 8, 8), (1, 1, 1, 1), (2, 5, 8, 11), (1, 2, 4, 7), (5, 5, 5, 1),
           (13, 13, 13, 13), (1, 3, 4, 6), (2, 2, 6, 9)]


def test_solvable_agrees_with_the_solver():
    rng = random.Random(0)
    puzzles = PUZZLES + [tuple(sorted(rng.randint(1, 13) for _ in range(4))) for _ in range(60)]
    verdicts = [g.solvable(tuple(Fraction(x) for x in sorted(p))) for p in puzzles]
    assert verdicts == [bool(g.solve(p)) for p in puzzles]
    assert any(verdicts) and not all(verdicts)
    assert g.solvable((Fraction(3),), 3) and not g.solvable((Fraction(3),))  # other targets too
    assert g.solvable((Fraction(2), Fraction(5)), 10) and not g.solvable((Fraction(2), Fraction(5)), 11)


def test_reachable_states_and_their_labels():
    states = V.reachable((4, 5, 6, 10))
    start = (tuple(Fraction(x) for x in (4, 5, 6, 10)), 24)
    assert start in states and all(len(n) >= 2 for n, _ in states)
    assert {len(n) for n, _ in states} == {2, 3, 4}
    # every state one valid step from the start is there (the numbers left, sorted)
    s = g.State.start((4, 5, 6, 10))
    assert all((tuple(sorted(s.apply(m).numbers)), 24) in states for m in s.moves())
    labelled = V.value_examples([(4, 5, 6, 10), (1, 1, 1, 1)])
    assert len(labelled) == len(states | V.reachable((1, 1, 1, 1)))
    by = {(n, t): y for n, t, y in labelled}
    assert by[start] and not by[(tuple(Fraction(1) for _ in range(4)), 24)]
    assert all(y == bool(g.solvable(n)) for n, _, y in labelled)
    assert V.state_text((Fraction(9), Fraction(4), Fraction(8, 3))) == "8/3 4 9 -> 24"


def test_the_network_ignores_the_order_of_the_numbers():
    net = V.ValueNet(20, V.ValueConfig(d_model=16, n_layers=1, n_heads=2)).eval()
    vocab = {str(w): i for i, w in enumerate(["<pad>", "<unk>", 24, 1, 2, 3, 5, 7])}
    ids = V._encode(vocab, [((Fraction(1), Fraction(2), Fraction(5), Fraction(7)), 24),
                            ((Fraction(1), Fraction(2)), 24), ((Fraction(1), Fraction(11)), 24)])
    assert ids[2, 2] == V.UNK and (ids[1, 3:] == V.PAD).all()
    out = net(ids)
    assert torch.allclose(net(ids[:1, [0, 4, 2, 3, 1]]), out[:1], atol=1e-5)  # the same multiset reordered
    assert torch.allclose(net(ids[1:2, :3]), out[1:2], atol=1e-5)  # padding changes nothing
    assert not torch.allclose(out[0], out[1])


def test_auc_and_threshold():
    y = np.array([True, True, False, False, True, False])
    assert V._auc(np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3]), y) == 1.0
    assert V._auc(np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7]), y) == 0.0
    assert V._auc(np.full(6, 0.5), y) == 0.5  # ties share the rank
    rng = np.random.default_rng(0)
    p, y = rng.random(1000), rng.random(1000) < 0.3
    t = V.choose_threshold(p, y)
    c = V.classify(p, y, t)
    assert c["live_pruned"] <= 0.02 and V.classify(p, y, np.nextafter(t, 1))["live_pruned"] > 0.0
    assert np.isclose(c["dead_kept"], (p[~y] >= t).mean())


@pytest.fixture(scope="module")
def small_value():
    """A value trained for seconds on the states of 60 random puzzles (many of the test states are new)."""
    rng = random.Random(1)
    train = [tuple(sorted(rng.randint(1, 13) for _ in range(4))) for _ in range(60)]
    val = [p for p in PUZZLES if p not in train]
    cfg = V.ValueConfig(d_model=32, n_layers=2, n_heads=2, epochs=6, batch_size=64, lr=3e-3, seed=3)
    return V.train_value(train, val, cfg)


def test_training_learns_the_labels_and_is_reproducible(small_value):
    hist = small_value.meta["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert small_value.meta["val"]["val_auc"] > 0.75  # far above chance on states it never saw
    assert small_value.meta["val"]["live_pruned"] <= 0.02
    before = torch.random.get_rng_state()
    again = V.train_value(*_small_split(), V.ValueConfig(d_model=32, n_layers=2, n_heads=2, epochs=1, seed=3))
    once = V.train_value(*_small_split(), V.ValueConfig(d_model=32, n_layers=2, n_heads=2, epochs=1, seed=3))
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is not touched
    keys = [(tuple(Fraction(x) for x in p), 24) for p in PUZZLES]
    assert np.array_equal(again.probs_of(keys), once.probs_of(keys))


def test_training_of_any_length_runs():
    # 10 steps in all once broke the learning-rate schedule (a warm-up ending on step 0 divided by zero)
    for epochs in (1, 10):
        v = V.train_value(*_small_split(), V.ValueConfig(d_model=16, n_layers=1, n_heads=2, epochs=epochs,
                                                         batch_size=10_000))
        assert len(v.meta["history"]) == epochs and np.isfinite(v.meta["history"][-1]["train_loss"])


def _small_split():
    return [(4, 5, 6, 10), (1, 1, 4, 6), (1, 1, 1, 1)], [(3, 3, 8, 8)]


def test_save_and_load(small_value, tmp_path):
    small_value.save(tmp_path / "v")
    back = V.load_value(tmp_path / "v")
    states = [g.State.start(p) for p in PUZZLES]
    assert np.array_equal(back.probs(states), small_value.probs(states))
    assert back.threshold == small_value.threshold and back.meta["data"] == small_value.meta["data"]
    with pytest.raises(ConfigError, match="--force"):
        small_value.save(tmp_path / "v")
    small_value.save(tmp_path / "v", force=True)
    assert not list((tmp_path / "v").glob("*.tmp"))
    with pytest.raises(ConfigError, match="train-value"):
        V.load_value(tmp_path / "nothing")
    meta = json.loads((tmp_path / "v" / V.META).read_text())
    meta["config"]["d_model"] = 64  # weights of another size
    (tmp_path / "v" / V.META).write_text(json.dumps(meta))
    with pytest.raises(DataError, match="not a readable value"):
        V.load_value(tmp_path / "v")


def test_the_shipped_value_is_what_its_record_says():
    if not os.environ.get("MOT_DATA_DIR"):
        pytest.skip("MOT_DATA_DIR (with game24/24.csv) is not set")
    value = V.load_value()
    _, val, _ = g.split(g.load_puzzles())
    ex = V.value_examples(val)
    p = value.probs_of([(n, t) for n, t, _ in ex])
    y = np.array([lab for *_, lab in ex])
    rec = value.meta["val"]
    assert len(ex) == value.meta["data"]["val_states"]
    assert V._auc(p, y) == pytest.approx(rec["val_auc"], abs=1e-6) and rec["val_auc"] > 0.9
    assert V.classify(p, y, value.threshold)["live_pruned"] == pytest.approx(rec["live_pruned"])
    assert sum(x.numel() for x in value.net.parameters()) <= 10_000_000


class OracleValue:
    """The solver as a value (tests only: a search must never run the solver on a test puzzle)."""

    threshold = 0.5

    def __init__(self):
        self.read: list = []

    def probs(self, states):
        self.read += states
        return [float(g.solve_from(s)) for s in states]

    cost = staticmethod(V.Value.cost)


class RecordingLM(ScriptedLM):
    """Remembers the state behind every line it was asked for, and the positions it charged."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.asked, self.charged = [], 0

    def continue_(self, prompts, seeds, max_chars, stop):
        out = super().continue_(prompts, seeds, max_chars, stop)
        for p in prompts:
            s = g.State.start(g.parse_puzzle(p.strip("\n").splitlines()[0].rstrip(":")))
            for line in p.strip("\n").splitlines()[1:]:
                s = s.apply(g.parse_step(s, line))
            self.asked.append(s)
        self.charged += sum(r[2] for r in out)
        return out


@pytest.mark.parametrize("method", ["beam", "mcts"])
def test_search_with_a_value_prunes_dead_states_and_pays_for_its_reads(method):
    task, p = S.Game24Task(), (1, 1, 4, 6)
    lm, value = RecordingLM(valid=1.0), OracleValue()
    budget = S.Budget(4000)
    if method == "beam":
        r = S.beam_search(lm, task, p, budget, width=3, proposals=4, seed=1, value=value)
    else:
        r = S.mcts(lm, task, p, budget, proposals=4, seed=1, value=value)
    assert r.method == f"{method}-value" and r.solved and r.positions <= 4000
    assert value.read and all(not s.done for s in value.read)  # a finished state is the verifier's
    # past the start, the model is only ever asked to continue states the value let through
    assert all(g.solve_from(s) for s in lm.asked if s.numbers != g.State.start(p).numbers)
    # every position is charged: the model's rows and the value's reads (budget.take may stop a batch
    # short: then the rest was not charged)
    assert budget.spent <= lm.charged + sum(V.Value.cost(s) for s in value.read)
    assert budget.spent >= sum(V.Value.cost(s) for s in value.read)
    # without the value, the same proposer continues dead states too
    plain = RecordingLM(valid=1.0)
    (S.beam_search(plain, task, p, S.Budget(4000), width=3, proposals=4, seed=1) if method == "beam"
     else S.mcts(plain, task, p, S.Budget(4000), proposals=4, seed=1))
    assert not all(g.solve_from(s) for s in plain.asked)


def test_a_value_that_rules_out_everything():
    """Beam search then finds nothing; MCTS never enters a child, its rollouts all start at the root."""
    task, p = S.Game24Task(), (4, 5, 6, 10)
    r = S.beam_search(ScriptedLM(), task, p, S.Budget(3000), value=OracleValue(), threshold=2.0)
    assert not r.solved and r.positions <= 3000
    lm = RecordingLM()
    r = S.mcts(lm, task, p, S.Budget(3000), value=OracleValue(), threshold=2.0)
    assert r.positions <= 3000 and r.attempts > 0
    assert {s.numbers for s in lm.asked} == {g.State.start(p).numbers}


def test_value_search_is_anytime():
    task, p = S.Game24Task(), (4, 5, 6, 10)
    runs = {"beam": lambda b: S.beam_search(ScriptedLM(0.7, True), task, p, S.Budget(b), width=3, proposals=4, seed=2,
                                            value=OracleValue()),
            "mcts": lambda b: S.mcts(ScriptedLM(0.7, True), task, p, S.Budget(b), proposals=4, seed=2,
                                     value=OracleValue())}
    for name, run in runs.items():
        big = run(5000)
        assert big.solved, name
        for b in (200, 700, 2000):
            assert run(b).found == big.upto(b).found, (name, b)


def test_eval_with_the_value_methods(tmp_path, small_value):
    tok = CharTokenizer.from_text(ALPHABET)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=2, n_head=2, n_embd=32)
    save_checkpoint(tmp_path / "ck", Transformer(cfg).init_weights(torch.Generator().manual_seed(0)), tok,
                    objective="ar")
    small_value.save(tmp_path / "v")
    kw = dict(model=str(tmp_path / "ck"), value=str(tmp_path / "v"), methods=("beam-value", "mcts-value@0.8"),
              budgets=(60, 300), puzzles=[(1, 1, 4, 6)], out=str(tmp_path / "rep"), proposals=2, width=2)
    res = E.run_eval(E.Game24EvalConfig(**kw))
    assert {r["method"] for r in res["rows"]} == {"beam-value", "mcts-value@0.8"}
    assert all(r["positions"] <= r["budget"] for r in res["rows"])
    assert "value" in res["models"]
    saved = json.loads((tmp_path / "rep" / "methods" / "beam-value.json").read_text())["key"]
    assert saved["threshold"] == small_value.threshold and "value" in saved["models"]
    assert "c_puct" not in json.loads((tmp_path / "rep" / "methods" / "mcts-value_at_0.8.json").read_text())["key"]
    E.run_eval(E.Game24EvalConfig(**{**kw, "c_puct": 4.0, "proposals": None, "out": str(tmp_path / "rep4")}))
    keys = {m: json.loads((tmp_path / "rep4" / "methods" / f"{m}.json").read_text())["key"]
            for m in ("beam-value", "mcts-value_at_0.8")}
    assert keys["mcts-value_at_0.8"]["c_puct"] == 4.0
    # without --proposals each search asks its own number, the one chosen on the validation rows
    assert keys["beam-value"]["proposals"] == E.PROPOSALS["beam-value"] == 2
    assert keys["mcts-value_at_0.8"]["proposals"] == E.PROPOSALS["mcts-value"] == 8
    with pytest.raises(ConfigError, match="train-value"):
        E.run_eval(E.Game24EvalConfig(**{**kw, "value": str(tmp_path / "none")}))
    with pytest.raises(ConfigError, match="--threshold"):
        E.Game24EvalConfig(**{**kw, "threshold": 1.5})


def test_value_puzzles_add_every_other_multiset_solvable_or_not():
    held = [(4, 5, 6, 10), (1, 1, 1, 1)]
    train = [(3, 3, 8, 8), (1, 2, 4, 7)]
    more = V.value_puzzles(train, 14, exclude=held)
    assert more[:2] == train and len(set(more)) == len(more)
    assert len(more) == math.comb(14 + 3, 4) - len(held)  # every multiset of 1..14 once, less the held-out ones
    assert not set(held) & set(more)
    assert (1, 1, 1, 2) in more and not g.solve((1, 1, 1, 2))  # dead puzzles too: their states are negatives
    assert (1, 1, 1, 14) in more and (1, 1, 1, 15) not in more
    assert len(V.value_puzzles(train, 13, exclude=held)) == math.comb(16, 4) - len(held)
    for bad in (12, V.MAX_UP_TO + 1, True, 14.0):
        with pytest.raises(DataError, match="up to something between 13"):
            V.value_puzzles(train, bad)


def test_cli_train_value(tmp_path, capsys, monkeypatch):
    from mixture_of_thoughts.cli import main

    monkeypatch.setattr(g, "load_puzzles", lambda: [])
    monkeypatch.setattr(g, "split", lambda ps: (PUZZLES[:6], PUZZLES[6:], []))
    out = tmp_path / "v"
    assert main(["game24", "train-value", "--out", str(out), "--epochs", "1", "--quiet"]) == 0
    assert "pruning threshold" in capsys.readouterr().out
    assert V.load_value(out).meta["data"]["train_puzzles"] == 6
    # --synthetic-up-to: every other multiset up to 13, less the held-out ones (the first 9 of them, for speed)
    seen, real = [], V.value_puzzles
    monkeypatch.setattr(V, "value_puzzles", lambda *a, **k: seen.append((a, k)) or real(*a, **k)[:9])
    more = tmp_path / "more"
    argv = ["game24", "train-value", "--out", str(more), "--epochs", "1", "--synthetic-up-to", "13", "--quiet"]
    assert main(argv) == 0
    assert seen == [((PUZZLES[:6], 13), {"exclude": PUZZLES[6:]})]
    assert len(real(*seen[0][0], **seen[0][1])) == math.comb(16, 4) - 4
    assert V.load_value(more).meta["data"]["train_puzzles"] == 9
    argv += ["--limit", "2", "--force"]  # 2 training puzzles, 2 validation ones and 2 of the extra multisets
    assert main(argv) == 0
    assert {k: V.load_value(more).meta["data"][k] for k in ("train_puzzles", "val_puzzles")} == \
        {"train_puzzles": 4, "val_puzzles": 2}
    assert main(["game24", "train-value", "--out", str(tmp_path / "m"), "--synthetic-up-to", "99"]) == 2
    assert "up to something between 13" in capsys.readouterr().err
    assert main(["game24", "train-value", "--kind", "head", "--out", str(tmp_path / "h"), "--epochs", "1"]) == 0
    assert "a value head on the shipped model" in capsys.readouterr().out
    assert isinstance(V.load_value(tmp_path / "h"), V.HeadValue)
    assert V.load_value(tmp_path / "h").meta["data"]["val_puzzles"] == len(PUZZLES) - 6
    # --limit N: the first N training and N validation puzzles
    argv = ["game24", "train-value", "--out", str(tmp_path / "l"), "--epochs", "1", "--limit", "2", "--quiet"]
    assert main(argv) == 0
    assert {k: V.load_value(tmp_path / "l").meta["data"][k] for k in ("train_puzzles", "val_puzzles")} == \
        {"train_puzzles": 2, "val_puzzles": 2}
    capsys.readouterr()
    assert main(["game24", "train-value", "--kind", "mot", "--out", str(tmp_path / "k")]) == 2
    assert "--kind 'mot'" in capsys.readouterr().err
    head_more = ["game24", "train-value", "--kind", "head", "--out", str(tmp_path / "k"), "--synthetic-up-to", "16"]
    assert main(head_more) == 2
    assert "leave out --synthetic-up-to" in capsys.readouterr().err and not (tmp_path / "k").exists()
    assert main(["game24", "train-value", "--out", str(out), "--epochs", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["game24", "solve", "4 5 6 10", "--method", "beam-value", "--value", str(tmp_path / "no")]) == 2
    assert "train-value" in capsys.readouterr().err


def test_method_names():
    assert E.parse_method("beam-value@0.7") == E.MethodSpec("beam-value", 0.7)
    assert set(E.VALUE_METHODS) <= set(E.SEARCH_METHODS)


def test_the_solver_as_a_value_is_for_validation_rows_only(tmp_path):
    with pytest.raises(ConfigError, match="--split val"):
        E.load_line_models(E.Game24EvalConfig(methods=("beam-value",), value="solver"))
    with pytest.raises(ConfigError, match="--split val"):  # explicit puzzles are not the validation rows
        E.load_line_models(E.Game24EvalConfig(methods=("beam-value",), value="solver", split="val",
                                              puzzles=[(4, 5, 6, 10)]))
    states = [g.State.start((4, 5, 6, 10)), g.State.start((1, 1, 1, 1))]
    assert list(V.SolverValue().probs(states)) == [1.0, 0.0]


def test_distinct_value_continues_only_the_states_the_value_lets_through():
    """The beam of sampling without replacement, pruned at every step line: with the solver as the value
    (tests only), every trace it returns passes only through states that can still make 24, the rows it
    dropped are charged, and the value never reads the start or a finished state."""
    from mixture_of_thoughts.experiments import game24_eval as E

    task, p = S.Game24Task(), (1, 1, 4, 6)
    lm = E.load_line_models(E.Game24EvalConfig(methods=("distinct",), budgets=(1800,))).line("model", 1.0)
    value = OracleValue()
    start = task.start(p)
    prompt = S.BLOCK_SEP + start.prompt()
    prune = S.methods._line_pruner(task, start, value, value.threshold)
    rows = lm.sample_distinct(prompt, 0, 32, 100, "\n\n", prune)
    texts = [t for t, _, _ in rows if t is not None]
    assert texts and any(t is None for t, _, _ in rows)
    for t in texts:
        s = start
        for line in t.split("\n"):
            if line.startswith(g.ANSWER) or not line:
                break
            s = s.apply(task.parse_line(s, line))  # every step line is valid ...
            assert g.solve_from(s)  # ... and leads to a live state
    assert value.read and all(not s.done and len(s.numbers) < 4 for s in value.read)
    # the method: solved within its budget, the value's reads and the dropped rows paid for
    budget = S.Budget(1800)
    r = S.distinct_traces(lm, task, p, budget, width=32, value=OracleValue())
    assert r.method == "distinct-value" and r.solved and r.positions <= 1800
    plain = S.distinct_traces(lm, task, p, S.Budget(1800), width=32)
    assert plain.method == "distinct" and r.attempts <= plain.attempts


def test_a_value_head_reads_the_models_own_lines_and_costs_nothing(tmp_path):
    """The head on the language model: its examples are labelled step lines, its features the model's
    hidden states at a line's end (the same in a batch as alone), it saves and loads, reads only with the
    model it was trained on, only inside distinct-value, and its reads cost no positions."""
    from mixture_of_thoughts.experiments.report import file_digest

    models = E.load_line_models(E.Game24EvalConfig(methods=("distinct",), budgets=(1800,)))
    ck, lm = models.ck["model"], models.line("model", 1.0)
    digest = file_digest(ck.path / "model.safetensors")
    texts, y, left = V.head_examples([(4, 5, 6, 10)], second=1)
    s = g.State.start((4, 5, 6, 10))
    assert (left == 3).sum() == len(s.moves()) and set(left.tolist()) == {2, 3}
    for t, lab in zip(texts, y, strict=True):  # the solver's verdict on the state the last line reaches
        assert t.startswith(s.prompt()) and t.endswith(")\n")
        st = s
        for line in t[len(s.prompt()):].split("\n")[:-1]:
            st = st.apply(g.parse_step(st, line))
        assert lab == g.solve_from(st)
    f = V.line_features(ck.model, ck.tokenizer, texts[:5])
    alone = torch.cat([V.line_features(ck.model, ck.tokenizer, [t]) for t in texts[:5]])
    assert f.shape == (5, 2 * ck.model.config.n_embd) and torch.allclose(f, alone, atol=1e-5)
    # the states a search's row computes: the text read after the blank line the row starts from
    seen = []
    hook = ck.model.norm_f.register_forward_hook(lambda mod, inp, out: seen.append(out))
    with torch.no_grad():
        ck.model(torch.tensor([ck.tokenizer.encode(S.BLOCK_SEP + texts[0])]), aux=False)
    hook.remove()
    assert torch.allclose(f[0], torch.cat([seen[0][0, -1], seen[0][0, -2]]), atol=1e-5)

    head = V.train_value_head(ck.model, ck.tokenizer, digest, PUZZLES[:6], PUZZLES[6:8], epochs=3)
    h = head.meta["history"]
    assert len(h) == 3 and h[-1]["train_loss"] < h[0]["train_loss"] and head.meta["model"] == digest
    head.save(tmp_path / "h")
    back = V.load_value(tmp_path / "h")
    assert isinstance(back, V.HeadValue) and back.threshold == head.threshold
    with pytest.raises(ConfigError, match="bind"):
        back.probs_texts(texts[:2])
    with pytest.raises(ConfigError, match="trained on the model"):
        back.bind(ck.model, ck.tokenizer, "0" * 16)
    head.bind(ck.model, ck.tokenizer, digest)
    back.bind(ck.model, ck.tokenizer, digest)
    np.testing.assert_allclose(back.probs_texts(texts[:8]), head.probs_texts(texts[:8]), atol=1e-6)
    with pytest.raises(ConfigError, match="probs_texts"):
        back.probs([s])
    assert back.cost(s) == 0

    # in the search: a head that keeps every row reads for free, so texts and charges are those of the
    # free checks alone (a value that keeps every state at no cost)
    class KeepAll:
        threshold = 0.5

        def probs(self, states):
            return np.ones(len(states))

        def cost(self, state):
            return 0

    task, p = S.Game24Task(), (1, 1, 4, 6)
    keep = S.distinct_traces(lm, task, p, S.Budget(900), width=16, value=back, threshold=-1.0)
    free = S.distinct_traces(lm, task, p, S.Budget(900), width=16, value=KeepAll())
    assert keep.solved and keep.positions == free.positions and keep.solutions == free.solutions
    assert not S.distinct_traces(lm, task, p, S.Budget(900), width=16, value=back, threshold=2.0).solved
    # beam search and MCTS hand it the text each child's row wrote: its reads are charged nothing, and it prunes
    class Ledger(S.Budget):
        def take(self, costs):
            self.takes = [*getattr(self, "takes", []), list(costs)]
            return super().take(costs)

    for search in (S.beam_search, S.mcts):
        ledger = Ledger(900)
        assert search(lm, task, p, ledger, value=back, threshold=-1.0).solved
        reads = [t for t in ledger.takes if t and not any(t)]  # the value's reads: one zero per state
        assert reads and all(all(c > 0 for c in t) for t in ledger.takes if t not in reads)
    assert not S.beam_search(lm, task, p, S.Budget(900), value=back, threshold=2.0).solved  # (MCTS rolls out)
    # the eval binds it to its model, for every search that reads a value
    bound = E.load_line_models(E.Game24EvalConfig(methods=("distinct-value", "beam-value", "mcts-value"),
                                                  value=str(tmp_path / "h")))
    assert bound.value.model is bound.ck["model"].model
    assert all(bound.value_for(E.parse_method(m)) is bound.value for m in ("beam-value", "mcts-value"))


def test_the_searches_read_the_shipped_head_by_default_and_the_set_network_when_asked(tmp_path):
    dv, bv, mv = (E.parse_method(m) for m in ("distinct-value", "beam-value", "mcts-value"))
    models = E.load_line_models(E.Game24EvalConfig(methods=("distinct-value", "beam-value", "mcts-value")))
    for spec in (dv, bv, mv):
        head = models.value_for(spec)
        assert isinstance(head, V.HeadValue) and head.model is models.ck["model"].model
    assert "value head" in models.shown and "value" not in models.shown  # the set network is not read
    net = E.load_line_models(E.Game24EvalConfig(methods=("beam-value",), value=str(V.SHIPPED)))
    assert net.head is None and isinstance(net.value_for(bv), V.Value)
    assert models.fingerprint(bv)["value"] != net.fingerprint(bv)["value"]
    # a model of one's own: the shipped head cannot read it, so distinct-value prunes with the set network
    tok = CharTokenizer.from_text(ALPHABET)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=2, n_head=2, n_embd=32)
    save_checkpoint(tmp_path / "ck", Transformer(cfg).init_weights(torch.Generator().manual_seed(0)), tok,
                    objective="ar")
    own = E.load_line_models(E.Game24EvalConfig(methods=("distinct-value",), model=str(tmp_path / "ck")))
    assert own.head is None and isinstance(own.value_for(dv), V.Value)
