"""The Game of 24 models that ship inside the package, and the committed report they produced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixture_of_thoughts.experiments import game24_eval as E
from mixture_of_thoughts.tasks import game24 as g
from mixture_of_thoughts.training.checkpoint import load_checkpoint

REPORT = Path(__file__).parent.parent / "docs" / "report-game24"


@pytest.mark.parametrize("kind, objective, thoughts", [("ar", "ar", False), ("mot", "ar", True),
                                                        ("diffusion", "diffusion", False)])
def test_shipped_models_load_and_are_small(kind, objective, thoughts):
    path = E.SHIPPED / kind
    ck = load_checkpoint(path)
    assert ck.objective == objective and ck.model.config.has_thoughts == thoughts
    assert sum(p.numel() for p in ck.model.parameters()) <= 10_000_000  # the limit
    assert (path / "model.safetensors").stat().st_size < 12 * 2 ** 20
    recorded = json.loads((path / "RECORDED.json").read_text())
    assert recorded["val_loss"] == pytest.approx(ck.meta["val_loss"]) and recorded["trained_with"].startswith("mot ")


def test_shipped_modes_are_codes_on_the_shipped_model(capsys):
    """The shipped modes: the shipped AR model with 8 mode codes, inside the issue's limits; solve uses it."""
    from mixture_of_thoughts.cli import main
    from mixture_of_thoughts.tasks import modes as MD

    ck, ar = load_checkpoint(E.SHIPPED / "modes"), load_checkpoint(E.SHIPPED / "ar")
    assert MD.modes_of(ck) == 8 and MD.code_base(ck) == ar.tokenizer.vocab_size
    assert ck.tokenizer.chars[:ar.tokenizer.vocab_size] == ar.tokenizer.chars and not ck.model.config.has_thoughts
    assert sum(p.numel() for p in ck.model.parameters()) <= 10_000_000
    recorded = json.loads((E.SHIPPED / "modes" / "RECORDED.json").read_text())
    assert recorded["val_mixture_nll"] == pytest.approx(ck.meta["val_mixture_nll"])
    assert recorded["step"] == ck.meta["step"]
    assert main(["game24", "solve", "4 5 6 10", "--method", "modes@0.7", "--budget", "1800", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["positions"] <= 1800 and out["solutions"]
    assert all(g.verify((4, 5, 6, 10), g.answer_of(t)) for t in out["solutions"])


def test_solve_works_with_the_shipped_model(capsys):
    from mixture_of_thoughts.cli import main

    assert main(["game24", "solve", "4 5 6 10", "--method", "beam", "--budget", "1800"]) == 0
    out = capsys.readouterr().out
    answers = [line.strip() for line in out.splitlines()[1:]]
    assert answers and all(g.verify((4, 5, 6, 10), a.removesuffix(" = 24")) for a in answers)


def test_solve_searches_with_the_learned_value_by_default(capsys):
    """Sampling without replacement with its beam pruned by the value is the best method on the validation
    rows, so solve uses it unless told."""
    from mixture_of_thoughts.cli import main

    assert main(["game24", "solve", "4 5 6 10", "--budget", "1800", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "distinct-value@0.7" and out["positions"] <= 1800
    assert out["solutions"] and all(g.verify((4, 5, 6, 10), g.answer_of(t)) for t in out["solutions"])


@pytest.mark.parametrize("method", ["sample", "beam", "beam-value", "distinct@0.7", "distinct-value@0.7", "modes@0.5"])
def test_the_committed_report_is_what_the_shipped_models_do(method):
    """The first test puzzles, rerun: the same solutions found after the same positions as recorded."""
    saved = json.loads((REPORT / "methods" / f"{method.replace('@', '_at_')}.json").read_text())
    key = saved["key"]
    cfg = E.Game24EvalConfig(methods=(method,), budgets=(key["budget"],), seed=key["seed"],
                             temperature=key["temperature"], **({"width": key["width"], "proposals": key["proposals"]}
                                                                if method.startswith("beam") else {}))
    models = E.load_line_models(cfg)
    assert E.Models.fingerprint(models, cfg.specs[0]) == key["models"]
    for rec in saved["puzzles"][:2]:
        r = E.run_method(cfg.specs[0], tuple(rec["puzzle"]), key["budget"], models=models, cfg=cfg)
        assert r.found == rec["found"] and r.positions == rec["positions"]
