"""Tests for metrics/diversity.py: hand-computed values, edge cases and properties."""

from __future__ import annotations

import math
import random
import string
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixture_of_thoughts.metrics.diversity import (
    compression_ratio,
    distinct_n,
    distinct_ns,
    diversity_report,
    ngram_entropy,
    self_bleu,
    vendi_score,
)

# Small alphabet so that random texts share n-grams often enough to exercise repeats.
TEXTS = st.lists(st.text(alphabet="ab c", max_size=20), min_size=1, max_size=6)

# --- distinct-n ---------------------------------------------------------------------------------


def test_distinct_2_hand_example():
    # "a b a b" -> bigrams (a,b), (b,a), (a,b): 2 distinct / 3 total
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)


def test_distinct_pools_across_texts_but_not_across_boundaries():
    # unigrams a, b, b, c -> 3 distinct / 4 total
    assert distinct_n(["a b", "b c"], 1) == pytest.approx(3 / 4)
    # bigrams (a,b) and (b,c) only; the pair (b,b) across the boundary does not count -> 2 / 2
    assert distinct_n(["a b", "b c"], 2) == 1.0


def test_distinct_char_unit():
    # "aaaa" -> char bigrams aa, aa, aa: 1 / 3
    assert distinct_n(["aaaa"], 2, unit="char") == pytest.approx(1 / 3)
    # spaces are characters: "a a" -> a, ' ', a: 2 / 3
    assert distinct_n(["a a"], 1, unit="char") == pytest.approx(2 / 3)


def test_distinct_disjoint_texts_is_one():
    texts = ["the cat sat", "a dog ran", "my fish swam"]
    assert distinct_ns(texts) == {1: 1.0, 2: 1.0, 3: 1.0, 4: 0.0}  # no text has 4 words


def test_distinct_no_ngrams_is_zero():
    assert distinct_n(["a", ""], 2) == 0.0


# --- self-BLEU ----------------------------------------------------------------------------------


def test_self_bleu_identical_texts_is_100():
    assert self_bleu(["the cat sat on the mat today"] * 4) == pytest.approx(100.0, abs=1e-6)


def test_self_bleu_near_copies_above_different_texts():
    near = [
        "the quick brown fox jumps over the lazy dog",
        "the quick brown fox jumps over the lazy cat",
        "the quick brown fox leaps over the lazy dog",
    ]
    different = [
        "the quick brown fox jumps over the lazy dog",
        "stars were shining above a quiet harbour town",
        "she wrote three letters before the train left",
    ]
    high, low = self_bleu(near), self_bleu(different)
    assert 50.0 < high < 100.0
    assert low < 20.0


def test_self_bleu_is_order_invariant():
    texts = ["one two three four", "two three four five", "five six seven"]
    assert self_bleu(texts) == pytest.approx(self_bleu(texts[::-1]))


def test_self_bleu_needs_two_texts():
    with pytest.raises(ValueError, match="at least 2"):
        self_bleu(["only one"])


# --- n-gram entropy -----------------------------------------------------------------------------


def test_entropy_uniform_over_four_bigrams_is_two_bits():
    # "a b c d e" -> ab, bc, cd, de, each p = 1/4 -> -4 * 1/4 * log2(1/4) = 2 bits
    assert ngram_entropy(["a b c d e"], n=2) == pytest.approx(2.0)


def test_entropy_hand_example_and_degenerate_cases():
    # "a b a b" -> ab: 2, ba: 1 -> -(2/3 log2 2/3 + 1/3 log2 1/3) = log2 3 - 2/3
    assert ngram_entropy(["a b a b"], n=2) == pytest.approx(math.log2(3) - 2 / 3)
    assert ngram_entropy(["a a a a"], n=2) == 0.0  # one bigram
    assert ngram_entropy(["a"], n=2) == 0.0  # no bigrams


# --- compression ratio --------------------------------------------------------------------------


def test_compression_repetitive_above_random():
    rng = random.Random(0)
    random_letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(600))
    repetitive = "abc" * 200  # same length, 600 bytes
    assert compression_ratio([repetitive]) > 5 * compression_ratio([random_letters])
    # 26 letters carry log2(26) ~ 4.7 bits per 8-bit byte, so gzip can win less than 8/4.7 ~ 1.7x
    assert compression_ratio([random_letters]) < 8 / math.log2(26)


def test_compression_counts_repeats_across_branches():
    rng = random.Random(1)
    branch = "".join(rng.choice(string.ascii_lowercase) for _ in range(200))
    others = ["".join(rng.choice(string.ascii_lowercase) for _ in range(200)) for _ in range(4)]
    assert compression_ratio([branch] * 4) > compression_ratio([branch, *others[:3]])


# --- Vendi score --------------------------------------------------------------------------------


def test_vendi_identical_texts_is_one():
    assert vendi_score(["hello there"] * 5) == pytest.approx(1.0, abs=1e-6)


def test_vendi_disjoint_texts_is_n():
    # no character is shared, so every 1-, 2- and 3-gram is disjoint: K = I, eigenvalues 1/3 each
    assert vendi_score(["abc", "def", "ghi"]) == pytest.approx(3.0, abs=1e-6)


def test_vendi_two_texts_hand_example():
    # char unigrams: "ab" -> (a=1, b=1, c=0), "ac" -> (1, 0, 1); cos = 1 / 2
    # K / 2 = [[1/2, 1/4], [1/4, 1/2]] has eigenvalues 3/4 and 1/4
    lam = (0.75, 0.25)
    expected = math.exp(-sum(x * math.log(x) for x in lam))  # ~ 1.7548
    assert vendi_score(["ab", "ac"], n=1) == pytest.approx(expected)


def test_vendi_empty_texts_are_alike():
    assert vendi_score(["", ""]) == pytest.approx(1.0)
    assert vendi_score(["", "ab"]) == pytest.approx(2.0)


def test_vendi_word_unit():
    assert vendi_score(["a b", "c d"], n=(1, 2), unit="word") == pytest.approx(2.0)
    assert vendi_score(["a b", "a b"], n=(1, 2), unit="word") == pytest.approx(1.0)


# --- report and validation ----------------------------------------------------------------------


def test_report_keys_and_settings():
    texts = ["the cat sat on the mat", "a dog ran in the park", "the cat sat on a hat"]
    r = diversity_report(texts)
    # each entry is its metric with the settings of DESIGN.md section 5 (word n-grams for distinct-n and
    # entropy, BLEU-4, character 1-3-grams for Vendi)
    assert r == {
        "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2), "distinct_3": distinct_n(texts, 3),
        "distinct_4": distinct_n(texts, 4), "self_bleu": self_bleu(texts, n=4),
        "ngram_entropy": ngram_entropy(texts, n=2, unit="word"), "compression_ratio": compression_ratio(texts),
        "vendi": vendi_score(texts, n=(1, 2, 3), unit="char"),
    }
    assert list(r) == [
        "distinct_1", "distinct_2", "distinct_3", "distinct_4",
        "self_bleu", "ngram_entropy", "compression_ratio", "vendi",
    ]
    # by hand: 18 words, 11 distinct; 15 bigrams, of which "the cat", "cat sat", "sat on" come twice: 12 distinct
    assert r["distinct_1"] == pytest.approx(11 / 18)
    assert r["distinct_2"] == pytest.approx(12 / 15)


@pytest.mark.parametrize("fn", [distinct_n, ngram_entropy, compression_ratio, vendi_score, self_bleu])
def test_empty_list_raises(fn):
    kwargs = {"n": 1} if fn is distinct_n else {}
    with pytest.raises(ValueError, match="empty"):
        fn([], **kwargs)


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="list of strings"):
        distinct_n("a b c", 1)  # a bare string is not a list of branches
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        vendi_score(["a", 3])
    with pytest.raises(ValueError, match="unit"):
        distinct_n(["a b"], 1, unit="token")
    with pytest.raises(ValueError, match="positive integer"):
        ngram_entropy(["a b"], n=0)
    with pytest.raises(ValueError, match="at least 2"):
        diversity_report(["one branch"])


# --- properties: slow references written from the definitions -----------------------------------


def _slow_ngrams(text, n, unit):
    toks = text.split() if unit == "word" else list(text)
    return [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]


def _slow_vendi(texts, ns=(1, 2, 3)):
    """Friedman & Dieng's definition with cosine similarity of pooled n-gram count dicts."""
    feats = [Counter((n, g) for n in ns for g in _slow_ngrams(t, n, "char")) for t in texts]

    def cos(a, b):
        if not a or not b:
            return float(not a and not b)  # texts without n-grams: alike each other, unlike the rest
        return sum(v * b[k] for k, v in a.items()) / math.sqrt(sum(v * v for v in a.values())
                                                               * sum(v * v for v in b.values()))

    K = np.array([[cos(a, b) for b in feats] for a in feats])
    lam = np.linalg.eigvalsh(K / len(texts))
    lam = lam[lam > 1e-12]
    return math.exp(-sum(x * math.log(x) for x in lam))


@settings(max_examples=60, deadline=None)
@given(texts=TEXTS, n=st.integers(1, 4), unit=st.sampled_from(["word", "char"]))
def test_distinct_matches_a_slow_count_and_halves_when_every_text_repeats(texts, n, unit):
    grams = [g for t in texts for g in _slow_ngrams(t, n, unit)]
    d = distinct_n(texts, n, unit=unit)
    assert d == (pytest.approx(len(set(grams)) / len(grams)) if grams else 0.0)
    # the same n-grams, each twice as often
    assert distinct_n(texts + texts, n, unit=unit) == pytest.approx(d / 2)


@settings(max_examples=60, deadline=None)
@given(texts=TEXTS)
def test_vendi_matches_the_definition_and_ignores_duplicating_the_set(texts):
    v = vendi_score(texts)
    assert v == pytest.approx(_slow_vendi(texts), abs=1e-6)
    # K of the doubled set is [[K, K], [K, K]]: the same non-zero eigenvalues of K / N, the same score
    assert vendi_score(texts + texts) == pytest.approx(v, abs=1e-6)
    # N identical texts count as one
    assert vendi_score([texts[0]] * len(texts)) == pytest.approx(1.0, abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(texts=TEXTS)
def test_self_bleu_is_100_for_copies_and_entropy_matches_the_definition(texts):
    # every text has an exact copy among its references: BLEU 100, except texts with no token, which score 0
    expected = 100.0 * sum(bool(t.split()) for t in texts) / len(texts)
    assert self_bleu(texts + texts) == pytest.approx(expected, abs=1e-6)
    counts = Counter(g for t in texts for g in _slow_ngrams(t, 1, "char"))
    total = sum(counts.values())
    H = -sum(c / total * math.log2(c / total) for c in counts.values())
    assert ngram_entropy(texts, n=1, unit="char") == pytest.approx(H, abs=1e-9)
    assert ngram_entropy(texts + texts, n=1, unit="char") == pytest.approx(H, abs=1e-9)  # same distribution
