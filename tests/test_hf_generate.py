"""Direct tests of ``hf.generate.sample_branches`` (and ``think_hf``) on a tiny random Llama, offline.

Every expectation comes from a slow reference written here: one row alone, no KV cache, the whole
sequence recomputed at every step, the token drawn with the row's own counter-based noise at its
absolute position (``sample_tokens(..., RowNoise([seed]), T0 + i)``) or, for greedy decoding, the plain
argmax. The random model is close to uniform over its 31 tokens, so ``<eos>`` (id 0) comes up about
once in 31 draws: rows of one batch stop at their own, different steps without any forcing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("transformers")

from mixture_of_thoughts.generation.sampling import sample_tokens  # noqa: E402
from mixture_of_thoughts.hf.generate import sample_branches, think_hf  # noqa: E402
from mixture_of_thoughts.hf.graft import graft  # noqa: E402
from mixture_of_thoughts.rng import RowNoise  # noqa: E402

PROMPT = "the cat "
SEEDS = list(range(10))
MAX_NEW = 40
EOS = 0


@dataclass
class Ref:
    ids: list[int]  # generated ids, including the stop id that ended the row (if any)
    logprobs: list[float]  # log-probability of each, temperature 1, no filter
    stopped: bool  # ended on a stop id before max_new_tokens

    @property
    def kept(self) -> list[int]:
        return self.ids[:-1] if self.stopped else self.ids


@torch.no_grad()
def reference_row(model, prompt_ids, seed, n, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
                  stop_ids=(EOS,)) -> Ref:
    """One row alone, no KV cache, the full sequence recomputed at every step."""
    noise = RowNoise([seed])
    ids = list(prompt_ids)
    T0 = len(ids)
    new, lps = [], []
    for i in range(n):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[:, -1, :]
        if temperature == 0:
            nxt = int(logits.argmax(-1))
        else:
            nxt = int(sample_tokens(logits, noise, T0 + i, temperature, top_k, top_p, min_p))
        new.append(nxt)
        lps.append(float(torch.log_softmax(logits.float(), -1)[0, nxt]))
        ids.append(nxt)
        if nxt in stop_ids:
            return Ref(new, lps, True)
    return Ref(new, lps, False)


def mean(xs):
    return sum(xs) / len(xs)


def assert_loglik(branch, ref: Ref, kept: int | None = None):
    """``branch.mean_loglik`` is the mean log-probability of the row's generated tokens.

    For a row ended by EOS the mean is over the tokens of the text: the EOS's own log-probability
    is left out, like the EOS itself.
    """
    if kept is not None:  # a stop string ended the row after `kept` tokens (kept in the text)
        assert branch.mean_loglik == pytest.approx(mean(ref.logprobs[:kept]), abs=1e-5)
        return
    if not ref.stopped:
        assert branch.mean_loglik == pytest.approx(mean(ref.logprobs), abs=1e-5)
        return
    n = len(ref.kept)  # the EOS is not part of the text, nor of its mean log-likelihood
    assert branch.mean_loglik == pytest.approx(mean(ref.logprobs[:n]) if n else 0.0, abs=1e-5)


@pytest.fixture(scope="module")
def tok(make_hf_char_tokenizer):
    return make_hf_char_tokenizer()


@pytest.fixture(scope="module")
def model(make_tiny_llama, tok):
    return make_tiny_llama(len(tok))


@pytest.fixture(scope="module")
def prompt_ids(tok):
    return tok(PROMPT, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def refs(model, prompt_ids):
    """The no-cache reference of every seed at temperature 1."""
    return {s: reference_row(model, prompt_ids, s, MAX_NEW) for s in SEEDS}


@pytest.fixture(scope="module")
def batch(model, tok):
    return sample_branches(model, tok, PROMPT, SEEDS, max_new_tokens=MAX_NEW)


def test_a_row_that_samples_eos_stops_there_and_the_others_continue(batch, refs, tok):
    steps = {s: len(r.ids) for s, r in refs.items() if r.stopped}
    running = [s for s, r in refs.items() if not r.stopped]
    # the setting this test is about: rows that stop early at different steps, and rows that do not
    assert len(set(steps.values())) >= 3 and min(steps.values()) < MAX_NEW // 2 and running, (steps, running)
    for br in batch.branches:
        r = refs[br.seed]
        assert br.text == tok.decode(r.kept)  # the text stops before the EOS it sampled
        # a character tokenizer: one character per generated token, so the length tells the stop step
        assert len(br.text) == (steps[br.seed] - 1 if r.stopped else MAX_NEW)


def test_rows_finishing_at_different_steps_equal_the_same_rows_alone(batch, refs, model, tok):
    assert len({len(b.text) for b in batch.branches}) >= 4
    for br in batch.branches:
        alone = sample_branches(model, tok, PROMPT, [br.seed], max_new_tokens=MAX_NEW).branches[0]
        assert alone.seed == br.seed
        assert alone.text == br.text
        assert alone.mean_loglik == pytest.approx(br.mean_loglik, abs=1e-5)
        assert_loglik(br, refs[br.seed])


@pytest.mark.parametrize("kw", [{"temperature": 0.8, "top_k": 8}, {"top_p": 0.9}, {"temperature": 1.3, "min_p": 0.5}])
def test_batched_cached_sampling_equals_the_no_cache_reference(model, tok, prompt_ids, kw):
    seeds = [3, 11, 12, 40]
    res = sample_branches(model, tok, PROMPT, seeds, max_new_tokens=25, **kw)
    for br in res.branches:
        r = reference_row(model, prompt_ids, br.seed, 25, **kw)
        assert br.text == tok.decode(r.kept)
        assert_loglik(br, r)


def test_batched_cached_greedy_equals_no_cache_argmax(model, tok, prompt_ids):
    res = sample_branches(model, tok, PROMPT, [0, 1, 2], max_new_tokens=MAX_NEW, temperature=0.0)
    r = reference_row(model, prompt_ids, 0, MAX_NEW, temperature=0.0)
    assert len(r.kept) > 10  # enough greedy steps to exercise the cache
    for br in res.branches:  # greedy decoding ignores the seed: every row is the argmax path
        assert br.text == tok.decode(r.kept)
        assert_loglik(br, r)


def _cut(text: str, stop: str) -> str:
    return text[:text.find(stop) + len(stop)] if stop in text else text


def test_stop_string_ends_each_row_where_its_text_ends_with_it(batch, refs, model, tok):
    fulls = {s: tok.decode(r.kept) for s, r in refs.items()}
    common = max(set("".join(fulls.values())) - {" "}, key=lambda c: sum(c in t for t in fulls.values()))
    longest = max(fulls.values(), key=len)
    for stop in (common, longest[12:14]):  # one character; two characters (two tokens)
        cuts = {s: len(_cut(t, stop)) for s, t in fulls.items() if stop in t}
        assert len(set(cuts.values())) >= (2 if len(stop) == 1 else 1), (stop, cuts)
        res = sample_branches(model, tok, PROMPT, SEEDS, max_new_tokens=MAX_NEW, stop=stop)
        for br in res.branches:
            full = fulls[br.seed]
            assert br.text == _cut(full, stop), (stop, br.seed)
            if stop in full:
                assert br.text.endswith(stop) and stop not in br.text[:-1]
                assert_loglik(br, refs[br.seed], kept=len(br.text))
            else:  # the stop string never came: the row ran as without it (to EOS or to the end)
                assert_loglik(br, refs[br.seed])


def test_stop_string_ends_a_row_even_when_generated_as_other_tokens(make_hf_char_tokenizer, make_tiny_llama):
    tok = make_hf_char_tokenizer(merges=[("t", "h")])
    model = make_tiny_llama(len(tok), seed=1)
    t, h, th = (tok.convert_tokens_to_ids(x) for x in ("t", "h", "th"))
    bias = torch.zeros(len(tok))
    bias[[t, h]] = 4.0  # 't' and 'h' become likely, so "th" soon appears as two tokens
    model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    seeds = list(range(6))
    refs = {s: reference_row(model, ids, s, 30) for s in seeds}
    fulls = {s: tok.decode(r.kept) for s, r in refs.items()}
    split = [s for s, r in refs.items() if "th" in fulls[s] and th not in r.kept[:len(_cut(fulls[s], "th"))]]
    assert split, "no row generated 'th' as two tokens: the case under test did not occur"
    res = sample_branches(model, tok, PROMPT, seeds, max_new_tokens=30, stop="th")
    assert {br.seed: br.text for br in res.branches} == {s: _cut(fulls[s], "th") for s in seeds}


def test_every_eos_id_of_the_model_ends_a_row(make_tiny_llama, tok, prompt_ids):
    """A model whose generation config lists several EOS ids (chat models' end-of-turn tokens) stops a row
    on any of them, and none is part of the text."""
    model = make_tiny_llama(len(tok))
    dot = tok.convert_tokens_to_ids(".")
    model.config.eos_token_id = [EOS, dot]
    model.generation_config.eos_token_id = [EOS, dot]
    refs = {s: reference_row(model, prompt_ids, s, MAX_NEW, stop_ids=(EOS, dot)) for s in SEEDS}
    assert any(r.stopped and r.ids[-1] == dot for r in refs.values())
    res = sample_branches(model, tok, PROMPT, SEEDS, max_new_tokens=MAX_NEW)
    assert {br.seed: br.text for br in res.branches} == {s: tok.decode(r.kept) for s, r in refs.items()}


def test_think_hf_at_zero_creativity_is_the_base_model(make_tiny_llama, model, tok):
    """A graft starts as the identity (zero router, branches copied from the MLP) and creativity 0 adds no
    noise, so think_hf on the grafted copy gives the base model's branches; creativity > 0 changes them."""
    grafted = graft(make_tiny_llama(len(tok)), "all", n_branches=4, k=2, noise_init=1.0, seed=0)
    seeds = [5, 6, 7, 8]
    base = sample_branches(model, tok, PROMPT, seeds, max_new_tokens=30)
    zero = think_hf(grafted, tok, PROMPT, branch_seeds=seeds, creativity=0.0, max_new_tokens=30)
    assert [b.text for b in zero.branches] == [b.text for b in base.branches]
    assert [b.mean_loglik for b in zero.branches] == pytest.approx([b.mean_loglik for b in base.branches], abs=1e-5)
    assert [b.creativity for b in zero.branches] == [0.0] * 4
    hot = think_hf(grafted, tok, PROMPT, branch_seeds=seeds, creativity=1.0, max_new_tokens=30)
    assert [b.text for b in hot.branches] != [b.text for b in base.branches]
    alone = think_hf(grafted, tok, PROMPT, branch_seeds=[seeds[2]], creativity=1.0, max_new_tokens=30)
    assert alone.branches[0].text == hot.branches[2].text
