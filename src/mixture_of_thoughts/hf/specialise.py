"""Expert specialisation and branches with expert profiles (DESIGN §6).

Activation rate of every expert in every MoE layer on two prompt sets, their difference and the
experts that separate the sets (printed and drawn as a heatmap); and ``think``-like generation where
each branch carries its own :class:`~mixture_of_thoughts.steering.experts.ExpertProfile`, all rows in
one batch (the controller's masks are per row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..steering.experts import ExpertController, ExpertProfile, find_moe_layers


def _is_own(model: nn.Module) -> bool:
    from ..models.transformer import Transformer

    return isinstance(model, Transformer)


def _encode(tokenizer, text: str) -> list[int]:
    if hasattr(tokenizer, "stoi") or type(tokenizer).__name__ == "CharTokenizer":
        return tokenizer.encode(text, unknown="skip")
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def routing_rates(model: nn.Module, tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, int]:
    """Activation rate of every expert in every MoE layer over ``prompts`` (one forward each).

    Returns:
        ``(rates (L, E), tokens)``: fraction of the prompts' tokens that used each expert.
    """
    model.eval()
    dev = next(model.parameters()).device
    with ExpertController(model, record=True) as ctl:
        for p in prompts:
            ids = _encode(tokenizer, p)
            if not ids:
                continue
            x = torch.tensor([ids], device=dev)
            if _is_own(model):
                model(x[:, -model.config.block_size:])
            else:
                model(input_ids=x, use_cache=False)
        c, n = ctl.counts()
    if n == 0:
        raise ConfigError("no prompt produced any token: give non-empty prompts")
    return c / n, n


@dataclass
class Specialisation:
    """Expert activation rates on two prompt sets and their difference (A − B)."""

    layers: list[int]
    rates_a: torch.Tensor  # (L, E)
    rates_b: torch.Tensor  # (L, E)
    tokens_a: int
    tokens_b: int

    @property
    def diff(self) -> torch.Tensor:
        return self.rates_a - self.rates_b

    def top(self, which: str = "a", n: int = 3) -> dict[int, list[tuple[int, float]]]:
        """Per layer, the ``n`` experts most specific to set ``a`` (largest A − B) or ``b`` (largest B − A)."""
        d = self.diff if which == "a" else -self.diff
        vals, idx = d.topk(min(n, d.shape[1]), dim=1)
        return {layer: [(int(e), round(float(v), 4)) for e, v in zip(idx[i], vals[i], strict=True)]
                for i, layer in enumerate(self.layers)}

    def to_dict(self, n: int = 3) -> dict:
        return {"layers": self.layers, "tokens_a": self.tokens_a, "tokens_b": self.tokens_b,
                "rates_a": [[round(float(v), 4) for v in r] for r in self.rates_a],
                "rates_b": [[round(float(v), 4) for v in r] for r in self.rates_b],
                "top_a": self.top("a", n), "top_b": self.top("b", n)}

    def format(self, n: int = 3) -> str:
        lines = [f"{len(self.layers)} MoE layers, {self.rates_a.shape[1]} experts; "
                 f"{self.tokens_a} tokens in set A, {self.tokens_b} in set B",
                 "layer  top experts of A (rate A-B)            top experts of B (rate B-A)"]
        ta, tb = self.top("a", n), self.top("b", n)
        for layer in self.layers:
            a = "  ".join(f"{e}:{v:+.3f}" for e, v in ta[layer])
            b = "  ".join(f"{e}:{v:+.3f}" for e, v in tb[layer])
            lines.append(f"{layer:5d}  {a:38s} {b}")
        return "\n".join(lines)


def expert_specialisation(model: nn.Module, tokenizer, prompts_a: Sequence[str],
                          prompts_b: Sequence[str]) -> Specialisation:
    """Activation rate per expert and layer on two prompt sets, and which experts separate them."""
    layers = [m.index for m in find_moe_layers(model)]
    ra, na = routing_rates(model, tokenizer, prompts_a)
    rb, nb = routing_rates(model, tokenizer, prompts_b)
    return Specialisation(layers, ra, rb, na, nb)


def plot_specialisation(spec: Specialisation, path: str | Path, labels: tuple[str, str] = ("A", "B")) -> Path:
    """Heatmaps (layer x expert) of the rates on A, on B, and A − B, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, E = spec.rates_a.shape
    fig, axes = plt.subplots(1, 3, figsize=(3 + 1.2 * E, 1.5 + 0.45 * L), squeeze=False)
    vmax = float(max(spec.rates_a.max(), spec.rates_b.max()))
    dmax = max(float(spec.diff.abs().max()), 1e-6)
    panels = [(spec.rates_a, f"rate on {labels[0]}", "viridis", 0, vmax),
              (spec.rates_b, f"rate on {labels[1]}", "viridis", 0, vmax),
              (spec.diff, f"{labels[0]} − {labels[1]}", "coolwarm", -dmax, dmax)]
    for ax, (data, title, cmap, lo, hi) in zip(axes[0], panels, strict=True):
        im = ax.imshow(data.numpy(), cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        ax.set_title(title)
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_xticks(range(E))
        ax.set_yticks(range(L), [str(i) for i in spec.layers])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- branches

def think_experts(model: nn.Module, tokenizer, prompt: str, profiles: Sequence[ExpertProfile], *, seed: int = 0,
                  max_new_tokens: int = 50, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, min_p: float | None = None, stop: str | None = None):
    """One branch per expert profile, all in one batched pass (profile ``i`` edits batch row ``i``).

    Branch ``i`` has seed ``seed + i``; the same seed with the same profile reproduces it alone.
    Works on Hugging Face MoE models and on this package's ``Transformer`` with thought layers.

    Returns:
        :class:`~mixture_of_thoughts.generation.autoregressive.ThinkResult`, branches in profile order.
    """
    profiles = list(profiles)
    if not profiles:
        raise ConfigError("give at least one expert profile")
    seeds = [seed + i for i in range(len(profiles))]
    with ExpertController(model, record=not _is_own(model)) as ctl:
        ctl.set_profile(profiles)
        if _is_own(model):
            from ..generation.autoregressive import think

            return think(model, tokenizer, prompt, branch_seeds=seeds, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, stop=stop,
                         unknown_chars="skip")
        from .generate import sample_branches

        def step_stats():
            return {m.index: ctl.records(m.index)[-1].counts for m in ctl.layers if ctl.records(m.index)}

        return sample_branches(model, tokenizer, prompt, seeds, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, stop=stop,
                               step_stats=step_stats)
