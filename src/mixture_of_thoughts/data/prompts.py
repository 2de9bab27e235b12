"""The three open-ended prompt sets: tuning, held-out, and templated training prompts.

* **tuning** (``assets/prompts/open_ended.jsonl``): the prompts methods are tuned and compared on;
* **held-out** (``assets/prompts/held_out.jsonl``, every row ``"split": "held_out"``): written
  before any run on them, kept for the final numbers only;
* **training** (:func:`training_prompts`): every template x subject of
  ``assets/prompts/train_templates.json`` (``{"version": 1, "categories": {name: {"templates":
  ["... {subject} ..."], "subjects": [...]}}}``), minus any that equals a tuning or held-out prompt
  once normalised (:func:`normalise`), shuffled by its own ``random.Random(seed)``.

All three are JSON rows ``{"prompt", "category", ...}``; the prompt files are JSON Lines
(:func:`~mixture_of_thoughts.data.jsonl.parse_jsonl`).
"""

from __future__ import annotations

import random
import re
import string
from pathlib import Path

from ..errors import ConfigError, DataError
from .jsonl import parse_jsonl, read_json_file, read_text_file

PROMPTS_DIR = Path(__file__).parent.parent / "assets" / "prompts"
TUNING_FILE = PROMPTS_DIR / "open_ended.jsonl"
HELD_OUT_FILE = PROMPTS_DIR / "held_out.jsonl"
TRAIN_TEMPLATES = PROMPTS_DIR / "train_templates.json"
SLOT = "{subject}"
PROMPT_SETS = {"tuning": TUNING_FILE, "held-out": HELD_OUT_FILE}  # names accepted wherever a prompts file is


def resolve_prompt_set(path: str | Path | None) -> Path:
    """A prompt set's file: ``tuning`` (also ``None``), ``held-out``, or any JSONL path."""
    if path is None:
        return TUNING_FILE
    return PROMPT_SETS.get(str(path), Path(path))


def normalise(text: str) -> str:
    """``text`` lowercased, runs of whitespace made one space, trailing punctuation stripped."""
    return re.sub(r"\s+", " ", text.lower()).strip().rstrip(string.punctuation + " ")


def read_prompts(path: str | Path) -> list[dict]:
    """The rows of a JSONL prompt file; each needs a non-empty ``"prompt"`` string (other fields are kept).

    Raises:
        DataError: a missing or unreadable file, a line that is not JSON or has no prompt, no row at all.
    """
    p = Path(path)
    where = f"prompts file {p}"
    text = read_text_file(p, where)
    rows = []
    for i, row in parse_jsonl(text, where):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f'{where}, line {i}: needs a non-empty "prompt" string')
        rows.append(row)
    if not rows:
        raise DataError(f"{where} holds no prompt")
    return rows


def _strings(value, where: str, what: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: {what} must be a non-empty list of strings")
    if not all(isinstance(s, str) and s.strip() for s in value):
        raise DataError(f"{where}: {what} must hold only non-empty strings")
    return value


def load_templates(path: str | Path | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """``category -> (templates, subjects)`` of a templates file (default the shipped one), in file order.

    Raises:
        DataError: a missing or unreadable file, not JSON, a version other than 1, no category, a
            category without a non-empty ``"templates"`` or ``"subjects"`` list, a template without
            ``{subject}``.
    """
    p = Path(path) if path is not None else TRAIN_TEMPLATES
    where = f"templates file {p}"
    raw = read_json_file(p, where)
    if not isinstance(raw, dict) or not isinstance(raw.get("categories"), dict) or not raw["categories"]:
        raise DataError(f'{where} must hold {{"version": 1, "categories": {{name: {{"templates": [...], '
                        f'"subjects": [...]}}}}}} with at least one category')
    if raw.get("version") != 1:
        raise DataError(f'{where}: "version" must be 1, got {raw.get("version")!r}')
    out = {}
    for name, entry in raw["categories"].items():
        if not isinstance(entry, dict):
            raise DataError(f'{where}: category {name!r} must be an object with "templates" and "subjects"')
        templates = _strings(entry.get("templates"), where, f'the "templates" of category {name!r}')
        subjects = _strings(entry.get("subjects"), where, f'the "subjects" of category {name!r}')
        for t in templates:
            if SLOT not in t:
                raise DataError(f"{where}: template {t!r} of category {name!r} has no {SLOT} where the subject goes")
        out[name] = (templates, subjects)
    return out


def training_prompts(n: int | None = None, seed: int = 0, path: str | Path | None = None) -> list[dict]:
    """Training rows ``{"prompt", "category", "split": "train"}``: every template x subject of the
    templates file at ``path`` (default the shipped one), less duplicates and any prompt equal
    (:func:`normalise`) to a tuning or held-out prompt, shuffled by ``random.Random(seed)``; the first
    ``n`` (all when ``None``). The same ``seed`` gives the same list.

    Raises:
        DataError: a bad templates file (see :func:`load_templates`) or prompt file.
        ConfigError: ``n`` below 1 or above the number of prompts there are.
    """
    if n is not None and n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    taken = {normalise(r["prompt"]) for f in (TUNING_FILE, HELD_OUT_FILE) for r in read_prompts(f)}
    rows = []
    for category, (templates, subjects) in load_templates(path).items():
        for t in templates:
            for s in subjects:
                prompt = t.replace(SLOT, s)
                key = normalise(prompt)
                if key not in taken:
                    taken.add(key)
                    rows.append({"prompt": prompt, "category": category, "split": "train"})
    if n is not None and n > len(rows):
        raise ConfigError(f"asked for {n} training prompts, but the templates give only {len(rows)}")
    random.Random(seed).shuffle(rows)
    return rows[:n] if n is not None else rows
