"""One way to load a model and think with it: ``mixture_of_thoughts.load(spec).think(prompt)``.

``spec`` is what ``mot think``, ``mot serve`` and ``mot vary`` take:

* nothing: the Shakespeare MoT model that ships in the package;
* a character run or checkpoint directory (``mot train --out``): autoregressive (dense or MoT) or
  a masked-diffusion denoiser;
* a pretrained causal LM: ``smollm2`` (offline), a grafted or Hugging Face directory, or a hub id.
  An ungrafted one is grafted on the fly, training-free, on ``graft`` layers (``"all"``, ``"lower"``,
  ``"upper"``, ``"top4"``, ``"0,2,5"``: :func:`.config.layer_set`); ``graft=None`` keeps it plain
  (its branches then differ by sampling only).

The returned :class:`Thinker` calls the same library functions the command line does
(:func:`.generation.autoregressive.think` for character models, :func:`.hf.generate.think_hf` for
pretrained ones), so a branch it returns is the text ``mot think`` prints for the same settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

SHIPPED = Path(__file__).parent / "assets" / "shakespeare-mot"
KINDS = ("ar", "diffusion", "hf")


@dataclass
class Thinker:
    """A loaded model ready to think.

    Attributes:
        kind: ``"ar"`` (a character model, dense or MoT), ``"diffusion"`` (a character denoiser) or
            ``"hf"`` (a pretrained causal LM, grafted unless loaded with ``graft=None``).
        model, tokenizer: the model and its tokenizer.
        source: what was loaded (the path, or the registry name and where it came from).
        grafted_now: a pretrained model grafted by :func:`load` (not a saved graft).
    """

    kind: str
    model: Any
    tokenizer: Any
    source: str
    grafted_now: bool = False

    @property
    def thought_layers(self) -> list[int]:
        """Indices of the layers with thought branches (empty for a dense or plain model)."""
        if self.kind == "hf":
            g = getattr(self.model, "mot_graft", None)
            return list(g.spec.layers) if g else []
        return [b.layer_idx for b in self.model.blocks if b.is_thought]

    @property
    def n_branches(self) -> int:
        """Thought branches per layer (0 without thought layers)."""
        if not self.thought_layers:
            return 0
        if self.kind == "hf":
            return self.model.mot_graft.spec.thoughts.n_branches
        return self.model.config.thoughts.n_branches

    def think(self, prompt: str, *, branches: int = 8, seed: int = 0, **kw):
        """N branches for ``prompt`` in one batched pass: a :class:`.generation.decoder.ThinkResult`.

        Keyword arguments are those of :func:`.generation.autoregressive.think` (character models)
        or :func:`.hf.generate.think_hf` (pretrained ones): ``creativity``, ``temperature``,
        ``max_new_tokens``, ``branch_seeds``, ``top_p``, ``stop``, ``chat`` (pretrained only), ...
        """
        if self.kind == "diffusion":
            raise ConfigError(f"{self.source} is a masked-diffusion denoiser: it denoises rather than continues "
                              "(mot diffuse, or generation.diffusion.generate)")
        if self.kind == "hf":
            from .hf.generate import think_hf

            return think_hf(self.model, self.tokenizer, prompt, branches=branches, seed=seed, **kw)
        from .generation.autoregressive import think

        return think(self.model, self.tokenizer, prompt, branches=branches, seed=seed, **kw)


def is_char_model(path: str | Path) -> bool:
    """Whether ``path`` is a run or checkpoint directory of this package's own (character) models,
    rather than a Hugging Face or grafted model directory."""
    from .hf.graft import is_grafted_dir
    from .training.checkpoint import is_checkpoint, is_run

    p = Path(path).expanduser()
    if not p.is_dir() or is_grafted_dir(p):  # a graft keeps its metrics.jsonl beside it, as a run does
        return False
    try:
        hf = "model_type" in json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        hf = False
    return is_run(p) or (is_checkpoint(p) and not hf)


def load(spec: str | Path | None = None, *, graft: str | list[int] | None = "all", noise_mode: str = "token",
         k: int = 2, device: str | None = None) -> Thinker:
    """Load ``spec`` (see the module docstring) on ``device`` (default: the best available).

    ``graft``, ``noise_mode`` and ``k`` (branches each token uses) shape a graft made on the fly, for a
    pretrained model that is not grafted yet; k = 1 is the cheaper graft (one MLP row a token).

    Raises:
        ConfigError, CheckpointError, MissingDependency: a spec that is not a model, a corrupt
        checkpoint or a missing optional package, each with a one-line message.
    """
    from .device import resolve_device

    if spec is None or is_char_model(spec):
        from .training.checkpoint import load_checkpoint

        ck = load_checkpoint(spec or SHIPPED, device=resolve_device(device))
        kind = "diffusion" if ck.objective == "diffusion" else "ar"
        return Thinker(kind, ck.model.eval(), ck.tokenizer, str(spec or SHIPPED))
    p = Path(spec).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{spec}: a file, not a run or model directory")
    from .hf.registry import load_pretrained

    model, tok, src = load_pretrained(str(spec), device)
    now = graft is not None and not hasattr(model, "mot_graft")
    if now:
        from .hf.graft import graft as do_graft

        do_graft(model, graft, noise_mode=noise_mode, k=k)
    return Thinker("hf", model, tok, f"{src.kind} {model.config.model_type}", grafted_now=now)


__all__ = ["Thinker", "load", "is_char_model", "SHIPPED", "KINDS"]
