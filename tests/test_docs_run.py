"""Every ``mot`` command the README and docs/ show, run.

``test_docs.py`` checks that the command line accepts each shown command; this file runs them, in one
sandbox folder and in the order a reader meets them: ``train.md`` first, since the later pages use the
``runs/`` it makes, then each page top to bottom (``game24.md`` trains before it exports). Paths are the
page's own, relative to the sandbox (``/tmp/x`` becomes ``tmp/x`` there), so ``--out
docs/report-smollm2`` writes a copy there and ``--report-only`` reads the committed settings copied in
beforehand.

A shown command trains for thousands of steps or sweeps a whole grid; here each is cut down by **size
flags appended after it** (argparse keeps the last value): steps, prompt and seed counts, tokens,
budgets, puzzles. ``mot game24 solve`` runs at its shown budget: it exits 1 when it finds no solution,
so the shown puzzle must be solved. Nothing else changes: the same verbs, flags, models and files.
``SIZES`` lists every cut; a command whose verb has no entry runs exactly as shown. ``mot serve`` runs
in a subprocess on a free port until its page answers. The runs need ``MOT_DATA_DIR`` (the corpus and
Game of 24's puzzles), which CI sets. The files a page assumes its reader has are made first: a text of one's own, the
committed SmolLM2 report, pretrained.md's tiny random MoE models and prompt sets, and its synthetic
``mot graft`` run directory.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from mixture_of_thoughts.cli import main
from test_cost import RECORDS
from test_cost import _run_dir as graft_run_dir
from test_docs import COMMANDS, ROOT, shown_commands
from test_hf_experts import tiny_moe

ORDER = ["docs/commands/train.md", "docs/commands/think.md", "docs/commands/pretrained.md",
         "docs/commands/diffusion.md", "docs/commands/serve.md", "docs/commands/compare.md", "docs/commands/game24.md",
         "README.md"]
RUNS = [(page, c) for page in ORDER for c in shown_commands((ROOT / page).read_text())]

# verb -> the size flags appended to it (a verb is the first word, or two for `compare` and `game24`)
SMALL_LM = ["--max-new-tokens", "6"]
SIZES = {
    "train": ["--max-steps", "3", "--eval-interval", "3", "--eval-batches", "1"],
    "graft": ["--steps", "2", "--eval-windows", "2"],
    "think": ["--max-new-tokens", "24"],
    "sample": ["--max-new-tokens", "24"],
    "diffuse": ["--length", "48"],
    "vary": SMALL_LM,
    "compare char": ["--steps", "3", "--prompts", "2", "--seeds", "1", "--branches", "2", "--new-tokens", "8"],
    "compare lm": ["--limit", "1", "--seeds", "1", "--branches", "2", "--max-new-tokens", "4"],
    "branch-data": ["--prompts", "4", "--responses", "3", "--max-new-tokens", "12"],
    "train-branches": ["--max-steps", "2"],
    "game24 train": ["--steps", "3"],
    "game24 train-value": ["--epochs", "1", "--limit", "10"],
    "game24 eval": ["--limit", "1", "--budgets", "60"],
}


def verb(argv: list[str]) -> str:
    return " ".join(argv[:2]) if argv[0] in ("compare", "game24") else argv[0]


def words(command: str, tiny_llama: Path) -> list[str]:
    """A shown command's argv, with its placeholder model filled in and ``/tmp/...`` kept in the sandbox."""
    argv = shlex.split(command, comments=True)[1:]
    return [str(tiny_llama) if w == "TINY_LLAMA_DIR" else w[1:] if w.startswith("/tmp/") else w for w in argv]


def shrunk(command: str, tiny_llama: Path) -> list[str]:
    """The argv a shown command runs with here: its own words, then its size flags."""
    argv = words(command, tiny_llama)
    v = verb(argv)
    if v == "train" and "--resume" in argv:  # continue the 3-step run as shown, or train on to a new total
        return argv + (["--max-steps", "5"] if "--max-steps" in argv else [])
    if v == "compare lm" and ("--report-only" in argv or "--quick" in argv):
        return argv
    if v == "compare char" and "--quick" in argv:
        return argv
    if v == "game24 train" and "--init" in argv:  # continue the 3-step run shown before it to a new total
        return argv + ["--steps", "5"]
    if v == "game24 train" and {"modes", "codes"} & set(argv):  # the answers of 20 puzzles, not 1,162
        return argv + SIZES[v] + ["--limit", "20"]
    # synthetic puzzles with numbers up to 14, not 20: the same code, a ninth of the solving (the value's
    # extra multisets up to 13, the least it takes)
    least = "13" if v == "game24 train-value" else "14"
    more = ["--synthetic-up-to", least] if "--synthetic-up-to" in argv else []
    return argv + more + SIZES.get(v, [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``mot serve ...`` on a free port: (0, page) once its front page answers, else (1, its output)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mixture_of_thoughts.cli", *argv, "--port", str(port)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    return 0, r.read().decode()
            except OSError:
                time.sleep(0.5)
        proc.kill()
        return 1, proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=30)


class Tour:
    """The sandbox and the result of each command run so far (each runs once, in ``RUNS`` order)."""

    def __init__(self, root: Path, tiny_llama: Path):
        self.root, self.tiny_llama, self.done = root, tiny_llama, {}

    def result(self, i: int, capsys) -> tuple[int, str, str, list[str]]:
        """``(exit code, stdout, stderr, argv)`` of ``RUNS[i]`` (running the ones before it first, but for
        the slow ones: no later command reads what they write, so they run only when asked for)."""
        for j in range(i + 1):
            if j in self.done or (j in SLOW and j != i):
                continue
            seen = next((k for k in range(j) if k in self.done and RUNS[k][1] == RUNS[j][1]), None)
            # a page repeating an earlier page's command (diffusion.md's training) means the same run
            self.done[j] = self.done[seen] if seen is not None else self._run(RUNS[j][1], capsys)
        return self.done[i]

    def _run(self, command: str, capsys) -> tuple[int, str, str, list[str]]:
        argv = shrunk(command, self.tiny_llama)
        if argv[0] == "serve":
            rc, out = _serve(argv, self.root)
            return rc, out, "", argv
        cwd, threads = os.getcwd(), torch.get_num_threads()
        os.chdir(self.root)
        torch.set_num_threads(os.cpu_count() or 1)  # as the command line runs (the suite uses one thread)
        try:
            rc = main(argv)
        finally:
            os.chdir(cwd)
            torch.set_num_threads(threads)
        cap = capsys.readouterr()
        return rc, cap.out, cap.err, argv


@pytest.fixture(scope="module")
def tour(tmp_path_factory, save_hf_dir, make_tiny_llama, make_hf_char_tokenizer):
    data = os.environ.get("MOT_DATA_DIR")
    if not data or not all((Path(data) / f).is_file() for f in ("tinyshakespeare.txt", "game24/24.csv")):
        pytest.skip("MOT_DATA_DIR does not hold tinyshakespeare.txt and game24/24.csv (CI sets it)")
    root = tmp_path_factory.mktemp("docs-tour")
    # the files the pages assume a reader has: a text of their own, and the committed reports to rewrite
    (root / "my.txt").write_text((Path(data) / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000],
                                 encoding="utf-8")
    shutil.copytree(ROOT / "docs" / "report-smollm2", root / "docs" / "report-smollm2")
    tok = make_hf_char_tokenizer()
    # pretrained.md: tiny random MoE models saved locally, two prompt sets, a synthetic graft run
    for family in ("mixtral", "olmoe"):
        tiny_moe(family).save_pretrained(root / f"tiny-{family}")
        tok.save_pretrained(root / f"tiny-{family}")
    (root / "a.txt").write_text("the cat sat on the mat.\na red dot.\n", encoding="utf-8")
    (root / "b.txt").write_text("ten rats ate cod.\nnest and tea.\n", encoding="utf-8")
    (root / "runs").mkdir()
    graft_run_dir(root / "runs", RECORDS, name="graft-demo")
    return Tour(root, save_hf_dir(make_tiny_llama(len(tok)), tok, name="tiny_llama_docs"))


def test_every_shown_command_is_in_the_tour():
    assert {c for _, c in COMMANDS} == {c for _, c in RUNS}, "a page with commands is missing from ORDER"


def test_the_cut_is_only_sizes(tmp_path):
    """Each shrunk command starts with the shown command's own words."""
    for _, c in RUNS:
        shown = words(c, tmp_path)
        assert len(shown) == len(shlex.split(c, comments=True)) - 1
        assert shrunk(c, tmp_path)[:len(shown)] == shown
    assert set(SIZES) <= {verb(shrunk(c, tmp_path)) for _, c in RUNS}, "a size rule no command uses"
    assert all(any(c.startswith(s) for _, c in RUNS) for s in SLOW_COMMANDS), "a slow rule names no shown command"


# shown commands that run long even cut down, whose output no later command reads, and whose code path a
# default test runs too: `make test-all` runs them. The wide grid (about 80 settings of the real SmolLM2,
# 70 s); the tuning grid (34 s; the held-out grid below it runs the same path, and --report-only reads the
# committed report the tour copies); the character comparisons (24-25 s each; tests/test_compare.py runs
# the quick pipeline). Four of the denoiser's validation trainings (4 s each here; the tour runs the
# adapted one the eval reads, the annealed and tied one, and MGDM's own; tests/test_mgdm.py the rest).
SLOW_COMMANDS = ("mot compare lm --model smollm2 --grid wide",
                 "mot compare lm --model smollm2 --out docs/report-smollm2 ", "mot compare char ",
                 "mot game24 train --kind mgdm --steps 1500", "mot game24 train --kind mgdm --adapt --suffix",
                 "mot game24 train --kind mgdm --adapt --anneal 750 --steps",
                 "mot game24 train --kind mgdm --tie-values")
SLOW = {i for i, (_, c) in enumerate(RUNS) if c.startswith(SLOW_COMMANDS)}


@pytest.mark.parametrize("i", [pytest.param(i, marks=pytest.mark.slow) if i in SLOW else i for i in range(len(RUNS))],
                         ids=[f"{p}:{c[:50]}" for p, c in RUNS])
def test_the_shown_command_runs(tour, i, capsys):
    page, command = RUNS[i]
    rc, out, err, argv = tour.result(i, capsys)
    assert rc == 0, f"{page}: `{shlex.join(['mot', *argv])}` exited {rc}:\n{(out + err)[-3000:]}"
    if "--out" in argv:  # what it says it writes is there
        assert (tour.root / argv[len(argv) - argv[::-1].index("--out")]).exists()
    if "--json" in argv:
        json.loads(out)
    if argv[0] == "serve":
        assert "<html" in out.lower()


def python_blocks(text: str) -> list[str]:
    """The page's ``python`` code blocks, each a whole program."""
    out, block = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if block is None and line.strip() == "```python":
                block = []
            elif block is not None:
                out.append("\n".join(block))
                block = None
            continue
        if block is not None:
            block.append(line)
    return out


# pages whose python blocks are whole programs (pretrained.md's is a fragment: a hub model, `moe_model`)
PROGRAMS = [(page, i, code) for page in ("README.md", "docs/architecture.md")
            for i, code in enumerate(python_blocks((ROOT / page).read_text()))]


def test_the_python_examples_are_found():
    assert len(PROGRAMS) >= 2 and python_blocks("```python\na = 1\n```\n```bash\nb\n```\n") == ["a = 1"]


@pytest.mark.parametrize("page,i,code", PROGRAMS, ids=[f"{p}:python-{i}" for p, i, _ in PROGRAMS])
def test_the_python_example_runs(page, i, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_example_{i}"}
    exec(compile(code, f"{page}:python-{i}", "exec"), namespace)  # noqa: S102 (our own docs)
    if "print(" in code:
        assert capsys.readouterr().out.strip()
