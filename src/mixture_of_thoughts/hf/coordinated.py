"""Coordinated branches: thought branches that see each other while they are decoded in one batch.

Independent branches (``sample_branches``) often say the same thing. Here the ``B`` branches of a
prompt are decoded together, in branch order within every step, and branch ``b`` is pushed away from
the tokens the branches before it chose. Every prompt x branch (x beam) is one row of a single
left-padded batch read by a Hugging Face causal LM with its KV cache; prompts of different lengths
share the pass (each row gets its own attention mask and positions, as in :mod:`.vary`).

**Temperature 0: diverse beam search** (Vijayakumar et al. 2018, "Diverse Beam Search: Decoding
Diverse Solutions from Neural Sequence Models", AAAI; Hamming diversity). Branch ``g`` is a
group of ``W = group_width`` beams. At step ``t`` the groups choose in order ``g = 0 .. B-1``; group
``g`` scores each of its ``W x V`` candidates (beam ``w``, token ``v``) as::

    s(w, v) = log p(y_w,<t) + log p(v | y_w,<t) - lambda * c_g(v)

where ``c_g(v)`` counts ``v`` among the tokens chosen at step ``t`` by the (live) beams of groups
``< g`` of the same prompt (``window="step"``: the paper's Hamming diversity), or among every token
those beams generated so far, this step's included (``window="prefix"``), and keeps its top ``W``
(plain beam search within the group; the KV cache rows follow the chosen beams). The penalty only
steers the choice: the scores carried forward are the beams' log-probabilities (as in the paper;
Hugging Face's group beam search carries the penalised scores instead). A finished beam (stop id)
stays in its group with its score frozen (one continuation, at cost 0) and adds nothing more to the
counts (its stop token, chosen by a live beam, is counted once). Each group returns its best beam
by length-normalised score, ``sum log p / length`` with the stop token counted (``length_penalty=1``).
DBS is deterministic: the seeds only give ``B``.

**Temperature > 0: repulsive sampling** (this package's coordinated branches, ``W = 1``). Branch
``b`` draws its token by Gumbel-max with its own counter-based noise (seed ``seeds[b]``, read at the
row's own position: the noise ``sample_branches`` uses) from ``logits / T - lambda * c_b(v)``, with
``c_b`` counted as above over branches ``< b``. With ``diversity=0`` a branch is token for token the
row ``sample_branches(model, tok, prompt, [seed], temperature=T)`` gives alone.

``diverse_tokens=m`` applies the penalty to the first ``m`` generated tokens only ("diverge first,
then write"). Reproducibility: branch ``b`` depends on its seed *and on the branches before it in its
batch*, by design; branch ``b`` is unchanged by the seeds (or presence) of the branches after it, and
each prompt's branches by the other prompts of the batch (up to a flip between two logits within
rounding error of each other, as with padding anywhere in the package).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..generation.autoregressive import LOOKAHEAD
from ..generation.decoder import left_pad
from ..generation.sampling import sample_tokens
from ..rng import RowNoise
from .fast import PaddedLean
from .generate import check_context, stop_token_ids
from .vary import PaddedLM, RowPositionNoise, pad_token_id, padded_lm

__all__ = ["coordinated_generate", "WINDOWS"]

WINDOWS = ("step", "prefix")  # what the penalty counts: this step's tokens, or every token so far
NEG_INF = float("-inf")


def _validate(ids_list, seeds, max_new_tokens, temperature, diversity, diverse_tokens, group_width, window) -> None:
    if not ids_list:
        raise ConfigError("ids_list is empty: give at least one prompt")
    if any(len(ids) == 0 for ids in ids_list):
        raise ConfigError("a prompt has no tokens: every prompt needs at least one id (e.g. BOS)")
    if not seeds:
        raise ConfigError("seeds is empty: give one seed per branch")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature must be >= 0 (0 = diverse beam search), got {temperature}")
    if not (math.isfinite(diversity) and diversity >= 0):
        raise ConfigError(f"diversity must be a finite number >= 0, got {diversity}")
    if diverse_tokens is not None and (isinstance(diverse_tokens, bool) or not isinstance(diverse_tokens, int)
                                       or diverse_tokens < 1):
        raise ConfigError(f"diverse_tokens must be an integer >= 1 or None (every token), got {diverse_tokens!r}")
    if isinstance(group_width, bool) or not isinstance(group_width, int) or group_width < 1:
        raise ConfigError(f"group_width must be an integer >= 1, got {group_width!r}")
    if window not in WINDOWS:
        raise ConfigError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
    if group_width > 1 and temperature > 0:
        raise ConfigError(f"group_width > 1 is for diverse beam search (temperature 0); repulsive sampling "
                          f"(temperature {temperature}) has one row per branch: use group_width=1")


def _write_step(tokens, logprobs, lengths, done, nxt, lp, stop, pos: int, i: int):
    """Write step ``i``'s tokens (column ``pos``) and log-probabilities in place; a live row that chose a
    stop id ends there (its length is ``i``: the stop id is not part of its text). Returns ``(lengths, done)``."""
    tokens[:, pos] = nxt
    logprobs[:, i] = lp
    hit = torch.isin(nxt, stop) & ~done
    return torch.where(hit, i, lengths), done | hit


def _diverse_beam(lm: PaddedLM | PaddedLean, tokens: torch.Tensor, T0: int, N: int, P: int, G: int, W: int,
                  stop: torch.Tensor, pad_id: int, diversity: float, until: int, window: str):
    """Diverse beam search over ``R = P * G * W`` rows (prompt-major, then group, then beam).

    Returns:
        ``(tokens (P*G, T0 + n), logprobs (P*G, n), lengths (P*G,))`` of each group's best beam.
    """
    dev = tokens.device
    R = P * G * W
    base = torch.arange(R, device=dev).view(P, G, W)  # the row of each beam
    # only the first beam of a group is live at step 0: the W copies of the prompt are one hypothesis
    score = torch.zeros(P, G, W, device=dev)
    score[:, :, 1:] = NEG_INF
    scored = torch.zeros(R, dtype=torch.long, device=dev)  # tokens in each score (the stop token included)
    logprobs = torch.zeros(R, N, device=dev)
    lengths = torch.full((R,), N, dtype=torch.long, device=dev)
    done = torch.zeros(R, dtype=torch.bool, device=dev)
    hist = None  # window="prefix": (P, G, W, V) tokens each live beam generated so far
    n = N
    for i in range(N):
        pos = T0 + i
        lp = torch.log_softmax(lm.logits(tokens, pos), -1)  # (R, V)
        V = lp.shape[-1]
        lpg = lp.view(P, G, W, V)
        penal = diversity > 0 and i < until
        prefix = penal and window == "prefix"
        if prefix and hist is None:
            hist = torch.zeros(P, G, W, V, device=dev)
        count = torch.zeros(P, V, device=dev) if penal else None  # uses of each token by groups < g
        fin = done.view(P, G, W)
        perm = torch.empty_like(base)
        new_tok = torch.empty(P, G, W, dtype=torch.long, device=dev)
        new_score = torch.empty_like(score)
        new_hist = torch.empty_like(hist) if prefix else None
        for g in range(G):  # the groups choose in order: inherent to the algorithm
            cand = score[:, g, :, None] + lpg[:, g]  # (P, W, V)
            if penal:
                cand = cand - diversity * count[:, None, :]
            frozen = torch.full_like(cand, NEG_INF)
            frozen[:, :, pad_id] = score[:, g]
            cand = torch.where(fin[:, g, :, None], frozen, cand)  # a finished beam: itself, at cost 0
            idx = cand.reshape(P, W * V).topk(W, dim=-1).indices  # (P, W)
            beam, tok = idx // V, idx % V
            src_fin = fin[:, g].gather(1, beam)
            gained = lpg[:, g].reshape(P, W * V).gather(1, idx)
            new_score[:, g] = score[:, g].gather(1, beam) + torch.where(src_fin, 0.0, gained)
            perm[:, g] = base[:, g].gather(1, beam)
            new_tok[:, g] = tok
            if penal:
                live = (~src_fin).float()[..., None]  # (P, W, 1)
                chosen = torch.zeros(P, W, V, device=dev).scatter_(2, tok[..., None], live)
                if prefix:
                    chosen = chosen + hist[:, g].gather(1, beam[..., None].expand(P, W, V))
                    new_hist[:, g] = chosen
                count += chosen.sum(1)
        rows, nxt = perm.view(-1), new_tok.view(-1)
        if W > 1:  # with one beam per group every row stays where it is
            lm.reorder(rows)
            tokens, logprobs, lengths = tokens[rows], logprobs[rows], lengths[rows]
            done, scored = done[rows], scored[rows]
        score, hist = new_score, new_hist
        scored += (~done).long()
        lengths, done = _write_step(tokens, logprobs, lengths, done, nxt, lp[rows, nxt], stop, pos, i)
        if bool(done.all()) or i == N - 1:
            n = i + 1
            break
    norm = (score.view(-1) / scored.clamp_min(1)).view(P, G, W)
    best = base.gather(2, norm.argmax(-1, keepdim=True)).view(-1)  # (P*G,)
    return tokens[best, :T0 + n], logprobs[best, :n], lengths[best]


def _repel(lm: PaddedLM | PaddedLean, tokens: torch.Tensor, T0: int, N: int, P: int, B: int, stop: torch.Tensor,
           seeds: list[int], pad: torch.Tensor, temperature: float, diversity: float, until: int, window: str):
    """Repulsive sampling over ``R = P * B`` rows (prompt-major, then branch).

    Returns:
        ``(tokens (R, T0 + n), logprobs (R, n), lengths (R,))``.
    """
    dev = tokens.device
    R = P * B
    look = min(LOOKAHEAD, N)
    pads = pad.view(P, B)
    # branch b's rows, one per prompt, with branch b's seed: the same numbers as in one noise for all rows
    noises = [RowPositionNoise(RowNoise([s] * P, dev), pads[:, b], lookahead=look) for b, s in enumerate(seeds)]
    logprobs = torch.zeros(R, N, device=dev)
    lengths = torch.full((R,), N, dtype=torch.long, device=dev)
    done = torch.zeros(R, dtype=torch.bool, device=dev)
    hist = None  # window="prefix": (P, B, V) tokens each live branch generated so far
    n = N
    for i in range(N):
        pos = T0 + i
        logits = lm.logits(tokens, pos)  # (R, V)
        V = logits.shape[-1]
        lg = logits.view(P, B, V)
        penal = diversity > 0 and i < until
        if penal and window == "prefix" and hist is None:
            hist = torch.zeros(P, B, V, device=dev)
        count = torch.zeros(P, V, device=dev) if penal else None
        fin = done.view(P, B)
        nxt = torch.empty(P, B, dtype=torch.long, device=dev)
        for b in range(B):  # the branches choose in order: branch b sees the choices of branches < b
            # (logits - T lambda c) / T = logits / T - lambda c: the penalty in sample_tokens' own scaling
            x = lg[:, b] - (temperature * diversity) * count if penal else lg[:, b]
            tok = sample_tokens(x, noises[b], pos, temperature)  # (P,)
            nxt[:, b] = tok
            if penal:
                live = (~fin[:, b]).float()[:, None]
                if hist is not None:
                    hist[:, b].scatter_add_(1, tok[:, None], live)
                    count += hist[:, b]
                else:
                    count.scatter_add_(1, tok[:, None], live)
        nxt = nxt.view(-1)
        lp = torch.log_softmax(logits, -1).gather(1, nxt[:, None])[:, 0]
        lengths, done = _write_step(tokens, logprobs, lengths, done, nxt, lp, stop, pos, i)
        if bool(done.all()) or i == N - 1:
            n = i + 1
            break
    return tokens[:, :T0 + n], logprobs[:, :n], lengths


@torch.no_grad()
def coordinated_generate(model: nn.Module, tokenizer, ids_list: list[list[int]], seeds: list[int], *,
                         max_new_tokens: int, temperature: float = 0.0, diversity: float = 0.0,
                         diverse_tokens: int | None = None, group_width: int = 1,
                         window: str = "step") -> list[tuple[list[int], str, float]]:
    """``len(seeds)`` coordinated branches per prompt, all prompts in one batched pass (module docstring).

    Args:
        model, tokenizer: a Hugging Face causal LM and its tokenizer.
        ids_list: ``P`` prompts' token ids (already chat-templated), any lengths (left-padded here).
        seeds: one per branch (``B`` branches per prompt). Repulsive sampling draws branch ``b``'s tokens
            from ``seeds[b]``'s noise; diverse beam search is deterministic and only counts them.
        max_new_tokens: tokens generated at most per branch; a branch also stops at any of
            :func:`~mixture_of_thoughts.hf.generate.stop_token_ids` (not part of its text).
        temperature: 0 = diverse beam search, > 0 = repulsive sampling at that temperature.
        diversity: ``lambda``, the penalty per earlier use of a token (0 = independent branches).
        diverse_tokens: the penalty applies to the first ``m`` generated tokens only (``None``: all).
        group_width: ``W`` beams per branch (diverse beam search only; ``P * B * W`` rows).
        window: ``"step"`` counts the tokens earlier branches chose at this step (Hamming diversity),
            ``"prefix"`` every token they generated so far.

    Returns:
        ``P * B`` tuples, prompt-major then branch: ``(continuation ids without the stop id, text
        decoded with skip_special_tokens=True, mean NLL per token under model at temperature 1,
        NaN when empty)``.

    Raises:
        ConfigError: a setting out of range (each message names it).
    """
    temperature, diversity = float(temperature), float(diversity)
    _validate(ids_list, seeds, max_new_tokens, temperature, diversity, diverse_tokens, group_width, window)
    dev = next(model.parameters()).device
    P, B = len(ids_list), len(seeds)
    W = group_width if temperature == 0 else 1
    rows = [list(ids) for ids in ids_list for _ in range(B * W)]
    pad_id = pad_token_id(tokenizer)
    ids, mask = left_pad(rows, pad_id, dev)
    T0 = ids.shape[1]
    check_context(model, T0, max_new_tokens)
    model.eval()
    tokens = torch.full((len(rows), T0 + max_new_tokens), pad_id, dtype=torch.long, device=dev)
    tokens[:, :T0] = ids
    lm = padded_lm(model, mask)
    stop = torch.tensor(stop_token_ids(tokenizer, model), dtype=torch.long, device=dev)
    until = max_new_tokens if diverse_tokens is None else diverse_tokens
    if temperature == 0:
        toks, lp, lengths = _diverse_beam(lm, tokens, T0, max_new_tokens, P, B, W, stop, pad_id, diversity,
                                          until, window)
    else:
        pad = T0 - mask.sum(-1)
        toks, lp, lengths = _repel(lm, tokens, T0, max_new_tokens, P, B, stop, list(seeds), pad, temperature,
                                   diversity, until, window)
    gen = toks[:, T0:].tolist()
    lp = lp.cpu()
    out = []
    for r, L in enumerate(lengths.tolist()):  # decoding to Python strings is per row by nature
        cont = gen[r][:L]
        nll = -float(lp[r, :L].mean()) if L else float("nan")
        out.append((cont, tokenizer.decode(cont, skip_special_tokens=True), nll))
    return out
