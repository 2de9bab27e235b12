"""One transformer for every model of the project (DESIGN §2).

Reads bottom-up like nanoGPT's ``model.py``: time embedding -> block -> model. What changed from
nanoGPT: RMSNorm instead of LayerNorm, rotary position embeddings instead of learned ones (so the
KV cache can slide past the block size), an optional bidirectional mode with noise-level
conditioning for the masked-diffusion denoiser, and per-layer choice between the dense FFN and the
Mixture-of-Thoughts FFN (``thought_layers``). The same config with ``thought_layers="none"`` is the
dense baseline.

References: nanoGPT (Karpathy); RoPE (Su et al. 2021); RMSNorm (Zhang & Sennrich 2019);
MDLM (Sahoo et al. 2024) for the time conditioning of the denoiser.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..layers.attention import KVCache, SelfAttention, rope_angles
from ..layers.ffn import DenseFFN
from ..layers.norm import RMSNorm
from ..layers.thoughts import BRANCH_WEIGHTS, ThoughtsFFN

NORM_EPS = 1e-6


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V), or (B, 1, V) with last_only
    loss: torch.Tensor | None  # mean next-token cross-entropy in nats, when targets are given
    aux_loss: torch.Tensor  # sum of the thought layers' auxiliary losses (0 for dense models)
    stats: dict[int, dict[str, torch.Tensor]]  # per thought layer index: router/branch statistics


class TimeEmbedding(nn.Module):
    """Sinusoidal features of the noise level t in [0, 1], then a two-layer MLP (as DiT / MDLM)."""

    def __init__(self, n_embd: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, n_embd), nn.SiLU(), nn.Linear(n_embd, n_embd))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # t: (B,) -> (B, d). Scale by 1000 so that t in [0, 1] spans the frequency range of the features.
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        ang = 1000.0 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([ang.cos(), ang.sin()], dim=-1))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + ffn(norm(x))``."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.norm1 = RMSNorm(cfg.n_embd, eps=NORM_EPS)
        self.attn = SelfAttention(cfg.n_embd, cfg.n_head, causal=cfg.causal, rope_base=cfg.rope_base,
                                  bias=cfg.bias, dropout=cfg.dropout)
        self.norm2 = RMSNorm(cfg.n_embd, eps=NORM_EPS)
        self.is_thought = layer_idx in cfg.thought_layer_indices()
        if self.is_thought:
            self.ffn = ThoughtsFFN(cfg.n_embd, cfg.thoughts, bias=cfg.bias, dropout=cfg.dropout, layer_idx=layer_idx)
        else:
            self.ffn = DenseFFN(cfg.n_embd, cfg.dense_hidden, bias=cfg.bias, dropout=cfg.dropout)

    def forward(self, x, positions, *, cache=None, noise=None, creativity=None, costly_stats=False, rope=None,
                route=None, aux=True, attn_mask=None):
        x = x + self.attn(self.norm1(x), positions, cache, self.layer_idx, rope, attn_mask)
        h = self.norm2(x)
        if self.is_thought:
            out = self.ffn(h, noise=noise, positions=positions, creativity=creativity, route=route,
                           costly_stats=costly_stats, aux=aux)
            return x + out.y, out.aux_loss, out.stats
        return x + self.ffn(h), None, None


class Transformer(nn.Module):
    """Token embedding, ``n_layer`` blocks, final RMSNorm, LM head tied to the embedding.

    Args:
        config: a validated :class:`~mixture_of_thoughts.config.ModelConfig`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # PyTorch's layer constructors draw their default init from the global RNG; fork it so that
        # building a model leaves the caller's RNG as it was (weights come from init_weights or a file).
        with torch.random.fork_rng(devices=[]):
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)
            self.time_embed = TimeEmbedding(config.n_embd) if config.time_conditioning else None
            self.drop = nn.Dropout(config.dropout)
            self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
            self.norm_f = RMSNorm(config.n_embd, eps=NORM_EPS)
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017), as nanoGPT

    def init_weights(self, generator: torch.Generator) -> Transformer:
        """nanoGPT's initialisation from an explicit generator: N(0, 0.02), residual projections
        scaled by 1/sqrt(2·n_layer), zero biases. Thought layers use their own ``reset_parameters``
        (zero-initialised combiner query, noise scales, temperature) with the same generator."""
        std = 0.02
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        own_init = {id(p) for b in self.blocks if b.is_thought for p in b.ffn.parameters()}
        with torch.no_grad():
            for name, p in self.named_parameters():
                if id(p) in own_init or p.dim() < 2:
                    if name.endswith("bias") and id(p) not in own_init:
                        p.zero_()
                    continue
                if "time_embed" in name and name.endswith("2.weight"):
                    p.zero_()  # start with no time signal; training switches it on
                    continue
                last = name.split(".")[-2] if "." in name else name
                p.normal_(0.0, resid_std if last in ("proj", "fc_out") else std, generator=generator)
            for b in self.blocks:
                if b.is_thought:
                    b.ffn.reset_parameters(generator)
                    b.ffn.w_out.mul_(resid_std / std)  # residual projection, scaled as nanoGPT's
        return self

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: KVCache | None = None,
                noise=None, creativity=None, route: str | None = None, time: torch.Tensor | None = None,
                last_only: bool = False, costly_stats: bool = False, aux: bool = True,
                attn_mask: torch.Tensor | None = None) -> ModelOutput:
        """Run the model.

        Args:
            idx: (B, T) token ids.
            targets: (B, T) ids for the next-token loss (``-1`` is ignored), or ``None``.
            cache: a :class:`KVCache` for incremental decoding (causal models only).
            noise: a noise source for the thought layers (``rng.RowNoise`` / ``rng.GeneratorNoise``);
                ``None`` switches all thought noise off.
            creativity: ``None`` (each layer's configured default), a float, or a (B,) tensor.
            route: ``"token"`` or ``"sequence"`` routing for this call; ``None`` = each layer's config.
            time: (B,) noise levels in [0, 1] for a time-conditioned denoiser.
            last_only: compute logits for the last position only (generation).
            costly_stats: ask thought layers for their costly statistics (branch diversity).
            attn_mask: (B, 1, T, T) bool, which keys each query reads, in place of the model's own
                pattern (training a denoiser adapted from a causal model; no cache).
            aux: compute the thought layers' aux losses and statistics; ``False`` (generation) keeps
                only their routing load (``load``, ``row_load``, ``active_k``) and a zero aux loss.
        Returns:
            :class:`ModelOutput`.
        """
        B, T = idx.shape
        positions = cache.positions(T) if cache is not None else torch.arange(T, device=idx.device)
        x = self.wte(idx)  # (B, T, d)
        if self.time_embed is not None:
            if time is None:
                raise ValueError("this model is time-conditioned: pass time=(B,) noise levels")
            x = x + self.time_embed(time)[:, None, :]
        x = self.drop(x)
        aux_loss = x.new_zeros(())
        stats: dict[int, dict[str, torch.Tensor]] = {}
        rope = rope_angles(positions, self.config.head_size, self.config.rope_base)  # once for all layers
        for block in self.blocks:
            x, a, s = block(x, positions, cache=cache, noise=noise, creativity=creativity, costly_stats=costly_stats,
                            rope=rope, route=route, aux=aux, attn_mask=attn_mask)
            if a is not None:
                aux_loss = aux_loss + a
                stats[block.layer_idx] = s
        if cache is not None:
            cache.advance(positions)
        x = self.norm_f(x)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return ModelOutput(logits, loss, aux_loss, stats)

    def new_cache(self, batch_size: int, device=None, dtype=None, start: int = 0) -> KVCache:
        """An empty KV cache whose first token sits at absolute position ``start``."""
        p = self.wte.weight
        c = self.config
        return KVCache(c.n_layer, batch_size, c.n_head, c.head_size, c.block_size,
                       device=device or p.device, dtype=dtype or p.dtype, start=start)


def count_parameters(model: Transformer) -> tuple[int, int]:
    """``(total, active)`` parameters; *active* counts only the k branches a token uses.

    Embedding and LM head are tied and counted once. With a k range, active uses the upper end k.
    """
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    inactive = 0
    for block in model.blocks:
        if block.is_thought:
            E, k = block.ffn.cfg.n_branches, block.ffn.cfg.k
            branch_params = [p for n, p in block.ffn.named_parameters() if n.split(".")[0] in BRANCH_WEIGHTS]
            per_branch = sum(p.numel() for p in branch_params) // E
            inactive += (E - k) * per_branch
    return total, total - inactive
