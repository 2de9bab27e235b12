"""Checkpoints: a directory with ``model.safetensors``, ``config.json``, ``tokenizer.json`` and,
for resuming, ``trainer_state.pt``.

Weights are safetensors and the trainer state is loaded with ``weights_only=True``, so loading a
checkpoint never unpickles code. A checkpoint is written under a temporary name and renamed into
place, so a crash never leaves a half-written one. The model is rebuilt from ``config.json``, never
from defaults; weights whose shapes disagree with it are refused with a clear error.

A *run directory* (what ``mot train --out`` makes) holds ``latest/`` and ``best/`` checkpoints and
``metrics.jsonl``; commands that take a run accept either the run or one checkpoint inside it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from ..config import ModelConfig
from ..data.tokenizer import CharTokenizer
from ..errors import CheckpointError, ConfigError
from ..models.transformer import Transformer

FORMAT = "mixture-of-thoughts/1"
FILES = ("model.safetensors", "config.json", "tokenizer.json")
TIED = (("wte.weight", "lm_head.weight"),)


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    model: Transformer
    tokenizer: CharTokenizer
    objective: str  # "ar" or "diffusion"
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)  # step, val_loss, train config, data, ...


def save_checkpoint(path: str | Path, model: Transformer, tokenizer: CharTokenizer, *, objective: str,
                    meta: dict[str, Any] | None = None, trainer_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory at ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        model = getattr(model, "module", model)  # unwrap DDP
        save_model(model, str(tmp / "model.safetensors"))
        cfg = {"format": FORMAT, "objective": objective, "model": model.config.to_dict(), **(meta or {})}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        tokenizer.save(tmp / "tokenizer.json")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        for f in tmp.iterdir():  # durable before the rename makes it visible
            os.chmod(f, 0o644)  # safetensors writes owner-only files; a checkpoint is ordinary data
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:  # put the previous checkpoint back rather than leave it hidden
                os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or is_checkpoint(path / "latest") or is_checkpoint(path / "best")


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """The checkpoint directory that ``path`` names: itself, or ``which`` (best/latest) inside a run."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; give a run directory made by `mot train` or a checkpoint in it")
    if not p.is_dir():
        raise CheckpointError(f"{p} is not a directory; give a run directory made by `mot train`")
    if (p / "config.json").exists() or (p / "model.safetensors").exists():
        return p
    order = [which] + [w for w in ("best", "latest") if w != which]
    for w in order:
        if (p / w).is_dir():
            return p / w
    raise CheckpointError(f"{p} is not a run or checkpoint directory (no config.json, best/ or latest/ in it)")


def read_config(ckpt: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {ckpt} has no config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: config.json is corrupt ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or "model" not in cfg:
        raise CheckpointError(f"checkpoint {ckpt}: config.json is not a {FORMAT} checkpoint config")
    return cfg


def load_checkpoint(path: str | Path, *, which: str = "best", device: str | torch.device = "cpu",
                    expect: str | None = None) -> Checkpoint:
    """Load a checkpoint (or the ``which`` checkpoint of a run).

    Args:
        path: a run directory or a checkpoint directory.
        which: ``"best"`` or ``"latest"`` when ``path`` is a run.
        device: where to put the model.
        expect: ``"ar"`` or ``"diffusion"`` to refuse the other kind with a clear error.
    """
    ckpt = resolve_checkpoint(path, which)
    missing = [f for f in FILES if not (ckpt / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt} is incomplete: missing {', '.join(missing)}")
    cfg = read_config(ckpt)
    objective = cfg.get("objective", "ar")
    if expect is not None and objective != expect:
        need = {"ar": "an autoregressive run (mot train)",
                "diffusion": "a diffusion run (mot train --objective diffusion)"}
        raise CheckpointError(f"{path} is a {objective} model but this command needs {need[expect]}")
    try:
        model_cfg = ModelConfig.from_dict(cfg["model"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: invalid model config ({e})") from None
    tokenizer = CharTokenizer.load(ckpt / "tokenizer.json")
    model = Transformer(model_cfg)
    try:
        state = load_file(str(ckpt / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: model.safetensors is corrupt ({e})") from None
    expected = model.state_dict()
    for a, b in TIED:  # tied weights are saved once, under either name
        if a in state and b not in state:
            state[b] = state[a]
        elif b in state and a not in state:
            state[a] = state[b]
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in config.json"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise CheckpointError(f"checkpoint {ckpt}: weights disagree with config.json: " + "; ".join(problems[:5]))
    model.load_state_dict(state)
    model.to(device).eval()
    return Checkpoint(model, tokenizer, objective, ckpt, {k: v for k, v in cfg.items() if k != "model"})


def export_half(run: str | Path, dest: str | Path, *, which: str = "best", force: bool = False) -> Path:
    """A half-precision copy of a run's checkpoint at ``dest`` (half the size, what the package ships).

    Weights are stored as float16 and load as float32 (:func:`load_checkpoint` builds the model in
    float32 and copies into it); there is no trainer state, so the copy is for use, not for resuming.
    """
    dest = Path(dest)
    if dest.exists() and not force:
        raise CheckpointError(f"{dest} exists; pass --force to replace it")
    ck = load_checkpoint(run, which=which)
    ck.model.half()
    meta = {k: v for k, v in ck.meta.items() if k not in ("format", "objective")}
    return save_checkpoint(dest, ck.model, ck.tokenizer, objective=ck.objective,
                           meta={**meta, "exported_from": str(ck.path), "weights": "float16"})


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    f = ckpt / "trainer_state.pt"
    if not f.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no trainer_state.pt, so training cannot resume from it")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt pickle data of any kind
        raise CheckpointError(f"checkpoint {ckpt}: trainer_state.pt is corrupt ({e})") from None
