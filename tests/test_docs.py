"""The README and docs/: every ``mot`` command they show is one the CLI accepts, every link resolves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mixture_of_thoughts.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "docs" / "architecture.md",
         *sorted((ROOT / "docs" / "commands").glob("*.md"))]


def shown_commands(text: str) -> list[str]:
    """Every ``mot ...`` command of the page: in its ``bash`` blocks, and the ``$ mot ...`` lines of its
    transcripts (``text`` blocks of a command and its output), continued lines joined, comments cut."""
    out, block, lines, open_cmd = [], None, [], None
    for line in text.splitlines():
        if line.startswith("```"):
            block = ("shell" if line.strip() in ("```bash", "```sh") else "other") if block is None else None
            continue
        if block == "shell":
            lines.append(line)
        elif block == "other" and (open_cmd is not None or line.startswith("$ mot ")):
            open_cmd = line if open_cmd is None else open_cmd + "\n" + line  # a quoted argument spans lines
            if _complete(open_cmd):
                lines.append(open_cmd)
                open_cmd = None
    rows = "\n".join(lines).replace("\\\n", " ").splitlines()
    i = 0
    while i < len(rows):
        line = rows[i].strip()
        line = line[2:] if line.startswith("$ ") else line
        i += 1
        if not line.startswith("mot "):
            continue
        while i < len(rows) and not _complete(line):  # a quoted argument spans lines
            line, i = line + "\n" + rows[i], i + 1
        out.append(line)
    return out


def _complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def _argv(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    return words[1:]


def test_the_extractor_joins_continued_lines_and_cuts_comments():
    page = ("text\n```bash\nmot think --prompt \"a # b\" \\\n    --branches 8   # eight\nls\n"
            "$ mot renoise r --text \"A:\nB.\" --noise 0.3\n```\n```text\nmot no\n$ mot cost --tokens 1B\n"
            "output of it\n```\n")
    cmds = shown_commands(page)
    assert cmds == ['mot think --prompt "a # b"      --branches 8   # eight',
                    'mot renoise r --text "A:\nB." --noise 0.3', "mot cost --tokens 1B"]
    assert _argv(cmds[0]) == ["think", "--prompt", "a # b", "--branches", "8"]
    assert _argv(cmds[1])[:3] == ["renoise", "r", "--text"] and _argv(cmds[1])[3] == "A:\nB."


COMMANDS = [(page.relative_to(ROOT).as_posix(), c) for page in PAGES for c in shown_commands(page.read_text())]


def test_the_pages_show_commands():
    assert len(COMMANDS) > 50
    assert {p for p, _ in COMMANDS} >= {"README.md", "docs/commands/game24.md", "docs/commands/think.md",
                                        "docs/commands/pretrained.md"}


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_every_shown_command_is_accepted_by_the_cli(page, command):
    parser = build_parser()
    try:
        parser.parse_args(_argv(command))
    except SystemExit as e:
        pytest.fail(f"{page}: `{command}` is refused by the command line (exit {e.code})")


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_resolves(page):
    missing = [t for t in LINK.findall(page.read_text()) if "://" not in t and not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_readme_answers_what_try_and_found_on_its_first_screen():
    lines = (ROOT / "README.md").read_text().splitlines()
    first = "\n".join(lines[:60])
    for heading in ("## Quick start", "## Try it", "## What we found"):
        assert heading in first
    assert "make demo" in first and "make test" in first
