"""Live branch panels (``mot think`` on a terminal)."""

from __future__ import annotations

import io

import torch
from rich.console import Console

from mixture_of_thoughts.cli import live


def test_live_panels_show_each_branch_and_stop_growing_finished_ones(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(live, "_console", lambda: Console(file=buf, force_terminal=True, width=100))
    letters = "abcdefgh"
    with live.live_branches(lambda ids: "".join(letters[i] for i in ids), 2, ["branch 0", "branch 1"]) as on_token:
        on_token(0, torch.tensor([0, 1]), torch.tensor([False, False]))
        on_token(1, torch.tensor([2, 3]), torch.tensor([True, False]))
        on_token(2, torch.tensor([4, 5]), torch.tensor([True, False]))  # row 0 is done: its token is ignored
        texts = live.last_texts(on_token)
    assert texts == ["ac", "bdf"]
    out = buf.getvalue()
    assert "branch 0" in out and "branch 1" in out


def test_live_display_only_on_a_terminal_without_json(monkeypatch):
    class Args:
        json = False

    monkeypatch.setattr("sys.stdout", io.StringIO())  # piped
    assert not live.wanted(Args())
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    assert live.wanted(Args())
    Args.json = True
    assert not live.wanted(Args())
