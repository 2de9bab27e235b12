"""Game of 24 by masked diffusion alone (MGDM's recipe): answers, the loss, training, decoding, the method."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch
import torch.nn.functional as F

from mixture_of_thoughts.config import TrainConfig
from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.experiments import game24_eval as E
from mixture_of_thoughts.models.diffusion import mask_id
from mixture_of_thoughts.tasks import game24 as g
from mixture_of_thoughts.tasks import mgdm as M
from mixture_of_thoughts.tasks import search as S
from mixture_of_thoughts.training.checkpoint import load_checkpoint

PUZZLES = [(4, 5, 6, 10), (1, 1, 4, 6), (3, 3, 8, 8), (2, 5, 8, 11), (1, 2, 4, 7), (1, 3, 4, 6), (2, 2, 6, 9),
           (1, 4, 5, 6), (2, 3, 5, 12), (3, 4, 6, 8)]
TINY = dict(n_layer=1, n_head=2, n_embd=32, eval_every=20, eval_steps=2, per_solution=1,
            train=TrainConfig(objective="diffusion", max_steps=40, batch_size=16, warmup_steps=5))


def test_every_example_replays_to_a_solution_of_its_puzzle():
    pairs = M.examples(PUZZLES)
    assert len(pairs) == sum(len(seqs) for p in PUZZLES for seqs in g.solve(tuple(sorted(p))).values())
    for prompt, answer in pairs:
        puzzle = g.parse_puzzle(prompt.strip().rstrip(":"))
        key = M.read_solution(puzzle, answer)
        assert key in g.solve(tuple(sorted(puzzle)))
        assert answer.count("\n") == 3 and "left" not in answer and "answer" not in answer
    assert len(M.examples(PUZZLES, per_solution=1)) == sum(len(g.solve(tuple(sorted(p)))) for p in PUZZLES)


@pytest.mark.parametrize("text", [
    "10 - 6 = 4\n4 + 5 = 9\n9 * 4 = 36\n",  # valid steps, not 24
    "10 - 6 = 5\n5 + 4 = 9\n",  # wrong arithmetic
    "10 - 7 = 3\n",  # 7 is not among the numbers
    "10 - 6 = 4\n4 * 6 = 24\n",  # uses 6 twice, leaves numbers unused
    "5 + 4 = 9\n10 - 6 = 4\n9 * 4 = 36\n36 - 12 = 24\n",  # a step too many
    "10 - 6 = 4\n4 + 5 = 9\n9 ^ 4 = 24\n",  # not an operator
    "",
])
def test_read_solution_refuses_anything_but_a_valid_solution(text):
    assert M.read_solution((4, 5, 6, 10), text) is None


def test_read_solution_accepts_fractions_and_ignores_what_follows_a_blank_line():
    text = "5 / 2 = 5/2\n3 - 5/2 = 1/2\n12 / 1/2 = 24\n\n\n7 + 7 = 14\n"
    key = M.read_solution((2, 3, 5, 12), text)
    assert key == g.canonical(g.parse_expression("12 / (3 - 5 / 2)"))
    assert M.replay((2, 3, 5, 12), text).expression().text() == "12 / (3 - (5 / 2))"


def test_encode_marks_the_prompt_and_pads_with_newlines():
    tok = M.tokenizer_for(M.examples(PUZZLES))
    ids, given = M.encode(tok, [("4 5 6 10:\n", "10 - 6 = 4\n")], 32)
    assert tok.decode(ids[0].tolist()) == "4 5 6 10:\n10 - 6 = 4\n" + "\n" * 11
    assert given[0].tolist() == [True] * 10 + [False] * 22
    with pytest.raises(ConfigError, match="longer than length=8"):
        M.encode(tok, [("4 5 6 10:\n", "10 - 6 = 4\n")], 8)


@pytest.mark.parametrize("time_weighting", ["linear", "elbo", "none"])
@pytest.mark.parametrize("token_weighting", [True, False])
def test_the_loss_is_mgdms_weighted_cross_entropy(time_weighting, token_weighting):
    cfg = M.MGDMConfig(**{**TINY, "time_weighting": time_weighting, "token_weighting": token_weighting,
                          "length": 64})
    pairs = M.examples(PUZZLES[:3])
    tok = M.tokenizer_for(pairs)
    x, given = M.encode(tok, pairs[:8], 64)
    model = M.build_model(cfg, tok.vocab_size).eval()
    loss = M.mgdm_loss(model, x, given, cfg, torch.Generator().manual_seed(5))
    # the same draws, recomputed by hand
    gen = torch.Generator().manual_seed(5)
    T = cfg.diffusion_steps
    t = torch.randint(0, T, (8,), generator=gen)
    masked = (torch.rand((8, 64), generator=gen) < ((t + 1) / T)[:, None]) & ~given
    assert masked.any(1).all() and not (masked & given).any()
    xt = x.masked_fill(masked, mask_id(model))
    frac = masked.sum(1) / (~given).sum(1)
    logits = model(xt, time=frac).logits.float()
    logits[..., mask_id(model)] = float("-inf")
    ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")[masked]
    if token_weighting:
        ce = 0.25 * (1 - torch.exp(-ce)) ** 2 * ce
    w = {"linear": (T - t).float(), "elbo": T / (t + 1).float(), "none": torch.ones(8)}[time_weighting]
    expect = (ce * w[:, None].expand(8, 64)[masked]).sum() / masked.sum()
    assert torch.allclose(loss, expect, rtol=1e-5)


class Confident(torch.nn.Module):
    """A fake denoiser: at every position the token ``7`` with a confidence that grows with the position;
    it records the inputs it was given."""

    def __init__(self, length=16, vocab=12):
        super().__init__()
        self.config = types.SimpleNamespace(vocab_size=vocab, block_size=length)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x, noise=None, creativity=None, time=None):
        self.seen.append(x.clone())
        B, L = x.shape
        logits = torch.zeros(B, L, self.config.vocab_size)
        logits[..., 7] = torch.arange(L, dtype=torch.float32) / 4
        return types.SimpleNamespace(logits=logits)


def test_decoding_reveals_the_most_confident_positions_first_on_mgdms_schedule():
    model = Confident()
    den = M.Denoiser(model, None, steps=4, select_noise=0.0)
    given = torch.zeros(2, 16, dtype=torch.bool)
    given[0, :4] = given[1, :6] = True
    x = torch.where(given, torch.full((2, 16), 3), torch.zeros(2, 16, dtype=torch.long))
    out = den.decode(x, given, S.RowNoise([0, 1]))
    M_ = mask_id(model)
    assert (out[given] == 3).all() and (out[~given] == 7).all()
    assert len(model.seen) == 4
    for i, seen in enumerate(model.seen):
        masked = seen == M_
        n = (~given).sum(1)
        expect = n if i == 0 else (n.float() * (4 - i) / 4).long()
        assert masked.sum(1).tolist() == expect.tolist()
        if i:  # the least confident (leftmost) answer positions stay masked: easy first
            for b in range(2):
                cols = masked[b].nonzero().flatten().tolist()
                start = int(given[b].sum())
                assert cols == list(range(start, start + len(cols)))


def test_a_row_depends_only_on_its_puzzle_and_seed():
    cfg = M.MGDMConfig(**TINY)
    pairs = M.examples(PUZZLES)
    tok = M.tokenizer_for(pairs)
    den = M.Denoiser(M.build_model(cfg, tok.vocab_size), tok, steps=3, temperature=1.0)
    batch = den.answers([PUZZLES[0], PUZZLES[1], PUZZLES[0]], [4, 9, 5])
    assert den.answers([PUZZLES[0]], [4]) == batch[:1]
    assert den.answers([PUZZLES[1], PUZZLES[0]], [9, 5]) == batch[1:]
    assert batch[0] != batch[2]  # another seed, another answer
    assert den.cost == 3 * cfg.length


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mgdm") / "run"
    before = torch.random.get_rng_state()
    summary = M.train_mgdm(PUZZLES, PUZZLES[:4], M.MGDMConfig(**TINY), out)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is not touched
    return out, summary


def test_training_learns_saves_and_is_reproducible(tiny_run, tmp_path):
    out, summary = tiny_run
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40] and summary["steps"] == 40
    one_step = M.MGDMConfig(**{**TINY, "train": dataclasses.replace(TINY["train"], max_steps=1), "eval_every": 1})
    first = M.train_mgdm(PUZZLES, PUZZLES[:4], one_step, tmp_path / "one")
    assert rows[-1]["train_loss"] < 0.85 * json.loads((tmp_path / "one" / "metrics.jsonl").read_text())["train_loss"]
    ck = load_checkpoint(out, expect="diffusion")
    assert ck.meta["mgdm"]["n_embd"] == 32 and ck.meta["step"] == summary["best_step"]
    again = M.train_mgdm(PUZZLES, PUZZLES[:4], M.MGDMConfig(**TINY), tmp_path / "again")
    a, b = load_checkpoint(out, which="latest").model, load_checkpoint(tmp_path / "again", which="latest").model
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert again == {**summary, "minutes": again["minutes"]}
    assert first["steps"] == 1


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="time_weighting"):
        M.MGDMConfig(time_weighting="cosine")
    with pytest.raises(ConfigError, match="length"):
        M.MGDMConfig(length=0)
    with pytest.raises(ConfigError, match="steps"):
        M.Denoiser(Confident(), None, steps=0)


class Oracle:
    """A denoiser stand-in: every third seed writes a solution, the others a wrong answer."""

    cost = 100

    def answers(self, puzzles, seeds):
        good = "10 - 6 = 4\n4 + 5 = 9\n9 * 4 = 36\n"
        return ["5 + 4 = 9\n10 - 6 = 4\n9 - 4 = 5\n" if s % 3 else good for s in seeds]


def test_denoised_answers_pays_per_row_and_is_anytime():
    r = S.denoised_answers(Oracle(), (4, 5, 6, 10), S.Budget(1000), batch=4)
    assert r.positions == 1000 and r.attempts == 10 and not r.solved  # 36 is not 24
    steps, _ = next(iter(g.solve((4, 5, 6, 10)).values()))[0]

    class Solving(Oracle):
        def answers(self, puzzles, seeds):
            return [M.answer_of(steps) if s == 6 else "nonsense" for s in seeds]

    big = S.denoised_answers(Solving(), (4, 5, 6, 10), S.Budget(1000), batch=4)
    assert big.solved and list(big.found.values()) == [700]
    small = S.denoised_answers(Solving(), (4, 5, 6, 10), S.Budget(650), batch=4)
    assert not small.solved and big.upto(650).solutions == small.solutions == {}


def test_mgdm_in_the_evaluation_and_its_knob(tiny_run, tmp_path):
    out, _ = tiny_run
    assert E.parse_method("mgdm@0").knob == 0.0
    with pytest.raises(ConfigError, match="temperature > 0"):
        E.parse_method("sample@0")
    cfg = E.Game24EvalConfig(mgdm_model=str(out), methods=("mgdm", "mgdm@1"), budgets=(128, 256),
                             puzzles=PUZZLES[:2], out=str(tmp_path / "rep"), mgdm_steps=2)
    res = E.run_eval(cfg)
    rows = {(r["method"], r["budget"]): r for r in res["rows"]}
    assert rows[("mgdm", 256)]["positions"] == 256 == 2 * 2 * M.MGDMConfig(**TINY).length
    saved = json.loads((tmp_path / "rep" / "methods" / "mgdm_at_1.json").read_text())
    assert saved["key"]["mgdm_steps"] == 2 and saved["key"]["temperature"] == 1.0
    with pytest.raises(ConfigError, match="mgdm-steps"):
        E.Game24EvalConfig(methods=("mgdm",), mgdm_steps=0)


def test_cli_train_and_solve(tmp_path, capsys, monkeypatch):
    from mixture_of_thoughts.cli import main

    monkeypatch.setattr(g, "load_puzzles", lambda: [])
    monkeypatch.setattr(g, "split", lambda ps: (PUZZLES[:6], PUZZLES[6:], []))
    out = tmp_path / "m"
    assert main(["game24", "train", "--kind", "mgdm", "--out", str(out), "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "step 2: loss" in text and "trained 2 steps" in text
    assert load_checkpoint(out).meta["mgdm"]["train"]["max_steps"] == 2
    assert main(["game24", "train", "--kind", "mgdm", "--out", str(out), "--steps", "2"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["game24", "train", "--kind", "mgdm", "--out", str(tmp_path / "x"), "--data", "t.txt"]) == 2
    assert "drop --data" in capsys.readouterr().err
    rc = main(["game24", "solve", "4 5 6 10", "--method", "mgdm", "--mgdm-model", str(out), "--budget", "600",
               "--mgdm-steps", "2"])
    assert rc in (0, 1)  # 1: nothing found (two training steps); either way a report line
    assert "4 5 6 10: mgdm:" in capsys.readouterr().out
    assert main(["game24", "solve", "4 5 6 10", "--method", "mgdm", "--mgdm-model", str(tmp_path / "none")]) == 2
    assert main(["game24", "solve", "4 5 6 10", "--method", "mgdm"]) == 2  # no denoiser ships: it solves nothing
    assert "--mgdm-model RUN" in capsys.readouterr().err


# ------------------------------------------------------------------ adapted from the autoregressive model


def _shipped_ar():
    return str(E.SHIPPED_RUNS["model"])


def test_adapting_keeps_the_autoregressive_weights_and_shifts_the_logits():
    from mixture_of_thoughts.models.diffusion import denoiser_logits

    ar = load_checkpoint(_shipped_ar(), expect="ar")
    model = M.adapt(ar, M.MGDMConfig(init=_shipped_ar()), torch.Generator().manual_seed(0))
    c, V = model.config, ar.model.config.vocab_size
    assert (c.causal, c.time_conditioning, c.block_size, c.vocab_size) == (False, False, 64, V + 1)
    assert not ar.model.config.time_conditioning and ar.model.config.causal  # the original is untouched
    new = model.state_dict()
    for name, w in ar.model.state_dict().items():
        assert torch.equal(new[name][:V] if name in ("wte.weight", "lm_head.weight") else new[name], w.float())
    assert model.lm_head.weight is model.wte.weight and new["wte.weight"][V].abs().max() < 0.2
    x = torch.randint(0, V, (2, 64), generator=torch.Generator().manual_seed(1))
    raw, _ = denoiser_logits(model, x, torch.ones(2))
    shifted = M.logits_of(model, x, torch.ones(2), shift=True)
    assert torch.equal(shifted[:, 1:], raw[:, :-1]) and torch.equal(shifted[:, 0], raw[:, 0])
    assert torch.equal(M.logits_of(model, x, torch.ones(2), shift=False), raw)
    cfg = M.MGDMConfig(init=_shipped_ar())
    with pytest.raises(ConfigError, match="thought layers"):
        M.adapt(load_checkpoint(E.SHIPPED_RUNS["mot_model"]), cfg, torch.Generator())


def _loss_masks(cfg, n, *, seed, monkeypatch):
    """``(ties, given, masked)`` of one :func:`mgdm_loss` call on the first ``n`` answers: what it masked,
    read from the input it gave the model."""
    pairs = M.examples(PUZZLES)[:n]
    tok = M.tokenizer_for(pairs)
    x, given = M.encode(tok, pairs, cfg.length)
    tie = M.ties(pairs, cfg.length)
    model = M.build_model(cfg, tok.vocab_size)
    seen, real = [], M.logits_of
    monkeypatch.setattr(M, "logits_of", lambda m, x_t, t, **kw: seen.append(x_t) or real(m, x_t, t, **kw))
    M.mgdm_loss(model, x, given, cfg, torch.Generator().manual_seed(seed), tie=tie)
    return tie, given, seen[0] == mask_id(model)


def test_suffix_rows_mask_the_end_of_the_answer_at_their_fraction(monkeypatch):
    cfg = M.MGDMConfig(**{**TINY, "suffix": 1.0})
    _, given, masked = _loss_masks(cfg, 16, seed=3, monkeypatch=monkeypatch)
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, cfg.diffusion_steps, (16,), generator=gen)
    n = (~given).sum(1)
    expect = ((t + 1).float() / cfg.diffusion_steps * n).ceil().long()
    assert masked.sum(1).tolist() == expect.tolist()
    for row, k in zip(masked, expect.tolist(), strict=True):  # one block, ending at the last position
        assert row[-k:].all() and not row[:-k].any()
    with pytest.raises(ConfigError, match="suffix"):
        M.MGDMConfig(suffix=1.5)


class Knows(torch.nn.Module):
    """A fake denoiser that writes the clean answers it is given at every position (no shift)."""

    def __init__(self, clean, vocab):
        super().__init__()
        self.config = types.SimpleNamespace(vocab_size=vocab + 1, block_size=clean.shape[1], causal=False)
        self.wte = torch.nn.Embedding(1, 1)
        self.clean, self.seen = clean, []

    def forward(self, x, noise=None, creativity=None, time=None):
        self.seen.append(x.clone())
        return types.SimpleNamespace(logits=F.one_hot(self.clean, self.config.vocab_size).float())


def test_first_result_accuracy_masks_from_the_first_result_on():
    pairs = M.examples(PUZZLES[:3])
    tok = M.tokenizer_for(pairs)
    clean, _ = M.encode(tok, pairs, 64)
    model = Knows(clean, tok.vocab_size)
    assert M.first_result_accuracy(model, tok, PUZZLES[:3], shift=False) == 1.0
    seen = model.seen[0]
    for row, (p, a) in zip(seen.tolist(), pairs, strict=True):
        k = len(p) + a.index("= ") + 2  # the prompt and "10 - 6 = " stay; the rest is masked
        assert tok.decode(row[:k]) == p + a[:a.index("= ") + 2] and set(row[k:]) == {mask_id(model)}
    assert M.first_result_accuracy(model, tok, PUZZLES[:3], shift=True) < 0.5  # off by one position
    M.first_result_accuracy(model, tok, PUZZLES[:3], shift=False, later_given=True)
    for row, (p, a) in zip(model.seen[-1].tolist(), pairs, strict=True):  # the result alone is masked
        k, n = len(p) + a.index("= ") + 2, len(p) + a.index("\n")
        assert set(row[k:n]) == {mask_id(model)} and mask_id(model) not in row[:k] + row[n:]


def test_first_result_accuracy_of_the_autoregressive_model_is_teacher_forced():
    ar = load_checkpoint(_shipped_ar(), expect="ar")
    acc = M.first_result_accuracy(ar.model, ar.tokenizer, PUZZLES, shift=True)
    assert acc > 0.9  # the shipped model does its sums
    assert M.first_result_accuracy(ar.model, ar.tokenizer, PUZZLES, shift=False) < 0.5  # unshifted: misread


def test_cli_adapts_the_shipped_model(tmp_path, capsys, monkeypatch):
    from mixture_of_thoughts.cli import main

    monkeypatch.setattr(g, "load_puzzles", lambda: [])
    monkeypatch.setattr(g, "split", lambda ps: (PUZZLES[:6], PUZZLES[6:], []))
    out = tmp_path / "a"
    assert main(["game24", "train", "--kind", "mgdm", "--adapt", "--suffix", "0.5", "--anneal", "1", "--tie-values",
                 "--out", str(out), "--steps", "1"]) == 0
    assert "first step's result written with the rest masked" in capsys.readouterr().out
    ck = load_checkpoint(out)
    assert ck.meta["shift"] and ck.meta["mgdm"]["init"] == _shipped_ar() and ck.meta["mgdm"]["suffix"] == 0.5
    assert ck.meta["mgdm"]["anneal"] == 1 and ck.meta["mgdm"]["tie_values"]
    assert M.Denoiser.from_checkpoint(ck, steps=2).shift
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= row["val_first_result"] <= 1.0
    assert main(["game24", "train", "--kind", "mgdm", "--init", str(E.SHIPPED_RUNS["mot_model"]),
                 "--out", str(tmp_path / "b"), "--steps", "1"]) == 2
    assert "thought layers" in capsys.readouterr().err
    assert main(["game24", "train", "--kind", "mgdm", "--suffix", "2", "--out", str(tmp_path / "c")]) == 2
    assert "suffix must be" in capsys.readouterr().err
    assert main(["game24", "train", "--kind", "mgdm", "--anneal", "5", "--out", str(tmp_path / "d")]) == 2
    assert "needs init (--adapt)" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_annealing_starts_from_the_autoregressive_model_and_opens_on_schedule(tmp_path, monkeypatch):
    ar = load_checkpoint(_shipped_ar(), expect="ar")
    model = M.adapt(ar, M.MGDMConfig(init=_shipped_ar()), torch.Generator().manual_seed(0))
    x = torch.randint(0, ar.tokenizer.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1))
    causal = torch.ones(64, 64, dtype=torch.bool).tril().expand(2, 1, 64, 64)
    with torch.no_grad():
        opened = model(x, attn_mask=causal).logits[..., :-1]
        assert torch.allclose(opened, ar.model(x).logits, atol=1e-5)  # closed attention: the AR model itself
        assert not torch.allclose(model(x).logits[..., :-1], ar.model(x).logits, atol=1e-2)
    futures = []
    real = M.mgdm_loss
    monkeypatch.setattr(M, "mgdm_loss",
                        lambda *a, future=1.0, **k: futures.append(future) or real(*a, future=future, **k))
    cfg = M.MGDMConfig(init=_shipped_ar(), anneal=2, eval_every=5, per_solution=1,
                       train=TrainConfig(objective="diffusion", max_steps=3, batch_size=4, warmup_steps=1))
    M.train_mgdm(PUZZLES, PUZZLES[:2], cfg, tmp_path / "run")
    assert futures == [0.0, 0.5, 1.0]
    with pytest.raises(ConfigError, match="needs init"):
        M.MGDMConfig(anneal=10)


def test_ties_join_a_result_to_its_later_use_and_mask_numbers_whole(monkeypatch):
    pair = ("4 5 6 10:\n", "10 - 6 = 4\n5 * 4 = 20\n20 + 4 = 24\n")
    tie = M.ties([pair], 48)[0].tolist()
    text = pair[0] + pair[1]
    spans = {}
    for i, k in enumerate(tie):
        if k >= 0:
            spans.setdefault(k, []).append(i)
    as_text = {k: [text[i] for i in v] for k, v in spans.items()}
    # step 0's 4 and its use in step 1; step 1's 20 and its use; the 4 of step 2 is the puzzle's (untied)
    assert as_text == {0: ["4", "4"], 1: ["2", "0", "2", "0"], 2: ["2", "4"]}
    assert text[spans[0][1] - 2:spans[0][1] + 1] == "* 4"
    cfg = M.MGDMConfig(**{**TINY, "tie_values": True})
    tie, given, masked = _loss_masks(cfg, 32, seed=4, monkeypatch=monkeypatch)
    split = 0
    for row, ids, prompt in zip(masked, tie, given, strict=True):
        for k in ids[ids >= 0].unique():
            group = row[ids == k]
            assert group.all() or not group.any()  # a number is masked whole, wherever it is written
        free = (ids < 0) & ~prompt
        split += int((row & free).any() and (~row & free).any())
    assert split > 0  # the other positions are still drawn one by one
    pairs = M.examples(PUZZLES)[:4]
    tok = M.tokenizer_for(pairs)
    with pytest.raises(ConfigError, match="ties"):
        M.mgdm_loss(M.build_model(cfg, tok.vocab_size), *M.encode(tok, pairs, cfg.length), cfg, torch.Generator())
