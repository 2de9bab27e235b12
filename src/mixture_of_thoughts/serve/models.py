"""The models a playground serves, loaded once when the server starts.

Models come from the command line only (``mot serve --model RUN ...``): a request names one of the
loaded models by its short name and can never make the server open a path. The shipped
Shakespeare MoT model is always first; then each ``--model`` in order: a character run or
checkpoint directory (autoregressive, dense or MoT, or a masked-diffusion denoiser), or a
pretrained causal LM that ``mot think --model`` takes (``smollm2``, a grafted or Hugging Face
directory), grafted on the fly as ``mot think`` does.

Each model has a lock: a generation holds it while it runs, because the streaming code attaches a
forward hook to the model for the duration of one request (see :mod:`.generate`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SHIPPED = Path(__file__).parent.parent / "assets" / "shakespeare-mot"
SHIPPED_NAME = "shakespeare-mot"
CHECKPOINT_NAMES = ("best", "latest")  # a checkpoint inside a run is named after the run


@dataclass
class ServedModel:
    """A loaded model and what the page needs to know about it.

    Attributes:
        name: the short name requests use.
        kind: ``"ar"`` (character autoregressive), ``"diffusion"`` (character masked diffusion) or
            ``"hf"`` (a grafted Hugging Face causal LM).
        model, tokenizer: as ``mot think`` / ``mot diffuse`` load them.
        source: where it came from, for display (the path or registry name given on the command line).
        thought_layers: indices of the thought (MoT) layers; empty for a dense model.
        n_branches: thought branches E per layer (0 for a dense model).
        chat: hf only: prompts go through the chat template.
    """

    name: str
    kind: str
    model: Any
    tokenizer: Any
    source: str
    thought_layers: list[int] = field(default_factory=list)
    n_branches: int = 0
    chat: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def describe(self) -> dict:
        """The JSON the page reads from ``/api/models``."""
        d = {"name": self.name, "kind": self.kind, "source": self.source, "thought_layers": self.thought_layers,
             "n_branches": self.n_branches}
        if self.kind in ("ar", "diffusion"):
            d["block_size"] = self.model.config.block_size
            d["vocab"] = "".join(self.tokenizer.chars)
        return d


def _char_model(name: str, path: Path, device) -> ServedModel:
    from ..device import resolve_device
    from ..training.checkpoint import load_checkpoint

    ck = load_checkpoint(path, device=resolve_device(device))
    cfg = ck.model.config
    layers = [b.layer_idx for b in ck.model.blocks if b.is_thought]
    E = cfg.thoughts.n_branches if layers else 0
    return ServedModel(name, "diffusion" if ck.objective == "diffusion" else "ar", ck.model.eval(), ck.tokenizer,
                       str(path), layers, E)


def _hf_model(name: str, spec: str, device) -> ServedModel:
    from ..hf.generate import uses_chat
    from ..hf.graft import graft
    from ..hf.registry import load_pretrained

    model, tok, _ = load_pretrained(spec, device)
    if not hasattr(model, "mot_graft"):
        graft(model, "all")  # training-free, as `mot think --model NAME` grafts on the fly
    layers = list(model.mot_graft.spec.layers)
    E = model.mot_graft.spec.thoughts.n_branches
    return ServedModel(name, "hf", model, tok, spec, layers, E, chat=uses_chat(tok, None))


def _is_char_checkpoint(p: Path) -> bool:
    from ..training.checkpoint import is_checkpoint, is_run

    if not p.is_dir():
        return False
    try:
        import json

        hf = "model_type" in json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        hf = False
    return is_run(p) or (is_checkpoint(p) and not hf)


def _short_name(spec: str) -> str:
    p = Path(spec)
    if p.name in CHECKPOINT_NAMES and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name or spec


def load_models(specs: list[str] | None = None, *, device: str | None = None,
                include_shipped: bool = True) -> dict[str, ServedModel]:
    """Load the shipped model (unless ``include_shipped`` is false) and every spec, in order.

    Args:
        specs: run or checkpoint directories, or pretrained model names/directories (``smollm2``).
        device: as ``mot think --device`` (default: the best available).
    Returns:
        ``{name: ServedModel}`` in the order the page lists them. Names are made unique with ``-2``, ``-3``...
    Raises:
        ConfigError / CheckpointError: a spec that is not a model, with a one-line message.
    """
    out: dict[str, ServedModel] = {}

    def add(name: str, load):
        base, i = name, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out[name] = load(name)

    if include_shipped:
        add(SHIPPED_NAME, lambda n: _char_model(n, SHIPPED, device))
    for spec in specs or []:
        p = Path(spec).expanduser()
        if _is_char_checkpoint(p):
            add(_short_name(spec), lambda n, p=p: _char_model(n, p, device))
        elif p.exists() and not p.is_dir():
            raise ConfigError(f"--model {spec}: a file, not a run or model directory")
        else:
            add(_short_name(spec), lambda n, s=spec: _hf_model(n, s, device))
    if not out:
        raise ConfigError("no model to serve")
    return out
