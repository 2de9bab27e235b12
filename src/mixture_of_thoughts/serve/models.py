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

from ..api import SHIPPED
from ..errors import ConfigError

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


def _served(name: str, spec, device) -> ServedModel:
    """A model as :func:`..api.load` loads it (a pretrained one grafted on all layers, as ``mot think``)."""
    from ..api import load

    th = load(spec, device=device)
    chat = False
    if th.kind == "hf":
        from ..hf.generate import uses_chat

        chat = uses_chat(th.tokenizer, None)
    return ServedModel(name, th.kind, th.model, th.tokenizer, str(spec), th.thought_layers, th.n_branches, chat=chat)


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
        add(SHIPPED_NAME, lambda n: _served(n, SHIPPED, device))
    for spec in specs or []:
        p = Path(spec).expanduser()
        if p.exists() and not p.is_dir():
            raise ConfigError(f"--model {spec}: a file, not a run or model directory")
        add(_short_name(spec), lambda n, s=spec: _served(n, s, device))
    if not out:
        raise ConfigError("no model to serve")
    return out
