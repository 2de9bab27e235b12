"""``hf.coordinated``: diverse beam search and repulsive sampling, all prompts x branches in one batch.

A tiny random Llama over a character tokenizer (no download). The batched, cached, left-padded
decoder is checked against slow references written here (no cache, one hypothesis at a time): plain
greedy decoding and beam search; repulsive sampling without a penalty against ``sample_branches``.
The model's output layer is scaled up so that its next-token distributions are peaked (beam search
then differs from greedy decoding); with it, greedy decoding stops at once on the first prompt (an
empty continuation). A second model makes end-of-sequence nearly as likely as "n" everywhere, so
that beams finish mid-way and a finished beam wins its group.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from mixture_of_thoughts.errors import ConfigError  # noqa: E402
from mixture_of_thoughts.hf.coordinated import coordinated_generate  # noqa: E402
from mixture_of_thoughts.hf.generate import sample_branches  # noqa: E402

EOS = 0  # the character tokenizer's and the tiny Llama's end-of-sequence id
PROMPTS = ["the cat sat", "a red dot and ten rats.", "on", "tea"]  # different lengths: a padded batch
SHARPEN = 10.0  # output-layer scale: peaked distributions, so beams differ from greedy decoding
EOS_LIKE = ("n", 0.9)  # eos_model: the EOS output row is this token's row, scaled
HUGE = 1e4  # a penalty no log-probability difference or Gumbel draw can outweigh
N = 10


@pytest.fixture(scope="module")
def tok(make_hf_char_tokenizer):
    return make_hf_char_tokenizer()


@pytest.fixture(scope="module")
def model(make_tiny_llama, tok):
    m = make_tiny_llama(len(tok), seed=1)
    with torch.no_grad():
        m.lm_head.weight.mul_(SHARPEN)
    return m


@pytest.fixture(scope="module")
def eos_model(make_tiny_llama, tok):
    m = make_tiny_llama(len(tok), seed=1)
    with torch.no_grad():
        m.lm_head.weight.mul_(SHARPEN)
        ch, scale = EOS_LIKE
        m.lm_head.weight[EOS] = scale * m.lm_head.weight[tok.convert_tokens_to_ids(ch)]
    return m


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


# ------------------------------------------------------------------------------------ references

def _logprobs(model, seq: list[int]) -> torch.Tensor:
    """``(V,)`` next-token log-probabilities after ``seq``: one full forward, no cache, no padding."""
    return torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0, -1].float(), -1)


def _nll(model, prompt: list[int], cont: list[int]) -> float:
    """Mean negative log-likelihood of ``cont`` after ``prompt`` (NaN when empty)."""
    if not cont:
        return float("nan")
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([prompt + cont])).logits[0].float(), -1)
    return -float(lp[len(prompt) - 1:-1].gather(1, torch.tensor(cont)[:, None]).mean())


@torch.no_grad()
def _beam_search(model, prompt: list[int], width: int, n: int) -> list[int]:
    """Plain beam search, one hypothesis at a time: ``width`` hypotheses ranked by summed log-probability;
    a finished one (EOS) stays with its score frozen; the best by score / length (EOS counted) wins.
    ``width=1`` is greedy decoding. Returns the best continuation without its EOS."""
    beams = [([], 0.0, False)]  # (generated ids, summed log-probability, finished)
    for _ in range(n):
        cands = []
        for k, (gen, score, done) in enumerate(beams):
            if done:
                cands.append((score, k, None))
                continue
            lp = _logprobs(model, prompt + gen).tolist()
            cands += [(score + lp[v], k, v) for v in range(len(lp))]
        cands.sort(key=lambda c: -c[0])
        beams = [(beams[k][0], s, True) if v is None else (beams[k][0] + [v], s, v == EOS)
                 for s, k, v in cands[:width]]
        if all(done for _, _, done in beams):
            break
    gen = max(beams, key=lambda b: b[1] / max(len(b[0]), 1))[0]
    return gen[:-1] if gen and gen[-1] == EOS else gen


def _same(a, b) -> bool:
    """Two results agree: the same ids and texts, NLLs equal within rounding (NaN for empty rows)."""
    return len(a) == len(b) and all(
        x[:2] == y[:2] and (math.isnan(x[2]) and math.isnan(y[2]) or math.isclose(x[2], y[2], abs_tol=1e-5))
        for x, y in zip(a, b, strict=True))


def _branches(res, n_branches: int) -> list[list[list[int]]]:
    """The continuations, per prompt then branch."""
    return [[c for c, _, _ in res[p:p + n_branches]] for p in range(0, len(res), n_branches)]


# ------------------------------------------------------------------------------------ diverse beam search

def test_dbs_without_penalty_and_one_beam_is_greedy_decoding_for_every_branch(model, tok, prompts):
    res = coordinated_generate(model, tok, prompts, [0, 1, 2], max_new_tokens=N)
    assert len(res) == len(prompts) * 3
    for p, branches in enumerate(_branches(res, 3)):
        ref = _beam_search(model, prompts[p], 1, N)
        assert branches == [ref] * 3
    # and sample_branches' greedy decoding says the same (text) for each prompt
    for p, text in enumerate(PROMPTS):
        alone = sample_branches(model, tok, text, [0], temperature=0.0, max_new_tokens=N)
        assert res[3 * p][1] == alone.branches[0].text


@pytest.mark.parametrize("which", ["model", "eos_model"])
def test_dbs_without_penalty_is_plain_beam_search_in_every_group(request, tok, prompts, which):
    model = request.getfixturevalue(which)
    refs = {}
    for width in (2, 3):
        res = coordinated_generate(model, tok, prompts, [0, 1], max_new_tokens=N, group_width=width)
        refs[width] = [_beam_search(model, ids, width, N) for ids in prompts]
        for p, branches in enumerate(_branches(res, 2)):
            assert branches == [refs[width][p]] * 2, (width, p)
    # not vacuous: beam search finds something else than greedy decoding for some prompt
    assert [_beam_search(model, ids, 1, N) for ids in prompts] != refs[3]
    if which == "eos_model":  # a beam that finished mid-way won its group
        assert any(0 < len(c) < N for c in refs[2] + refs[3])


@pytest.mark.parametrize("width", [1, 2])
def test_dbs_with_a_huge_penalty_starts_every_group_with_its_own_token(model, tok, prompts, width):
    B = 5
    res = coordinated_generate(model, tok, prompts, list(range(B)), max_new_tokens=4, diversity=HUGE,
                               group_width=width)
    for p, branches in enumerate(_branches(res, B)):
        firsts = [c[0] if c else EOS for c in branches]  # a branch that stopped at once chose EOS
        assert len(set(firsts)) == B, (p, firsts)
        # group 0 sees no earlier group: it is plain beam search
        assert branches[0] == _beam_search(model, prompts[p], width, 4)
    # each prompt gives the same alone as in the padded batch of prompts of different lengths
    for p, ids in enumerate(prompts):
        alone = coordinated_generate(model, tok, [ids], list(range(B)), max_new_tokens=4, diversity=HUGE,
                                     group_width=width)
        assert _same(alone, res[p * B:(p + 1) * B])


def _reuses_an_earlier_groups_token(branches: list[list[int]]) -> bool:
    """Whether some group's token at step i was produced by an earlier group at a step <= i."""
    return any(c[i] in earlier[:i + 1] for g, c in enumerate(branches) for earlier in branches[:g]
               for i in range(len(c)))


@pytest.mark.parametrize("temperature", [0.0, 0.3])
def test_prefix_window_avoids_every_token_earlier_branches_produced(model, tok, prompts, temperature):
    B, m = 4, 5
    kw = dict(max_new_tokens=m, diversity=HUGE, temperature=temperature)
    prefix = _branches(coordinated_generate(model, tok, prompts, list(range(B)), window="prefix", **kw), B)
    step = _branches(coordinated_generate(model, tok, prompts, list(range(B)), window="step", **kw), B)
    assert not any(_reuses_an_earlier_groups_token(b) for b in prefix)
    # the step window only forbids this step's tokens: it does reuse earlier ones somewhere
    assert any(_reuses_an_earlier_groups_token(b) for b in step)
    for b in step:  # ... but never a token chosen at the same step
        assert all(len({c[i] for c in b if len(c) > i}) == sum(len(c) > i for c in b) for i in range(m))


def test_dbs_is_greedy_after_the_diverse_tokens(model, tok, prompts):
    B, m = 4, 2
    res = coordinated_generate(model, tok, prompts, list(range(B)), max_new_tokens=N, diversity=HUGE,
                               diverse_tokens=m)
    plain = coordinated_generate(model, tok, prompts, list(range(B)), max_new_tokens=N)
    assert [r[0] for r in res] != [r[0] for r in plain]  # the penalty acted on the first m tokens
    for p, branches in enumerate(_branches(res, B)):
        for c in branches:
            if len(c) >= m:  # from the forced diverse prefix on, each group decodes greedily
                assert c[m:] == _beam_search(model, prompts[p] + c[:m], 1, N - m)


# ------------------------------------------------------------------------------------ repulsive sampling

def test_repulsive_sampling_without_penalty_is_sample_branches_row_for_row(model, tok, prompts):
    seeds = [3, 5, 7, 11]
    T = 1.5  # hot: some rows stop early, on their own
    res = coordinated_generate(model, tok, prompts, seeds, max_new_tokens=N, temperature=T)
    for p, text in enumerate(PROMPTS):
        alone = sample_branches(model, tok, text, seeds, temperature=T, max_new_tokens=N)
        for b, br in enumerate(alone.branches):
            ids, s, nll = res[p * len(seeds) + b]
            assert ids == tok(br.text, add_special_tokens=False)["input_ids"]  # characters: ids <-> text
            assert s == br.text
            assert nll == pytest.approx(-br.mean_loglik, abs=1e-5) or (not ids and math.isnan(nll))


def test_repulsive_sampling_with_a_huge_penalty_starts_every_branch_with_its_own_token(model, tok, prompts):
    seeds = list(range(6))
    T = 0.05  # nearly greedy: without the penalty the branches collide
    full = coordinated_generate(model, tok, prompts, seeds, max_new_tokens=3, temperature=T, diversity=HUGE)
    res = _branches(full, 6)
    plain = _branches(coordinated_generate(model, tok, prompts, seeds, max_new_tokens=3, temperature=T), 6)
    assert any(len({c[0] if c else EOS for c in b}) < 6 for b in plain)
    for p, branches in enumerate(res):
        assert len({c[0] if c else EOS for c in branches}) == 6, p
        assert branches[0] == plain[p][0]  # branch 0 sees no earlier branch
        alone = coordinated_generate(model, tok, [prompts[p]], seeds, max_new_tokens=3, temperature=T,
                                     diversity=HUGE)
        assert _same(alone, full[6 * p:6 * (p + 1)])  # the other prompts of the padded batch change nothing


def test_repulsive_branches_follow_their_seeds_and_the_branches_before_them(model, tok, prompts):
    kw = dict(max_new_tokens=N, temperature=0.5, diversity=2.0)
    a = coordinated_generate(model, tok, prompts, [10, 11, 12, 13], **kw)
    assert _same(a, coordinated_generate(model, tok, prompts, [10, 11, 12, 13], **kw))
    b = coordinated_generate(model, tok, prompts, [10, 11, 12, 99], **kw)
    for p in range(len(prompts)):
        assert _same(a[4 * p:4 * p + 3], b[4 * p:4 * p + 3])  # branches 0..2 do not see branch 3
    assert [a[4 * p + 3][0] for p in range(len(prompts))] != [b[4 * p + 3][0] for p in range(len(prompts))]
    c = coordinated_generate(model, tok, prompts, [99, 11, 12, 13], **kw)
    assert [c[4 * p + 1][0] for p in range(len(prompts))] != [a[4 * p + 1][0] for p in range(len(prompts))]


def test_repulsive_sampling_is_plain_sampling_after_the_diverse_tokens(model, tok, prompts):
    seeds, T, m = [0, 1, 2, 3], 0.3, 1
    res = coordinated_generate(model, tok, prompts, seeds, max_new_tokens=N, temperature=T, diversity=HUGE,
                               diverse_tokens=m)
    plain = coordinated_generate(model, tok, prompts, seeds, max_new_tokens=N, temperature=T)
    assert [r[0][:m] for r in res] != [r[0][:m] for r in plain]  # the penalty acted on the first token
    for p, text in enumerate(PROMPTS):
        for b, seed in enumerate(seeds):
            ids, s, _ = res[p * len(seeds) + b]
            if len(ids) >= m:  # the rest is the seed's own sampling after the forced first token
                alone = sample_branches(model, tok, text + s[:m], [seed], temperature=T, max_new_tokens=N - m)
                assert s[m:] == alone.branches[0].text


# ------------------------------------------------------------------------------------ stopping, errors

@pytest.mark.parametrize("which, kw", [
    ("model", dict()),
    ("model", dict(temperature=1.5)),
    ("model", dict(temperature=1.5, diversity=1.0, window="prefix")),
    ("eos_model", dict(group_width=2, diversity=1.0)),
    ("eos_model", dict(group_width=3, diversity=1.0, window="prefix")),
    ("eos_model", dict(temperature=1.0, diversity=1.0)),
])
def test_stopped_rows_drop_the_stop_id_and_score_their_kept_tokens(request, tok, prompts, kw, which):
    model = request.getfixturevalue(which)
    res = coordinated_generate(model, tok, prompts, [0, 1, 2, 3], max_new_tokens=N, **kw)
    assert any(len(c) < N for c, _, _ in res)  # some rows stopped on EOS (not vacuous)
    if which == "model" and not kw:  # greedy decoding stops at once on the first prompt: NaN
        assert res[0][0] == [] and res[0][1] == "" and math.isnan(res[0][2])
    for r, (ids, text, nll) in enumerate(res):
        assert EOS not in ids
        assert text == tok.decode(ids, skip_special_tokens=True)
        ref = _nll(model, prompts[r // 4], ids)
        assert (math.isnan(nll) and math.isnan(ref)) or nll == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("kw, match", [
    (dict(diversity=-1.0), "diversity"),
    (dict(diversity=float("nan")), "diversity"),
    (dict(group_width=0), "group_width"),
    (dict(window="all"), "window"),
    (dict(diverse_tokens=0), "diverse_tokens"),
    (dict(temperature=1.0, group_width=2), "group_width"),
    (dict(temperature=-0.5), "temperature"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(seeds=[]), "seeds"),
    (dict(ids_list=[]), "ids_list"),
    (dict(ids_list=[[]]), "prompt"),
])
def test_config_errors(model, tok, prompts, kw, match):
    args = dict(ids_list=prompts[:1], seeds=[0, 1], max_new_tokens=3)
    args.update(kw)
    with pytest.raises(ConfigError, match=match):
        coordinated_generate(model, tok, args.pop("ids_list"), args.pop("seeds"), **args)
