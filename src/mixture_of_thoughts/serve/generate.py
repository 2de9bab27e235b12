"""Generation for the playground: the library functions the commands use, streamed as events.

Every job calls the same function as its command, with the same arguments, so the page shows what
the command prints: :func:`~mixture_of_thoughts.generation.autoregressive.think` (``mot think``),
:func:`~mixture_of_thoughts.generation.denoise_search.branch_search` (``mot diffuse``) and
:func:`~mixture_of_thoughts.generation.denoise_search.renoise` (``mot renoise``). Nothing in the decoding
loops changed for the server; it listens from outside:

* ``think``'s ``on_token`` callback gives each step's new tokens;
* a forward hook on the model, attached for the one request while it holds the model's lock, sees
  each forward call's output: the logits the step sampled from (for the running mean
  log-likelihood, computed as the decoder computes it) and the thought layers' ``row_load``, which
  for a one-token KV-cache step is exactly the branches that token went through in each layer. The
  hook is also where a cancelled job stops (:meth:`Job.check`), for diffusion as well.

Events (name, JSON data), in order: ``start`` (settings), then ``step`` per decoding step (think) or
``frame`` per shown denoising state (diffuse, renoise), then ``result`` (the command's result as
JSON, with the set's diversity), or ``error``; the worker ends every stream with ``end``.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from ..errors import ConfigError
from ..generation.autoregressive import prepare_prompt
from ..generation.decoder import branch_plan, set_diversity
from ..models.diffusion import mask_id
from .models import ServedModel
from .params import DiffuseRequest, RenoiseRequest, ThinkRequest
from .worker import Job

MAX_FRAMES = 96  # denoising states sent per request (evenly spaced, first and last always)
MASK = "\u0000"  # how a [MASK] position is sent in a frame; the page draws it as a placeholder


@contextlib.contextmanager
def watching(m: ServedModel, job: Job):
    """Hold ``m``'s lock and hook its forward calls for ``job``; yields a dict whose ``"out"`` is the
    output of the latest forward call. Raises :class:`~.worker.Cancelled` in the hook once cancelled."""
    seen: dict = {}

    def hook(module, args, output):
        job.check()
        seen["out"] = output

    with m.lock:
        handle = m.model.register_forward_hook(hook)
        try:
            yield seen
        finally:
            handle.remove()


def check_request(m: ServedModel, req) -> None:
    """What only the model can check, before the request is queued: a ``DataError`` (the tokenizer's
    one line) for characters ``m`` cannot encode, a ``ConfigError`` for a diffusion ``length`` shorter
    than the prompt (as ``mot diffuse`` says)."""
    if m.kind not in ("ar", "diffusion"):
        return
    ids = m.tokenizer.encode(req.text if isinstance(req, RenoiseRequest) else req.prompt)
    if isinstance(req, DiffuseRequest) and req.length < len(ids):
        raise ConfigError(f"length ({req.length}) must be at least the prompt length ({len(ids)} characters)")


# ----------------------------------------------------------------------------- think (autoregressive)

def _selected(load: torch.Tensor) -> list[list[int]]:
    """(B, E) loads of one token per row -> the branches each row's token went through."""
    return [row.nonzero().squeeze(1).tolist() for row in load > 0]


class _StepTracker:
    """Turns the decoder's ``on_token`` calls (and the hooked forward output) into ``step`` events.

    Per row: the new text (a character model's token, or what a subword row's text grew by, so that
    a token split inside a character or a special token shows correctly), the running mean
    log-likelihood of the kept tokens, and the branches per thought layer of the token the step read.
    """

    def __init__(self, m: ServedModel, job: Job, seen: dict, n_rows: int):
        self.m, self.job, self.seen = m, job, seen
        self.total = torch.zeros(n_rows, dtype=torch.float64)
        self.count = torch.zeros(n_rows, dtype=torch.float64)
        self.was_done = torch.zeros(n_rows, dtype=torch.bool)
        self.rows: list[list[int]] = [[] for _ in range(n_rows)]
        self.shown = [""] * n_rows

    def _stats(self, out) -> dict:
        if self.m.kind == "hf":  # grafted layers report to the model's graft state, not in the output
            return {layer: s for layer, s in self.m.model.mot_graft.stats.items()}
        return out.stats

    def _piece(self, b: int, t: int) -> str:
        if self.m.kind != "hf":
            return self.m.tokenizer.decode([t])
        self.rows[b].append(t)
        full = self.m.tokenizer.decode(self.rows[b], skip_special_tokens=True)
        piece, self.shown[b] = full[len(self.shown[b]):], full
        return piece

    def __call__(self, i: int, nxt: torch.Tensor, done: torch.Tensor) -> None:
        self.job.check()
        out = self.seen["out"]
        nxt, done = nxt.cpu(), done.cpu()
        # the log-probability the decoder records for this token (temperature 1, no filter)
        lp = torch.log_softmax(out.logits[:, -1].float().cpu(), -1).gather(-1, nxt[:, None])[:, 0]
        live = ~self.was_done
        self.total.add_(lp.double() * live)
        self.count.add_(live.double())
        route = None
        if i > 0 and self.m.thought_layers:  # the forward call behind these logits read the previous token
            route = {str(layer): _selected(s["row_load"].cpu()) for layer, s in self._stats(out).items()}
        text = [self._piece(b, t) if lv else "" for b, (t, lv) in enumerate(zip(nxt.tolist(), live.tolist(),
                                                                                strict=True))]
        self.job.emit("step", {"i": i, "text": text, "done": done.tolist(),
                               "loglik": (self.total / self.count.clamp(min=1)).tolist(), "route": route})
        self.was_done = done.clone()


def run_think(m: ServedModel, req: ThinkRequest, job: Job, embedder=None) -> None:
    """``mot think`` (``mot think --model NAME`` for a pretrained model) for the page: ``start``, one
    ``step`` per token position, ``result``."""
    seeds, crea = branch_plan(req.branches, req.seed, req.branch_seeds, req.creativity)
    kw = dict(branches=req.branches, seed=req.seed, branch_seeds=req.branch_seeds, creativity=req.creativity,
              max_new_tokens=req.max_tokens, temperature=req.temperature, top_k=req.top_k)
    if m.kind == "hf":
        from ..hf.generate import think_hf as think_fn

        kw["chat"] = m.chat
        prompt = req.prompt
        shown_crea = crea
    else:
        from ..generation.autoregressive import think as think_fn

        prompt = m.tokenizer.decode(prepare_prompt(m.tokenizer, req.prompt, m.model.config.block_size))
        shown_crea = crea if m.thought_layers else None  # a dense model ignores creativity
    job.emit("start", {"mode": "think", "model": m.name, "prompt": prompt, "seeds": seeds, "creativity": shown_crea,
                       "layers": m.thought_layers, "n_branches": m.n_branches})
    with watching(m, job) as seen:
        res = think_fn(m.model, m.tokenizer, req.prompt, on_token=_StepTracker(m, job, seen, len(seeds)), **kw)
    d = res.to_dict()
    d["diversity"] = diversity([b.text for b in res.branches], embedder, d["diversity"])
    job.emit("result", d)


def diversity(texts: list[str], embedder=None, lexical: dict | None = None) -> dict:
    """The set's diversity as ``mot think`` prints it (distinct-2, distinct-3, self-BLEU; ``lexical`` when
    already computed), plus, with an ``embedder`` (``mot serve --semantic``), the mean pairwise cosine
    distance and the Vendi score of the texts' sentence embeddings (:mod:`~mixture_of_thoughts.metrics.semantic`).
    NaN (a set of one) becomes None, which JSON has."""
    d = dict(lexical if lexical is not None else set_diversity(texts))
    if embedder is not None and len(texts) > 1:
        from ..metrics.semantic import mean_pairwise_cosine_distance, vendi_score_embeddings

        emb = embedder.embed(texts)
        d["semantic_distance"] = mean_pairwise_cosine_distance(emb)
        d["vendi_semantic"] = vendi_score_embeddings(emb)
    return {k: (None if v != v else float(v)) for k, v in d.items()}


# ----------------------------------------------------------------------------- diffusion

def _frames(m: ServedModel, trajectory: list[torch.Tensor]) -> list[tuple[int, list[str]]]:
    """At most :data:`MAX_FRAMES` evenly spaced ``(step, rows)`` of a trajectory, ``[MASK]`` as :data:`MASK`."""
    n = len(trajectory)
    picks = sorted({round(i * (n - 1) / max(1, min(MAX_FRAMES, n) - 1)) for i in range(min(MAX_FRAMES, n))})
    chars = m.tokenizer.chars
    chars = chars + [MASK] * (mask_id(m.model) + 1 - len(chars))  # [MASK] is the id after the vocabulary
    return [(i, ["".join(chars[t] for t in row) for row in trajectory[i].tolist()]) for i in picks]


def run_diffuse(m: ServedModel, req: DiffuseRequest, job: Job, embedder=None) -> None:
    """``mot diffuse`` for the page: ``start``, the first round's denoising as ``frame`` events, ``result``
    (branches ranked by the ELBO evaluator, as the command prints them)."""
    from ..generation.denoise_search import branch_search

    ids = prepare_prompt(m.tokenizer, req.prompt, None)
    seeds = [req.seed + i for i in range(req.branches)]
    job.emit("start", {"mode": "diffuse", "model": m.name, "prompt": m.tokenizer.decode(ids), "seeds": seeds,
                       "creativity": req.denoising.creativity, "layers": m.thought_layers, "n_branches": m.n_branches})
    with watching(m, job):
        res = branch_search(m.model, m.tokenizer, req.prompt, length=req.length, branches=req.branches,
                            keep=req.keep, seed=req.seed, trajectory=True, **dataclasses.asdict(req.denoising))
    _emit_frames(m, job, res.trajectory)
    d = res.to_dict()
    d["diversity"] = diversity([b["text"] for b in d["branches"]], embedder)
    job.emit("result", d)


def _emit_frames(m: ServedModel, job: Job, trajectory) -> None:
    """The denoising, one ``frame`` event a step (stopping if the client has gone)."""
    for step, rows in _frames(m, trajectory):
        job.check()
        job.emit("frame", {"step": step, "steps": len(trajectory) - 1, "rows": rows})


def run_renoise(m: ServedModel, req: RenoiseRequest, job: Job, embedder=None) -> None:
    """``mot renoise`` for the page: ``start``, the variants' denoising as ``frame`` events, ``result``."""
    from ..generation.denoise_search import renoise

    seeds = [req.seed + i for i in range(req.variants)]
    job.emit("start", {"mode": "renoise", "model": m.name, "prompt": req.text, "seeds": seeds,
                       "creativity": req.denoising.creativity, "layers": m.thought_layers, "n_branches": m.n_branches})
    with watching(m, job):
        res = renoise(m.model, m.tokenizer, req.text, noise=req.noise, variants=req.variants, seed=req.seed,
                      trajectory=True, **dataclasses.asdict(req.denoising))
    if res.trajectory:  # noise 0 returns the text without denoising anything
        _emit_frames(m, job, res.trajectory)
    d = res.to_dict()
    d["diversity"] = diversity([v["text"] for v in d["variants"]], embedder)
    job.emit("result", d)
