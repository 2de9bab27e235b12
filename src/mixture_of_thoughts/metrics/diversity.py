"""Diversity metrics over the N branches generated for one prompt.

Every function takes ``texts``, a list of N strings (the branches of one prompt), and returns a
float. They are pure: nothing is cached except sacrebleu's scorer object, which is stateless.

References:
    - distinct-n: Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
      Models" (NAACL), section 4.3.
    - self-BLEU: Zhu et al. 2018, "Texygen: A Benchmarking Platform for Text Generation Models"
      (SIGIR), section 2.2.
    - n-gram entropy: Zhang et al. 2018, "Generating Informative and Diverse Conversational Responses
      via Adversarial Information Maximization" (NeurIPS), section 5 ("Ent-n").
    - Vendi score: Friedman & Dieng 2023, "The Vendi Score: A Diversity Evaluation Metric for Machine
      Learning" (TMLR), definition 3.1.
    - compression ratio: gzip-based redundancy, as used e.g. by Shaib et al. 2024, "Standardizing the
      Measurement of Text Diversity".

Two tokenisations are offered where it matters: ``unit="word"`` splits on whitespace
(``str.split()``), ``unit="char"`` uses every character, spaces included. N-grams never cross the
boundary between two texts. Self-BLEU uses sacrebleu's own ``13a`` tokeniser.
"""

from __future__ import annotations

import functools
import gzip
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from sacrebleu.metrics import BLEU

__all__ = [
    "compression_ratio",
    "distinct_n",
    "distinct_ns",
    "diversity_report",
    "ngram_entropy",
    "self_bleu",
    "vendi_score",
]

UNITS = ("word", "char")
# gzip at its strongest setting and with a zero timestamp, so that the ratio is deterministic.
GZIP_LEVEL = 9
BLEU_MAX = 100.0
# Eigenvalues of a PSD matrix computed in float64 come out a few ulps below zero; those are zeros.
EIGENVALUE_FLOOR = 0.0


def check_texts(texts: Sequence[str], *, min_count: int = 1, what: str = "texts") -> list[str]:
    """Return ``texts`` as a list after checking it is a non-empty list (or tuple) of strings."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"{what} must be a list of strings (one per branch), got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(t).__name__}")
    if len(texts) < min_count:
        if not texts:
            raise ValueError(f"{what} is empty: pass the N generated branches of one prompt")
        raise ValueError(f"{what} has {len(texts)} text(s); this metric needs at least {min_count}")
    return list(texts)


def check_n(n: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return n


def text_units(text: str, unit: str) -> list[str] | str:
    if unit == "word":
        return text.split()
    if unit == "char":
        return text
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


def _ngrams(text: str, n: int, unit: str) -> Iterable[tuple[str, ...]]:
    """The n-grams of one text, in order; empty when the text has fewer than n units."""
    toks = text_units(text, unit)
    return (tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def ngram_counts(texts: Sequence[str], n: int, unit: str) -> Counter:
    """Pooled n-gram counts over all texts (n-grams do not cross text boundaries)."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(_ngrams(t, n, unit))
    return counts


def distinct_n(texts: Sequence[str], n: int, unit: str = "word") -> float:
    """Distinct-n: the number of distinct n-grams divided by the total number of n-grams.

    Definition (Li et al. 2016): pool the n-grams of all texts; distinct-n = |set of n-grams| /
    (number of n-gram occurrences). 1.0 means no n-gram repeats, within or across texts.

    Args:
        texts: the N branches of one prompt (list of str, N >= 1).
        n: n-gram order (>= 1).
        unit: ``"word"`` (whitespace split) or ``"char"``.

    Returns:
        A float in [0, 1]; 0.0 when no text has n units.
    """
    texts = check_texts(texts)
    n = check_n(n)
    counts = ngram_counts(texts, n, unit)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def distinct_ns(texts: Sequence[str], ns: Sequence[int] = (1, 2, 3, 4), unit: str = "word") -> dict[int, float]:
    """Distinct-n for each order in ``ns`` (see :func:`distinct_n`).

    Args:
        texts: the N branches of one prompt (list of str, N >= 1).
        ns: the n-gram orders.
        unit: ``"word"`` or ``"char"``.

    Returns:
        ``{n: distinct_n(texts, n, unit)}`` for each n in ``ns``.
    """
    return {n: distinct_n(texts, n, unit) for n in ns}


@functools.lru_cache(maxsize=8)
def _bleu(n: int) -> BLEU:
    # One scorer per order, reused: building it parses options and sets up the tokeniser, and
    # self-BLEU is called thousands of times in a sweep. sentence_score keeps no state between calls.
    return BLEU(max_ngram_order=n, effective_order=True)


def self_bleu(texts: Sequence[str], n: int = 4) -> float:
    """Self-BLEU-n: the mean BLEU of each text against all the others as references.

    Definition (Zhu et al. 2018, Texygen): for each i, score text i as the hypothesis with the other
    N - 1 texts as references; average over i. Each score is sacrebleu's sentence-level BLEU
    (``BLEU.sentence_score``, ``13a`` tokenisation, exponential smoothing, effective order, so that
    texts shorter than n words are not scored 0 for lacking higher-order n-grams). Higher means more
    alike: N identical (non-empty) texts score 100; empty texts score 0.

    Args:
        texts: the N branches of one prompt (list of str, N >= 2).
        n: the maximum n-gram order (BLEU-n), >= 1.

    Returns:
        A float in [0, 100].

    Raises:
        ValueError: if fewer than two texts are given (there would be no references).
    """
    texts = check_texts(texts, min_count=2)
    bleu = _bleu(check_n(n))
    scores = [bleu.sentence_score(hyp, texts[:i] + texts[i + 1:]).score for i, hyp in enumerate(texts)]
    # sacrebleu's arithmetic can land a few ulps above 100 for exact matches.
    return float(min(sum(scores) / len(scores), BLEU_MAX))


def ngram_entropy(texts: Sequence[str], n: int = 2, unit: str = "word") -> float:
    """Entropy (bits) of the pooled n-gram distribution (Ent-n).

    Definition (Zhang et al. 2018): with c(g) the count of n-gram g over all texts and
    p(g) = c(g) / sum_g' c(g'), Ent-n = -sum_g p(g) log2 p(g). Uniform over k distinct n-grams gives
    log2 k; one n-gram repeated gives 0.

    Args:
        texts: the N branches of one prompt (list of str, N >= 1).
        n: n-gram order (>= 1).
        unit: ``"word"`` or ``"char"``.

    Returns:
        A float >= 0 (bits); 0.0 when there are no n-grams.
    """
    texts = check_texts(texts)
    n = check_n(n)
    counts = np.fromiter(ngram_counts(texts, n, unit).values(), dtype=np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))  # max: -0.0 for a single n-gram


def compression_ratio(texts: Sequence[str]) -> float:
    """Compression ratio: raw bytes / gzip-compressed bytes of the texts joined by newlines.

    Higher means more redundant (repeated material compresses well); lower means more diverse.
    Texts are UTF-8 encoded and joined with ``"\\n"``; gzip runs at level 9 with a zero timestamp
    so the result is deterministic. gzip's fixed header and trailer (~20 bytes) dominate for very
    short inputs, which therefore score below 1: compare ratios only across inputs of similar size.

    Args:
        texts: the N branches of one prompt (list of str, N >= 1).

    Returns:
        A float > 0 (0.0 only if every text is empty and N == 1).
    """
    texts = check_texts(texts)
    raw = "\n".join(texts).encode("utf-8")
    return len(raw) / len(gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0))


def _ngram_features(texts: Sequence[str], ns: Sequence[int], unit: str) -> np.ndarray:
    """(N, V + 1) count matrix over all n-grams of the given orders, plus an 'empty text' column.

    The extra column is 1 for a text with no n-grams at all, so that such texts are identical to
    each other and orthogonal to every other text instead of having an undefined cosine.
    """
    rows = []
    for t in texts:
        c: Counter = Counter()
        for n in ns:
            c.update((n, g) for g in _ngrams(t, n, unit))  # the order is part of the key
        rows.append(c)
    vocab = {g: j for j, g in enumerate({g for c in rows for g in c})}
    X = np.zeros((len(texts), len(vocab) + 1), dtype=np.float64)
    for i, c in enumerate(rows):
        for g, k in c.items():
            X[i, vocab[g]] = k
        if not c:
            X[i, -1] = 1.0
    return X


def vendi_score(texts: Sequence[str], n: int | Sequence[int] = (1, 2, 3), unit: str = "char") -> float:
    """Vendi score on n-gram count features: the effective number of distinct texts.

    Definition (Friedman & Dieng 2023, def. 3.1): with K the N x N similarity matrix (K_ii = 1, PSD)
    and lambda_1..lambda_N the eigenvalues of K / N (they sum to 1),
    VS = exp(-sum_i lambda_i log lambda_i). Here K_ij is the cosine similarity of the n-gram count
    vectors of texts i and j (all orders in ``n`` pooled into one vector). N identical texts give 1;
    N texts with pairwise disjoint n-grams give N.

    Args:
        texts: the N branches of one prompt (list of str, N >= 1).
        n: an n-gram order or a sequence of orders whose counts are concatenated.
        unit: ``"char"`` or ``"word"``.

    Returns:
        A float in [1, N].
    """
    texts = check_texts(texts)
    ns = (n,) if isinstance(n, int) else tuple(n)
    if not ns:
        raise ValueError("n must be a positive integer or a non-empty sequence of them")
    for k in ns:
        check_n(k)
    X = _ngram_features(texts, ns, unit)  # (N, V + 1), every row non-zero
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    K = X @ X.T  # (N, N) cosine similarities, diagonal 1
    lam = np.linalg.eigvalsh(K / len(texts))
    lam = lam[lam > EIGENVALUE_FLOOR]  # drop zeros (0 log 0 = 0) and round-off negatives
    lam = lam / lam.sum()
    entropy = -(lam * np.log(lam)).sum()
    return float(min(max(math.exp(entropy), 1.0), len(texts)))  # clamp round-off outside [1, N]


def diversity_report(texts: Sequence[str]) -> dict[str, float]:
    """All diversity metrics of one prompt's branches, with the settings of DESIGN.md section 5.

    Keys: ``distinct_1`` .. ``distinct_4`` (word), ``self_bleu`` (BLEU-4), ``ngram_entropy``
    (word bigrams, bits), ``compression_ratio`` (gzip), ``vendi`` (char 1-3-grams).

    Args:
        texts: the N branches of one prompt (list of str, N >= 2, since self-BLEU needs references).

    Returns:
        A dict from metric name to float.
    """
    texts = check_texts(texts, min_count=2)
    report = {f"distinct_{n}": d for n, d in distinct_ns(texts, (1, 2, 3, 4), unit="word").items()}
    report["self_bleu"] = self_bleu(texts, n=4)
    report["ngram_entropy"] = ngram_entropy(texts, n=2, unit="word")
    report["compression_ratio"] = compression_ratio(texts)
    report["vendi"] = vendi_score(texts, n=(1, 2, 3), unit="char")
    return {k: float(v) for k, v in report.items()}
