"""Training data for learned branches (:mod:`.learned`): responses sampled from the plain model,
filtered, one JSON line per prompt.

Response ``j`` of prompt ``i`` has its own seed (:data:`RESPONSE_SEED_STRIDE`), so each is the same decoded
alone; a response is dropped when it is empty, degenerate (a loop, off-topic by MiniLM embeddings) or
unlikely under the model itself (mean NLL above :data:`DEFAULT_MAX_NLL`). Written atomically with a
``<stem>.stats.json`` sidecar of the filter rates.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..data.jsonl import parse_jsonl
from ..errors import ConfigError, DataError
from .generate import prompt_ids, uses_chat
from .learned import Progress, check_int, decode_rows

# Response j of prompt i is sampled with seed ``seed + i * RESPONSE_SEED_STRIDE + j``: every response
# has its own seed, reproducible alone, and adding prompts changes no earlier response.
RESPONSE_SEED_STRIDE = 1000
# Mean per-token NLL (nats, the sampling model's own log-probabilities at T = 1) above which a response
# is dropped. SmolLM2-135M-Instruct on the open-ended prompts (docs/report-smollm2): greedy 0.9, T = 0.7
# 1.5, top-p 0.9 2.2, T = 1 2.9 (per-prompt quartiles 2.5 / 2.8 / 3.2). 3.0 keeps roughly the better
# half of T = 1 samples, whose spread of ideas we want, and drops the tail that has drifted into noise.
DEFAULT_MAX_NLL = 3.0
AUTO = "auto"  # ``embedder=AUTO``: load the MiniLM embedder


# ------------------------------------------------------------------------------------ data


def build_branch_data(model: nn.Module, tokenizer, prompts: Sequence[dict], *, responses: int = 8,
                      max_new_tokens: int = 32, temperature: float = 1.0, seed: int = 0,
                      max_nll: float = DEFAULT_MAX_NLL, batch_prompts: int = 8, embedder=AUTO,
                      chat: bool | None = None, progress: Progress | None = None) -> tuple[list[dict], dict]:
    """Sample ``responses`` responses per prompt from the plain model and keep the usable ones.

    Rows of ``batch_prompts`` prompts x ``responses`` are decoded in one left-padded pass (like
    ``experiments.compare_lm``); response ``j`` of prompt ``i`` has seed ``seed + i *
    RESPONSE_SEED_STRIDE + j`` (Gumbel-max from its own counter-based noise, so it is the same decoded
    alone). Prompts go through the chat template when the tokenizer has one (``chat=None``).
    A response is dropped when it is empty, when :func:`metrics.semantic.degenerate` flags it (a loop;
    off-topic against the prompt by MiniLM embeddings) or when its mean NLL exceeds ``max_nll``
    (see :data:`DEFAULT_MAX_NLL`). A prompt left with fewer than 2 responses is dropped.

    Args:
        prompts: rows ``{"prompt": str, "category": str, ...}``.
        embedder: a ``metrics.semantic`` embedder; ``AUTO`` loads MiniLM; ``None`` skips the off-topic
            rule (the loop and empty rules still apply) -- for tests only; recorded in the stats.
        progress: ``progress("sample", prompts done, prompts, {})`` after each batch.
    Returns:
        ``(rows, stats)``: rows ``{"prompt", "category", "prompt_ids", "responses": [{"ids", "text",
        "nll", "seed"}, ...]}``; stats: counts and rates of each filter, seconds.
    """
    from ..metrics.semantic import degenerate

    t0 = time.perf_counter()
    check_int("responses", responses, 2, RESPONSE_SEED_STRIDE)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("batch_prompts", batch_prompts, 1)
    if not max_nll > 0:
        raise ConfigError(f"max_nll must be > 0 nats, got {max_nll}")
    if not prompts:
        raise ConfigError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, dict) or not isinstance(p.get("prompt"), str) or not p["prompt"].strip():
            raise DataError(f'prompt {i} needs a non-empty "prompt" string, got {p!r}')
    if isinstance(embedder, str) and embedder == AUTO:
        from ..metrics.semantic import get_embedder

        embedder = get_embedder()
    chat = uses_chat(tokenizer, chat)
    ids_list = [prompt_ids(tokenizer, p["prompt"], chat) for p in prompts]
    P, R = len(prompts), responses
    out, dropped, n_kept, kept_nll = [], Counter(), 0, []
    for start in range(0, P, batch_prompts):
        chunk = list(range(start, min(P, start + batch_prompts)))
        seeds = [seed + i * RESPONSE_SEED_STRIDE + j for i in chunk for j in range(R)]
        res = decode_rows(model, tokenizer, [ids_list[i] for i in chunk for _ in range(R)], seeds,
                           max_new_tokens=max_new_tokens, temperature=temperature, shared=R)
        texts = [r[1] for r in res]
        if embedder is not None:
            t_emb = embedder.embed(texts)
            p_emb = embedder.embed([prompts[i]["prompt"] for i in chunk])
        for q, i in enumerate(chunk):
            sl = slice(q * R, (q + 1) * R)
            reasons = degenerate(texts[sl], prompt_emb=p_emb[q] if embedder is not None else None,
                                 texts_emb=t_emb[sl] if embedder is not None else None)
            kept = []
            for (cont, text, nll), s, why in zip(res[sl], seeds[sl], reasons, strict=True):
                why = "empty" if not cont else why  # no token before the end of turn
                if why is None and not nll <= max_nll:
                    why = "nll"
                if why is not None:
                    dropped[why] += 1
                    continue
                kept.append({"ids": cont, "text": text, "nll": round(nll, 4), "seed": s})
            if len(kept) < 2:
                dropped["with_prompt"] += len(kept)
                dropped["prompts"] += 1
                continue
            n_kept += len(kept)
            kept_nll += [k["nll"] for k in kept]
            out.append({"prompt": prompts[i]["prompt"], "category": prompts[i].get("category"),
                        "prompt_ids": ids_list[i], "responses": kept})
        if progress is not None:
            progress("sample", chunk[-1] + 1, P, {})
    n = P * R
    stats = {"prompts": P, "prompts_kept": len(out), "prompts_dropped": dropped["prompts"],
             "responses_sampled": n, "responses_kept": n_kept, "kept_rate": n_kept / n,
             "dropped": {k: dropped[k] for k in ("empty", "loop", "off-topic", "nll", "with_prompt")},
             "drop_rates": {k: dropped[k] / n for k in ("empty", "loop", "off-topic", "nll", "with_prompt")},
             "mean_kept_nll": sum(kept_nll) / len(kept_nll) if kept_nll else None,
             "offtopic_check": embedder is not None, "chat": chat,
             "settings": {"responses": R, "max_new_tokens": max_new_tokens, "temperature": temperature,
                          "seed": seed, "max_nll": max_nll, "seed_rule": "seed + prompt_index * "
                          f"{RESPONSE_SEED_STRIDE} + response_index"},
             "seconds": time.perf_counter() - t0}
    return out, stats


def write_branch_data(rows: list[dict], stats: dict, path: str | Path, *, force: bool = False) -> Path:
    """``rows`` as JSONL at ``path`` (one prompt per line) and ``stats`` as ``<stem>.stats.json`` beside it,
    each written under a temporary name and renamed (never half-written). Returns the stats path."""
    path = Path(path)
    if path.exists() and not force:
        raise ConfigError(f"{path} exists: pass --force to overwrite it")
    side = stats_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(side, json.dumps(stats, indent=1, ensure_ascii=False))
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return side


def stats_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".stats.json")


def load_branch_data(path: str | Path) -> list[dict]:
    """The rows of a file written by :func:`write_branch_data`, checked.

    Raises:
        DataError: a missing or unreadable file, a line that is not JSON or lacks ``prompt_ids`` (a list
            of ids) or ``responses`` (a list of ``{"ids": [...]}``), or no row at all.
    """
    p = Path(path)
    where = f"branch data {p}"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{where} does not exist (write it with mot branch-data)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{where} is not readable UTF-8 text: {e}") from None
    rows = []
    for i, row in parse_jsonl(text, where):
        ok = isinstance(row, dict) and _is_ids(row.get("prompt_ids")) and row["prompt_ids"] \
            and isinstance(row.get("responses"), list) and row["responses"] \
            and all(isinstance(r, dict) and _is_ids(r.get("ids")) and r["ids"] for r in row["responses"])
        if not ok:
            raise DataError(f'{where}, line {i}: needs "prompt_ids" (a non-empty list of token ids) and '
                            f'"responses" (a non-empty list of {{"ids": [...]}}): is it a mot branch-data file?')
        rows.append(row)
    if not rows:
        raise DataError(f"{where} holds no row")
    return rows


def _is_ids(x) -> bool:
    return isinstance(x, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in x)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)

