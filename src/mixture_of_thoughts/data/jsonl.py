"""JSON Lines files (prompt sets, calibration pairs): one object per non-blank line, clear errors."""

from __future__ import annotations

import json

from ..errors import DataError


def parse_jsonl(text: str, where: str) -> list[tuple[int, object]]:
    """``(line number, parsed value)`` of each non-blank line; a line that is not JSON raises a
    :class:`DataError` naming ``where`` and the line."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{where}, line {lineno}: not valid JSON ({e})") from None
    return rows


def read_text_file(path, where: str, missing_hint: str = "") -> str:
    """The UTF-8 text of ``path``; a missing or unreadable file raises a :class:`DataError` naming
    ``where`` (e.g. ``"prompts file X"``), with ``missing_hint`` after "does not exist"."""
    from pathlib import Path

    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{where} does not exist{missing_hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{where} is not readable UTF-8 text: {e}") from None


def read_json_file(path, where: str):
    """The JSON value in ``path``, with the errors of :func:`read_text_file` and one for invalid JSON."""
    try:
        return json.loads(read_text_file(path, where))
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is not valid JSON: {e}") from None
