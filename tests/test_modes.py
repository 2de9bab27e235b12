"""Thought modes for Game of 24: branches trained winner-takes-all, then decoded one mode per row."""

import json

import pytest
import torch

from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.tasks import modes as MD
from mixture_of_thoughts.tasks import search as S

ALPHABET = "0123456789+-*/=():left answr\n"
PUZZLES = [(1, 1, 4, 6), (4, 5, 6, 10), (3, 3, 8, 8), (2, 3, 4, 5), (1, 2, 3, 4), (2, 2, 6, 6)]


def _mot(seed=0, branches=4):
    from mixture_of_thoughts.config import ModelConfig, ThoughtConfig
    from mixture_of_thoughts.data.tokenizer import CharTokenizer
    from mixture_of_thoughts.models.transformer import Transformer

    tok = CharTokenizer.from_text(ALPHABET)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=2, n_head=2, n_embd=32,
                      thought_layers="all", thoughts=ThoughtConfig(n_branches=branches, k=2))
    return Transformer(cfg).init_weights(torch.Generator().manual_seed(seed)).eval(), tok


def test_force_rows_is_one_forced_profile_per_row():
    from mixture_of_thoughts.steering.experts import ExpertController, ExpertProfile

    model, tok = _mot()
    x = torch.tensor([tok.encode("\n4 5 6 10:\n10 - 6 = 4")] * 4)
    with torch.no_grad(), ExpertController(model) as ctl:
        ctl.force_rows(torch.tensor([0, 3, 1, 3]))
        rows = model(x).logits
        ctl.set_profile([ExpertProfile(force=[b]) for b in (0, 3, 1, 3)])
        profiles = model(x).logits
        ctl.set_profile(None)
        free = model(x).logits
        with pytest.raises(ConfigError, match="expert ids must be in 0..3"):
            ctl.force_rows(torch.tensor([0, 4]))
    torch.testing.assert_close(rows, profiles)
    assert not torch.allclose(rows[0], rows[1])  # different modes are different models
    torch.testing.assert_close(rows[1], rows[3])
    assert not torch.allclose(rows, free)


def test_answers_score_only_the_answer_characters():
    _, tok = _mot()
    from mixture_of_thoughts.tasks import game24

    pairs = MD.answers([(4, 5, 6, 10), (3, 3, 8, 8)])
    n_solutions = len(game24.solve((4, 5, 6, 10))) + len(game24.solve((3, 3, 8, 8)))
    assert len(pairs) == n_solutions and len({a for _, a in pairs}) == n_solutions  # one per distinct solution
    for prompt, answer in pairs:
        puzzle = tuple(int(v) for v in prompt.strip().rstrip(":").split())
        assert game24.check_trace(puzzle, (prompt + answer).strip())
        assert answer.endswith("\n\n") or answer.endswith("\n")
    ids, tgt = MD.encode(tok, pairs)
    for i, (p, a) in enumerate(pairs):
        scored = tgt[i][tgt[i] >= 0].tolist()
        assert tok.decode(scored) == a  # exactly the answer's characters are targets
        assert int((tgt[i][:len(tok.encode(p)) - 1] >= 0).sum()) == 0  # none of the prompt's


def test_training_divides_answers_reproducibly_without_the_global_rng(tmp_path):
    from mixture_of_thoughts.config import TrainConfig
    from mixture_of_thoughts.training.checkpoint import load_checkpoint, save_checkpoint

    model, tok = _mot()
    save_checkpoint(tmp_path / "init", model, tok, objective="ar")
    cfg = MD.ModesConfig(modes=3, eps=0.1, eval_every=4,
                         train=TrainConfig(batch_size=8, max_steps=8, lr=3e-3, min_lr=3e-4, warmup_steps=1, seed=0))
    state = torch.get_rng_state()
    a = MD.train_modes(tmp_path / "init", PUZZLES[:4], PUZZLES[4:], cfg, tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), state)
    b = MD.train_modes(tmp_path / "init", PUZZLES[:4], PUZZLES[4:], cfg, tmp_path / "b")
    assert a["val_mixture_nll"] == b["val_mixture_nll"] and a["steps"] == 8
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 4, 8]
    assert rows[-1]["val_mixture_nll"] < rows[0]["val_mixture_nll"]  # it learns the answers
    for r in rows:
        assert sum(r["val_wins"]) == pytest.approx(1.0, abs=1e-3) and len(r["val_wins"]) == 3
        # the oracle mode explains every answer at least as well as the mixture
        assert r["val_best_mode_nll"] <= r["val_mixture_nll"] <= r["val_mean_mode_nll"] + 1e-6
    ck = load_checkpoint(tmp_path / "a" / "best", expect="ar")
    assert MD.modes_of(ck) == 3 and ck.meta["step"] == a["best_step"]
    with pytest.raises(ConfigError, match="lower --modes"):
        MD.train_modes(tmp_path / "init", PUZZLES, PUZZLES, MD.ModesConfig(modes=5), tmp_path / "c")


def test_a_dense_start_is_refused(tmp_path):
    from mixture_of_thoughts.config import ModelConfig
    from mixture_of_thoughts.data.tokenizer import CharTokenizer
    from mixture_of_thoughts.models.transformer import Transformer
    from mixture_of_thoughts.training.checkpoint import save_checkpoint

    tok = CharTokenizer.from_text(ALPHABET)
    dense = Transformer(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(tmp_path / "dense", dense.init_weights(torch.Generator().manual_seed(0)), tok, objective="ar")
    with pytest.raises(ConfigError, match="no thought layers"):
        MD.train_modes(tmp_path / "dense", PUZZLES, PUZZLES, MD.ModesConfig(modes=2), tmp_path / "out")
    assert not (tmp_path / "out" / "best").exists()


def test_line_model_rows_go_round_the_modes():
    """Row with seed s decodes with mode s mod M: the same text as that mode decoded alone; a prompt is
    read once per (prompt, mode) and charged to its first row."""
    from mixture_of_thoughts.steering.experts import ExpertController

    model, tok = _mot(seed=3)
    lm = S.LineModel(model, tok, temperature=1.0, modes=3)
    assert lm.shares_prompts
    prompt = "\n4 5 6 10:\n"
    seeds = [0, 1, 2, 3, 4, 5, 6]
    rows = lm.continue_([prompt] * len(seeds), seeds, 12, "\n")
    for s, (text, ll, pos) in zip(seeds, rows, strict=True):
        alone = S.LineModel(model, tok, temperature=1.0, modes=3).continue_([prompt], [s], 12, "\n")[0]
        assert text == alone[0] and ll == pytest.approx(alone[1], abs=1e-4)
        assert pos == (len(prompt) if s < 3 else 0) + len(text)  # seeds 0, 1, 2 read the prompt for their mode
    # the mode is the forced branch: mode 1 decoded greedily equals branch 1 forced by hand
    greedy = S.LineModel(model, tok, temperature=1e-6, modes=3).continue_([prompt], [1], 12, "\n")[0][0]
    with ExpertController(model) as ctl:
        ctl.force_rows(torch.tensor([1]))
        assert greedy == _greedy_line(model, tok, tok.encode(prompt), 12)


@torch.no_grad()
def _greedy_line(model, tok, ids: list[int], n: int) -> str:
    """Greedy decoding by hand, a whole forward per character, up to a newline or ``n`` characters."""
    x, text = torch.tensor([ids]), ""
    for _ in range(n):
        nxt = int(model(x).logits[0, -1].argmax())
        text += tok.decode([nxt])
        x = torch.cat([x, torch.tensor([[nxt]])], 1)
        if text.endswith("\n"):
            break
    return text


def test_eval_runs_modes_beside_temperature(tmp_path):
    from mixture_of_thoughts.experiments.game24_eval import Game24EvalConfig, load_line_models, run_eval
    from mixture_of_thoughts.training.checkpoint import save_checkpoint

    model, tok = _mot()
    save_checkpoint(tmp_path / "mot", model, tok, objective="ar")
    with pytest.raises(ConfigError, match="no trained modes"):
        load_line_models(Game24EvalConfig(modes_model=str(tmp_path / "mot"), methods=("modes",)))
    save_checkpoint(tmp_path / "modes", model, tok, objective="ar", meta={"modes": {"modes": 4}})
    save_checkpoint(tmp_path / "ar", _dense(tok), tok, objective="ar")
    cfg = Game24EvalConfig(model=str(tmp_path / "ar"), modes_model=str(tmp_path / "modes"),
                           methods=("sample@0.5", "sample@1", "modes@1"), budgets=(60, 300),
                           puzzles=PUZZLES[:2], out=str(tmp_path / "rep"))
    res = run_eval(cfg)
    rows = {(r["method"], r["budget"]) for r in res["rows"]}
    assert ("modes@1", 300) in rows
    assert all(e["setting"] == "modes@1" for e in res["goals"]["thoughts_vs_temperature"])
    assert (tmp_path / "rep" / "distinct.png").is_file()


def _dense(tok):
    from mixture_of_thoughts.config import ModelConfig
    from mixture_of_thoughts.models.transformer import Transformer

    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=2, n_head=2, n_embd=32)
    return Transformer(cfg).init_weights(torch.Generator().manual_seed(0)).eval()


@pytest.mark.parametrize("args, match", [
    (["train", "--kind", "modes", "--out", "x", "--data", "t.txt"], "drop --data"),
    (["train", "--kind", "codes", "--out", "x", "--data", "t.txt"], "--kind codes makes its own answers"),
    (["train", "--kind", "codes", "--out", "x", "--modes", "-2"], "modes must be a positive integer"),
    (["train", "--kind", "codes", "--out", "x", "--eps", "1"], "eps must be in [0, 1)"),
    (["train", "--kind", "modes", "--out", "x", "--modes", "0"], "modes must be a positive integer"),
    (["train", "--kind", "modes", "--out", "x", "--minutes", "-1"], "minutes must be > 0"),
    (["train", "--kind", "codes", "--out", "x", "--limit", "0"], "--limit must be >= 1"),
    (["train", "--kind", "ar", "--out", "x", "--limit", "5"], "not of --kind ar: drop --limit"),
    (["solve", "4 5 6 10", "--method", "modes", "--modes-model", "/nonexistent/run"], "does not exist"),
])
def test_cli_errors_are_one_line(args, match, capsys):
    from mixture_of_thoughts.cli import main

    assert main(["game24", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mot: error:") and match in err and len(err.splitlines()) == 1


def test_cli_limit_trains_codes_on_the_first_puzzles_only(tmp_path, capsys):
    """``--limit N``: the answers of the first N training puzzles, validated on the first N validation
    ones (a quick run; the docs tour's)."""
    from mixture_of_thoughts.cli import main
    from mixture_of_thoughts.tasks import game24

    out = str(tmp_path / "c")
    assert main(["game24", "train", "--kind", "codes", "--steps", "1", "--limit", "3", "--out", out]) == 0
    train = game24.split(game24.load_puzzles())[0][:3]
    n = len(MD.answers(train))
    meta = json.loads((tmp_path / "c" / "best" / "config.json").read_text())
    assert f"{n} answers of 3 training puzzles" in json.dumps(meta)
    assert f"on {n} answers" in capsys.readouterr().out


def _codes(M=3, seed=0):
    """A dense model and its tokenizer given ``M`` mode codes."""
    from mixture_of_thoughts.data.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text(ALPHABET)
    return MD.with_codes(_dense(tok), tok, M, torch.Generator().manual_seed(seed))


def test_codes_extend_the_vocabulary_and_keep_the_model():
    from mixture_of_thoughts.data.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text(ALPHABET)
    dense = _dense(tok)
    model, ctok = MD.with_codes(dense, tok, 3, torch.Generator().manual_seed(0))
    V = tok.vocab_size
    assert ctok.vocab_size == V + 3 == model.config.vocab_size and ctok.chars[:V] == tok.chars
    assert [ctok.encode(chr(MD.CODE_BASE + b)) for b in range(3)] == [[V], [V + 1], [V + 2]]
    assert model.lm_head.weight is model.wte.weight
    x = torch.tensor([tok.encode("\n4 5 6 10:\n10 - 6 = 4")])
    with torch.no_grad():  # the codes leave every old token's logits as they were
        torch.testing.assert_close(model(x).logits[..., :V], dense(x).logits)
    with pytest.raises(ConfigError, match="already has mode codes"):
        MD.with_codes(model, ctok, 2, torch.Generator())
    # the code slot of each row holds its mode; the slot is never a target
    ids, tgt = MD.encode(ctok, MD.answers([(4, 5, 6, 10)])[:2], V)
    set_ = MD.code_setter(V)(ids, torch.tensor([2, 1]))
    assert set_[0].tolist().count(V + 2) == 1 and set_[1].tolist().count(V + 1) == 1
    assert torch.equal(set_[ids < V], ids[ids < V]) and (tgt < V).all()
    slot = (ids >= V).int().argmax(-1)
    assert (tgt[torch.arange(2), slot - 1] == -1).all()  # the code is read, not predicted


def test_code_training_is_reproducible_and_loads_as_modes(tmp_path):
    from mixture_of_thoughts.config import TrainConfig
    from mixture_of_thoughts.data.tokenizer import CharTokenizer
    from mixture_of_thoughts.training.checkpoint import load_checkpoint, save_checkpoint

    tok = CharTokenizer.from_text(ALPHABET)
    save_checkpoint(tmp_path / "ar", _dense(tok), tok, objective="ar")
    cfg = MD.ModesConfig(modes=3, kind="codes", eps=0.1, eval_every=4,
                         train=TrainConfig(batch_size=8, max_steps=8, lr=3e-3, min_lr=3e-4, warmup_steps=1, seed=0))
    state = torch.get_rng_state()
    a = MD.train_modes(tmp_path / "ar", PUZZLES[:4], PUZZLES[4:], cfg, tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), state)
    b = MD.train_modes(tmp_path / "ar", PUZZLES[:4], PUZZLES[4:], cfg, tmp_path / "b")
    assert a["val_mixture_nll"] == b["val_mixture_nll"]
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_mixture_nll"] < rows[0]["val_mixture_nll"]
    ck = load_checkpoint(tmp_path / "a" / "best", expect="ar")
    assert MD.modes_of(ck) == 3 and MD.code_base(ck) == tok.vocab_size and ck.meta["modes"]["kind"] == "codes"
    assert MD.code_base(load_checkpoint(tmp_path / "ar")) is None
    ck.tokenizer.chars.pop()  # metadata that names codes its tokenizer lacks
    ck.tokenizer.stoi.pop(chr(MD.CODE_BASE + 2))
    with pytest.raises(ConfigError, match="does not hold"):
        MD.code_base(ck)
    with pytest.raises(ConfigError, match="kind must be one of"):
        MD.ModesConfig(kind="experts")


def test_line_model_rows_write_their_code_first():
    """Row with seed s reads code s mod M after the shared prompt (one position, charged to it) and
    writes what the model writes after prompt + code, decoded by hand."""
    model, tok = _codes(M=3, seed=1)
    V = tok.vocab_size - 3
    with torch.no_grad():  # make the codes matter: large, different embeddings
        model.wte.weight[V:] = torch.randn(3, model.config.n_embd, generator=torch.Generator().manual_seed(2))
    prompt = "\n4 5 6 10:\n"
    lm = S.LineModel(model, tok, temperature=1e-6, modes=3, code=V)
    seeds = [0, 1, 2, 3, 4]
    rows = lm.continue_([prompt] * len(seeds), seeds, 12, "\n")
    for i, (s, (text, _, pos)) in enumerate(zip(seeds, rows, strict=True)):
        assert text == _greedy_line(model, tok, tok.encode(prompt) + [V + s % 3], 12)
        assert pos == (len(prompt) if i == 0 else 0) + 1 + len(text)  # the prompt once, each row its code
    assert len({r[0] for r in rows[:3]}) > 1  # the codes steer the rows apart
    assert rows[3][0] == rows[0][0] and rows[4][0] == rows[1][0]  # greedy: a mode is one text
    with pytest.raises(ConfigError, match="need the number of modes"):
        S.LineModel(model, tok, code=V)
    # the code takes one position of the block: a text may fill the rest, not more
    assert lm.block_size == model.config.block_size - 1
    room = lm.block_size - len(prompt)
    assert lm.continue_([prompt], [0], room, "\n\n")[0][2] <= model.config.block_size
    with pytest.raises(ConfigError, match="longer than the model's block size"):
        lm.continue_([prompt], [0], room + 1, "\n\n")


def test_eval_runs_code_modes(tmp_path):
    from mixture_of_thoughts.experiments.game24_eval import Game24EvalConfig, run_eval
    from mixture_of_thoughts.training.checkpoint import save_checkpoint

    model, tok = _codes(M=2)
    save_checkpoint(tmp_path / "codes", model, tok, objective="ar", meta={"modes": {"modes": 2, "kind": "codes"}})
    cfg = Game24EvalConfig(model=str(tmp_path / "codes"), modes_model=str(tmp_path / "codes"),
                           methods=("sample@1", "modes@1"), budgets=(60, 300), puzzles=PUZZLES[:2],
                           out=str(tmp_path / "rep"))
    rows = {(r["method"], r["budget"]): r for r in run_eval(cfg)["rows"]}
    assert 0 < rows["modes@1", 60]["positions"] <= 60 and 0 < rows["modes@1", 300]["positions"] <= 300
