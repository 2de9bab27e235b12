"""The prompt sets: the held-out set's size and spread, the training prompts built from templates,
and that neither overlaps the tuning set (nor one another)."""

from __future__ import annotations

import json
import string
from collections import Counter

import pytest

from mixture_of_thoughts.data.prompts import (
    HELD_OUT_FILE,
    TRAIN_TEMPLATES,
    TUNING_FILE,
    load_templates,
    normalise,
    read_prompts,
    training_prompts,
)
from mixture_of_thoughts.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tuning():
    return read_prompts(TUNING_FILE)


@pytest.fixture(scope="module")
def held_out():
    return read_prompts(HELD_OUT_FILE)


@pytest.fixture(scope="module")
def train():
    return training_prompts()


def _head(text: str, k: int = 6) -> tuple[str, ...]:
    words = [w.strip(string.punctuation) for w in normalise(text).split()]
    return tuple(w for w in words if w)[:k]


def test_normalise():
    assert normalise("  Write a  Poem\tabout rust. ") == "write a poem about rust"
    assert normalise("Why?!") == "why"
    assert normalise("Time is like ...") == "time is like"


# ----------------------------------------------------------------------------- held-out


def test_held_out_is_large_spread_and_unique(held_out):
    assert len(held_out) >= 60
    assert all(r.get("split") == "held_out" for r in held_out)
    assert all(isinstance(r.get("category"), str) and r["category"] for r in held_out)
    counts = Counter(r["category"] for r in held_out)
    big = {c for c, k in counts.items() if k >= 6}
    assert len(big) >= 8, counts
    assert len({normalise(r["prompt"]) for r in held_out}) == len(held_out)


def test_held_out_keeps_the_tuning_kinds_and_adds_new_ones(tuning, held_out):
    old = {r["category"] for r in tuning}
    new = {r["category"] for r in held_out}
    assert old <= new
    assert len(new - old) >= 2


def test_held_out_does_not_overlap_tuning(tuning, held_out):
    assert not {normalise(r["prompt"]) for r in tuning} & {normalise(r["prompt"]) for r in held_out}


# ----------------------------------------------------------------------------- training


def test_training_prompts_many_unique_and_spread(train):
    assert len(train) >= 300
    assert len({normalise(r["prompt"]) for r in train}) == len(train)
    assert all(set(r) == {"prompt", "category", "split"} and r["split"] == "train" for r in train)
    assert all("{" not in r["prompt"] and "}" not in r["prompt"] for r in train)
    counts = Counter(r["category"] for r in train)
    assert len(counts) >= 8 and min(counts.values()) >= 20, counts


def test_training_prompts_disjoint_from_tuning_and_held_out(train, tuning, held_out):
    evaluated = {normalise(r["prompt"]) for r in tuning + held_out}
    assert not {normalise(r["prompt"]) for r in train} & evaluated


def test_no_training_prompt_starts_like_an_evaluation_prompt(train, tuning, held_out):
    """A cheap near-duplicate guard: the first six words of a training prompt never open an evaluated one."""
    heads = {_head(r["prompt"]) for r in tuning + held_out}
    clashes = sorted(r["prompt"] for r in train if _head(r["prompt"]) in heads)
    assert not clashes, clashes


def test_template_file_has_enough_of_everything():
    table = load_templates()
    assert len(table) >= 8
    for name, (templates, subjects) in table.items():
        assert len(templates) >= 2 and len(subjects) >= 10, name


def test_training_prompts_deterministic_for_a_seed(train):
    again = training_prompts(seed=0)
    assert again == train
    other = training_prompts(seed=1)
    assert other != train
    assert sorted(r["prompt"] for r in other) == sorted(r["prompt"] for r in train)


def test_training_prompts_n_limit(train):
    first = training_prompts(n=25, seed=0)
    assert first == train[:25]
    assert len(training_prompts(n=len(train))) == len(train)


def test_training_prompts_n_too_large_names_how_many(train):
    with pytest.raises(ConfigError, match=str(len(train))):
        training_prompts(n=len(train) + 1)
    with pytest.raises(ConfigError, match=">= 1"):
        training_prompts(n=0)


def test_training_prompts_do_not_touch_the_global_rng():
    import random

    random.seed(1234)
    expected = random.random()
    random.seed(1234)
    training_prompts(seed=3)
    assert random.random() == expected


# ----------------------------------------------------------------------------- bad templates files


def _write(tmp_path, obj, name="t.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return p


GOOD = {"templates": ["Write about {subject}."], "subjects": ["a kite", "a comet"]}


def test_custom_templates_file(tmp_path):
    p = _write(tmp_path, {"version": 1, "categories": {"misc": GOOD}})
    rows = training_prompts(path=p, seed=0)
    assert sorted(r["prompt"] for r in rows) == ["Write about a comet.", "Write about a kite."]
    assert {r["category"] for r in rows} == {"misc"}


def test_training_prompts_drop_evaluated_prompts(tmp_path, held_out):
    """A templated prompt equal to a held-out one up to case, spacing and end punctuation is left out."""
    assert held_out[0]["prompt"] == "Write the first sentence of a story set on a night train."
    template = "write the FIRST sentence of a story set  on {subject}!"
    p = _write(tmp_path, {"version": 1, "categories": {"s": {"templates": [template],
                                                             "subjects": ["a night train", "a ferry"]}}})
    rows = training_prompts(path=p)
    assert [r["prompt"] for r in rows] == ["write the FIRST sentence of a story set  on a ferry!"]


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "not valid JSON"),
    ({"version": 1, "categories": {}}, "at least one category"),
    ({"version": 2, "categories": {"misc": GOOD}}, "version"),
    ({"version": 1, "categories": {"misc": {"templates": ["Write about it."], "subjects": ["x"]}}}, "{subject}"),
    ({"version": 1, "categories": {"misc": {"templates": [], "subjects": ["x"]}}}, "templates"),
    ({"version": 1, "categories": {"misc": {"templates": ["A {subject}."], "subjects": []}}}, "subjects"),
    ({"version": 1, "categories": {"misc": {"templates": ["A {subject}."], "subjects": ["", "x"]}}}, "subjects"),
    ({"version": 1, "categories": {"misc": ["A {subject}."]}}, "misc"),
])
def test_bad_templates_file_is_a_clear_data_error(tmp_path, content, needle):
    p = _write(tmp_path, content)
    with pytest.raises(DataError) as e:
        training_prompts(path=p)
    assert needle in str(e.value) and str(p) in str(e.value)


def test_missing_templates_file(tmp_path):
    p = tmp_path / "nope.json"
    with pytest.raises(DataError, match="does not exist"):
        training_prompts(path=p)


def test_shipped_paths_exist():
    assert TUNING_FILE.name == "open_ended.jsonl" and TUNING_FILE.is_file()
    assert HELD_OUT_FILE.is_file() and TRAIN_TEMPLATES.is_file()
