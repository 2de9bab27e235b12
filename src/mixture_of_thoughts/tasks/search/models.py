"""The model side of search: a line model continuing several prompts at once, a diffusion infiller."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from ...errors import ConfigError
from ...generation.decoder import left_pad
from ...rng import RowNoise
from ...steering.experts import ExpertController


class LineModel:
    """A character-level causal model continuing several prompts at once (thought branches included).

    Prompts of different lengths are left-padded with newlines, which the training text has between
    traces; a row's cost is its own prompt plus what it writes. With ``modes`` (a model trained by
    :func:`..modes.train_modes`), the row with seed ``s`` decodes with mode ``s mod modes``: branch
    ``s mod modes`` forced in every thought layer, or, with ``code`` (the token id of mode code 0),
    code ``code + s mod modes`` written as the row's first position after the shared prompt.
    """

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, creativity: float | None = None,
                 modes: int = 0, code: int | None = None):
        self.model, self.tok = model.eval(), tokenizer
        self.temperature, self.creativity, self.modes = float(temperature), creativity, int(modes)
        if code is not None and self.modes < 1:
            raise ConfigError("mode codes need the number of modes: pass modes >= 1 with code")
        self.code = code
        self.dev = next(model.parameters()).device
        self.pad = tokenizer.encode("\n")[0]
        self.block_size = model.config.block_size - (code is not None)  # the characters a prompt and its text fill

    @property
    def shares_prompts(self) -> bool:
        """Rows with the same prompt (and mode) read it once: true for a dense model and for modes,
        which decode without thought noise (a thought model's prompt activations depend on each row's
        noise, so each of its rows reads its own prompt)."""
        return not self.model.config.has_thoughts or self.modes > 0

    @torch.no_grad()
    def continue_(self, prompts: list[str], seeds: list[int], max_chars: int,
                  stop: str) -> list[tuple[str, float, int]]:
        """Per prompt: ``(text written up to and including stop, its log-likelihood, positions used)``.

        With :attr:`shares_prompts`, each distinct prompt (and mode) is read once and its KV cache
        copied to its rows; its positions are charged to its first row, the others pay for what they
        write only.
        """
        from ...generation.autoregressive import LOOKAHEAD, generate
        from ...generation.decoder import Sampling, decode

        ids = [self.tok.encode(p, unknown="replace") for p in prompts]
        block = self.model.config.block_size
        T0 = max(len(x) for x in ids)
        coded = self.code is not None
        if T0 + coded + max_chars > block:
            raise ConfigError(f"a prompt of {T0} characters plus {coded + max_chars} new ones is longer than the "
                              f"model's block size {block}")
        batch, _ = left_pad(ids, self.pad, self.dev)
        noise = RowNoise(seeds, self.dev, lookahead=min(LOOKAHEAD, max_chars))
        stops = [self.tok.encode(stop)]
        modes = torch.tensor(seeds, device=self.dev) % self.modes if self.modes else None
        forced = None if coded else modes  # branches forced per row (a code is read, not forced)
        if self.shares_prompts:
            with contextlib.ExitStack() as stack:
                ctl = stack.enter_context(ExpertController(self.model)) if forced is not None else None
                step = _shared_prompt_step(self.model, ctl, forced, first=self.code + modes if coded else None)
                gen = decode(step, batch, max_chars, noise, Sampling(self.temperature), stop_sequences=stops)
        else:
            c = None if self.creativity is None else torch.full((len(ids),), float(self.creativity), device=self.dev)
            gen = generate(self.model, batch, max_chars, noise, temperature=self.temperature, creativity=c,
                           stop_ids=stops[0])
        keys = list(zip(prompts, forced.tolist() if forced is not None else [None] * len(prompts), strict=True))
        first = {}
        for b, key in enumerate(keys):
            first.setdefault(key, b)
        new = gen.tokens[:, T0:].tolist()
        lls = gen.logprobs.cumsum(-1)
        out = []
        for b, L in enumerate(gen.lengths.tolist()):
            read = (len(ids[b]) if not self.shares_prompts or first[keys[b]] == b else 0) + coded
            out.append((self.tok.decode(new[b][:L]), float(lls[b, L - 1]) if L else 0.0, read + L))
        return out

    @torch.no_grad()
    def sample_distinct(self, prompt: str, seed: int, width: int, max_chars: int, stop: str,
                        prune: Callable[[list[str]], tuple[list[float], list[int]]] | None = None,
                        ) -> list[tuple[str | None, float, int]]:
        """``width`` distinct continuations of ``prompt``, sampled *without replacement* from the model at
        its temperature: stochastic beam search (Kool, van Hoof & Welling, 2019, "Stochastic Beams and
        Where to Find Them", ICML).

        Every partial text carries its log-probability ``phi`` and a perturbed value ``G``, the largest
        Gumbel-perturbed log-probability among its completions; a child's Gumbel draw is conditioned on
        its siblings' maximum being the parent's ``G`` (the paper's eq. 23, in its stable form), and the
        beam keeps the ``width`` partial texts of largest ``G`` at every step, a finished one as its own
        single child. The beam ends as the exact top-``width`` of the perturbed values of whole texts:
        sorted by ``G``, its first ``m`` rows are a sample without replacement of size ``m`` (what
        best-of-N reads at a smaller budget), and no two rows are the same text. The rows see each
        other, where independent samples repeat the model's likeliest texts.

        With ``prune`` the beam is a search (the value's pruning, Tree of Thoughts' BFS inside the beam):
        each time rows end a line, ``prune(texts)`` gets their texts so far and returns a log-weight for
        each and the positions its judgement cost (a learned value's reads). A weight ``w`` multiplies
        the probability of every completion of the row by ``exp(w)``: its ``phi`` and ``G`` move by
        ``w`` (the perturbed maximum of a subtree scaled by a constant moves by its log, so the beam
        samples without replacement from the weighted distribution: a twist). 0 keeps the row as it is;
        -inf drops it: it leaves the beam, its place taken by the next candidates of the following step.
        A dropped row is returned too, with text ``None`` and charged what it wrote and what judging it
        cost, in ``G`` order among the finished rows: a row read at any budget pays for the dropped rows
        ranked above it, which a beam of that width would have carried (an over-count where rows share
        prefixes, never an under-count of what was judged).

        Returns per row, in ``G`` order: ``(text written up to and including stop, its log-likelihood
        at temperature 1, positions used)``; the prompt is read once, charged to the first row. A dense
        model only (a thought model's rows would each read the prompt with their own noise).
        """
        from ... import rng

        if self.model.config.has_thoughts:
            raise ConfigError("sampling without replacement runs a dense model (its beam rows share one prompt read)")
        if not self.temperature > 0:
            raise ConfigError(f"sampling without replacement needs a temperature > 0, got {self.temperature}")
        ids = self.tok.encode(prompt, unknown="replace")
        T0 = len(ids)
        if T0 + max_chars > self.block_size:
            raise ConfigError(f"a prompt of {T0} characters plus {max_chars} new ones is longer than the model's "
                              f"block size {self.block_size}")
        stop_ids = torch.tensor(self.tok.encode(stop), device=self.dev)
        S_ = len(stop_ids)
        cache = self.model.new_cache(1)
        logits = self.model(torch.tensor([ids], device=self.dev), cache=cache, last_only=True).logits[:, -1]
        V = logits.shape[-1]
        noise = RowNoise([seed], self.dev)
        stream = rng.stream_id(rng.SAMPLE, 0, 1)
        tokens = torch.full((1, max_chars), self.pad, dtype=torch.long, device=self.dev)
        phi = torch.zeros(1, device=self.dev)  # log-probability at the temperature
        ll = torch.zeros(1, device=self.dev)  # log-likelihood at temperature 1
        G = torch.zeros(1, device=self.dev)  # the root's perturbed value: any constant
        lengths = torch.zeros(1, dtype=torch.long, device=self.dev)
        done = torch.zeros(1, dtype=torch.bool, device=self.dev)
        judged = torch.zeros(1, dtype=torch.long, device=self.dev)  # positions spent judging each row's lines
        newline = self.tok.encode("\n")[0]
        dropped: list[tuple[float, int]] = []  # (G when dropped, positions charged)
        for i in range(max_chars):
            R = G.shape[0]
            logp1 = torch.log_softmax(logits.float(), -1)  # (R, V)
            phi_c = phi[:, None] + torch.log_softmax(logits.float() / self.temperature, -1)
            g = noise.gumbel(stream, torch.tensor([T0 + i], device=self.dev), (width, V))[0, 0, :R]
            Gc = phi_c + g  # (R, V): unconditioned perturbed values of the children
            # a finished text has no children, but stays in the beam as itself
            Gt = truncated_gumbel(G[:, None], Gc).masked_fill(done[:, None], float("-inf"))
            cands = torch.cat([Gt.reshape(-1), G.masked_fill(~done, float("-inf"))])
            keep = min(width, int(torch.isfinite(cands).sum()))
            top, idx = cands.topk(keep)
            fin = idx >= R * V
            parent = torch.where(fin, idx - R * V, idx // V)
            tok = torch.where(fin, self.pad, idx % V)
            new = ~fin
            tokens = tokens[parent]
            tokens[new, i] = tok[new]
            phi = torch.where(fin, phi[parent], phi_c[parent, tok])
            ll = torch.where(fin, ll[parent], ll[parent] + logp1[parent, tok])
            lengths = torch.where(fin, lengths[parent], i + 1)
            judged = judged[parent]
            G = top
            ends = (lengths >= S_) & (tokens[:, max(0, i + 1 - S_):i + 1] == stop_ids).all(-1) if i + 1 >= S_ \
                else torch.zeros_like(fin)
            done = fin | (new & ends)
            if prune is not None:
                lines = (new & ~done & (tok == newline)).nonzero().flatten().tolist()
                if lines:
                    w, cost = prune([self.tok.decode(tokens[r, :i + 1].tolist()) for r in lines])
                    judged[lines] += torch.tensor(cost, dtype=torch.long, device=self.dev)
                    drop = [r for r, x in zip(lines, w, strict=True) if x == float("-inf")]
                    dropped += [(float(G[r]), int(lengths[r] + judged[r])) for r in drop]
                    w = torch.tensor(w, dtype=G.dtype, device=self.dev)
                    G[lines] += w  # -inf for a dropped row
                    phi[lines] += w.clamp(min=torch.finfo(G.dtype).min)
                    done[drop] = True
            if bool(done.all()) or i == max_chars - 1:
                break
            cache.reorder(parent)
            logits = self.model(tok[:, None], cache=cache, last_only=True).logits[:, -1]
        live = torch.isfinite(G).tolist()
        rows = [(g, self.tok.decode(row[:L]), x, L + j) for g, row, x, L, j, ok in zip(
            G.tolist(), tokens.tolist(), ll.tolist(), lengths.tolist(), judged.tolist(), live, strict=True) if ok]
        rows += [(g, None, float("nan"), cost) for g, cost in dropped]
        rows.sort(key=lambda r: -r[0])  # stable: the beam's rows keep their order (already by G)
        return [(t, x, int(c) + (T0 if b == 0 else 0)) for b, (_, t, x, c) in enumerate(rows)]


def truncated_gumbel(G: torch.Tensor, Gc: torch.Tensor) -> torch.Tensor:
    """Children's perturbed values ``Gc`` ``(R, V)`` conditioned on their maximum being the parent's ``G``
    ``(R, 1)``: ``-log(exp(-G) - exp(-max Gc) + exp(-Gc))`` in the stable form of Kool et al. (2019),
    appendix B.3 (the largest child gets exactly ``G``, the order of the children is kept)."""
    Z = Gc.max(-1, keepdim=True).values
    v = G - Gc + torch.log(-torch.expm1(Gc - Z).clamp(max=-1e-30))  # log(1 - exp(Gc - Z)), finite at the max
    return G - v.clamp(min=0) - torch.log1p(torch.exp(-v.abs()))


def _shared_prompt_step(model, ctl: ExpertController | None = None, modes: torch.Tensor | None = None,
                        first: torch.Tensor | None = None):
    """A decoder step function that reads each distinct prompt row once: a dense causal model, or a
    thought model without noise whose rows force the branches ``modes`` through ``ctl`` (a distinct
    prompt is then a distinct (prompt, mode) pair). With ``first`` (B,), each row then reads that token
    (a mode code) before its first sampled one; it is in the cache, not in the written text."""
    from ...generation.decoder import Step

    cache = None

    def step(tokens: torch.Tensor, length: int) -> Step:
        nonlocal cache
        if cache is None:
            rows = tokens[:, :length] if modes is None else torch.cat([tokens[:, :length], modes[:, None]], 1)
            uniq, inv = torch.unique(rows, dim=0, return_inverse=True)
            if modes is not None:
                ctl.force_rows(uniq[:, -1])
                uniq = uniq[:, :-1]
            cache = model.new_cache(uniq.shape[0])
            out = model(uniq, cache=cache, last_only=True)
            cache.k, cache.v = cache.k[:, inv], cache.v[:, inv]
            if modes is not None:
                ctl.force_rows(modes)
            if first is not None:
                return Step(model(first[:, None], cache=cache, last_only=True).logits[:, -1, :], {})
            return Step(out.logits[inv, -1, :], {})
        out = model(tokens[:, length - 1:length], cache=cache, last_only=True)
        return Step(out.logits[:, -1, :], {})

    return step


class Infiller:
    """A masked-diffusion model writing the rest of several traces at once (the hybrid's second half).

    Each row's prompt is kept; the model denoises ``length`` positions in all with ``steps`` top-k
    steps. A row's cost is what the model reads: ``length`` positions at every step.
    """

    def __init__(self, model, tokenizer, *, steps: int = 16, temperature: float = 1.0):
        self.model, self.tok = model.eval(), tokenizer
        self.steps, self.temperature = int(steps), float(temperature)
        self.dev = next(model.parameters()).device
        self.pad = tokenizer.encode("\n")[0]

    @torch.no_grad()
    def complete(self, prompts: list[str], seeds: list[int], length: int) -> list[tuple[str, int]]:
        from ...generation.diffusion import generate

        ids = [self.tok.encode(p, unknown="replace") for p in prompts]
        T0 = max(len(x) for x in ids)
        if length > self.model.config.block_size or length <= T0:
            raise ConfigError(f"the infill length {length} must exceed the longest prompt ({T0}) and fit the "
                              f"diffusion model's block size {self.model.config.block_size}")
        batch, _ = left_pad(ids, self.pad, self.dev)
        out = generate(self.model, batch, length, RowNoise(seeds, self.dev), sampler="topk",
                       steps=self.steps, temperature=self.temperature)
        texts = [self.tok.decode(row[T0:]) for row in out.tokens.tolist()]
        return [(t, out.steps * length) for t in texts]
