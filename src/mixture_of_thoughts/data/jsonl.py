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
