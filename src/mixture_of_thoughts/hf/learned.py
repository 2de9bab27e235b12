"""Learned thought branches: B small sets of parameters in a frozen pretrained model, trained with a
mixture objective so that each branch owns a different part of the response distribution.

Thought noise (``hf.graft``) and temperature perturb every branch the same way; here each branch is a
set of *learned* directions instead. Branch ``b`` owns one "thought vector" per chosen decoder layer
(default: the top 4), added to the residual stream at the input of that layer at every position (prompt
and response) of the rows it decodes: ``vectors`` of shape ``(B, L, d)``, a few thousand parameters.

* **Data** (:func:`.branch_data.build_branch_data`): ``responses`` samples per prompt from the plain model, filtered
  (degenerate texts, and texts the model itself finds unlikely: mean NLL above ``max_nll``).
* **Training** (:func:`.branch_training.train_branches`): the base model is frozen; the objective over the first K
  response tokens is a mixture over branches, so that the branches divide the responses among them:

  - ``soft-em``: ``-log (1/B) sum_b exp(ll_b)`` (the mixture likelihood; its gradient weighs branch b
    by the EM responsibility ``r_b = softmax_b(ll_b)``);
  - ``wta``: multiple-choice learning (Guzman-Rivera et al., NeurIPS 2012; stochastic MCL, Lee et al.,
    NeurIPS 2016): the best branch takes the response, relaxed as in Rupprecht et al. (ICCV 2017):
    weight ``1 - eps`` on the winner, ``eps / (B - 1)`` on each other branch;
  - plus ``balance * KL(mean_batch r || uniform)`` so every branch stays in use (cf. the Switch
    Transformer's load balancing).

  Related: hash-conditioning (Nagarajan et al., 2025, "Roll the dice & look before you leap"), where
  training with a random seed prefix beat temperature for diversity; here the "seed" is a branch index
  that owns learned parameters. Speed: the frozen lower layers run once per prompt group without grad
  (their output is cached); each step runs only the upper layers, for the B branch copies, and the LM
  head on the K response positions.
* **Use** (:func:`think_learned`, :func:`generate_learned`): row ``i`` decodes with branch ``i mod B``
  and seed ``seed + i``; a row decoded alone (its branch and seed) is the same text.

Saved as ``branches.safetensors`` (the vectors), ``branches.json`` (:class:`BranchesConfig`: the model,
layers, scales, training settings, data hash) and ``history.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import layer_set
from ..errors import CheckpointError, ConfigError
from ..generation.autoregressive import LOOKAHEAD
from ..generation.decoder import Sampling, ThinkResult, decode, left_pad
from ..rng import RowNoise
from .generate import check_context, sample_branches, stop_token_ids
from .graft import SUPPORTED, get_path
from .vary import RowPositionNoise, pad_token_id, padded_hf_step

log = logging.getLogger(__name__)
CONFIG_FILE = "branches.json"
WEIGHTS_FILE = "branches.safetensors"
HISTORY_FILE = "history.json"
FORMAT = 1
FINGERPRINT_VALUES = 4096  # embedding values hashed to tell two models of the same shapes apart

Progress = Callable[[str, int, int, dict], None]  # progress(stage, done, total, info)



def check_int(name: str, v, lo: int, hi: int | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{name} must be an integer {rng}, got {v!r}")


# ------------------------------------------------------------------------------------ the branches


@dataclass
class BranchesConfig:
    """What a set of learned branches is and how it was made: saved as ``branches.json``.

    ``hidden_rms[j]`` is the median per-token RMS of the hidden states at the input of ``layers[j]``,
    measured on the training data; ``init_scale`` is relative to it (vector std ``init_scale * rms``).
    """

    model: str  # the name or path the model was given by
    model_type: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    fingerprint: str  # a hash of the first embedding values: the same weights, not only the same shapes
    layers: list[int]
    branches: int
    init_scale: float = 0.0
    hidden_rms: list[float] = field(default_factory=list)
    training: dict = field(default_factory=dict)
    data_sha256: str = ""
    format: int = FORMAT

    def __post_init__(self):
        if self.branches < 1:
            raise ConfigError(f"branches must be >= 1, got {self.branches}")
        if not self.layers or sorted(set(self.layers)) != list(self.layers) \
                or not all(0 <= i < self.num_layers for i in self.layers):
            raise ConfigError(f"layers must be increasing indices in [0, {self.num_layers - 1}], got {self.layers}")
        if self.hidden_rms and len(self.hidden_rms) != len(self.layers):
            raise ConfigError(f"hidden_rms has {len(self.hidden_rms)} values for {len(self.layers)} layers")

    def describe(self) -> str:
        return (f"{self.model} ({self.model_type}, hidden size {self.hidden_size}, {self.num_layers} layers, "
                f"vocabulary {self.vocab_size})")


class LearnedBranches(nn.Module):
    """``vectors``: ``(B, L, d)``, branch ``b``'s vector for decoder layer ``config.layers[j]`` at ``[b, j]``."""

    def __init__(self, config: BranchesConfig):
        super().__init__()
        self.config = config
        self.vectors = nn.Parameter(torch.zeros(config.branches, len(config.layers), config.hidden_size))

    @property
    def n_branches(self) -> int:
        return self.config.branches

    @property
    def layers(self) -> list[int]:
        return list(self.config.layers)

    @torch.no_grad()
    def reset(self, generator: torch.Generator) -> LearnedBranches:
        """Draw the vectors from N(0, (init_scale * hidden_rms[j])^2): distinct branches get distinct
        gradients (identical ones would stay identical forever)."""
        rms = torch.tensor(self.config.hidden_rms or [1.0] * len(self.layers))
        z = torch.randn(self.vectors.shape, generator=generator)
        self.vectors.copy_(z * (self.config.init_scale * rms)[None, :, None])
        return self


def model_fingerprint(model: nn.Module) -> str:
    w = model.get_input_embeddings().weight.detach()
    return hashlib.sha256(w.float().flatten()[:FINGERPRINT_VALUES].cpu().numpy().tobytes()).hexdigest()[:16]


def resolve_layers(spec: str | Sequence[int], n_layers: int) -> list[int]:
    """``topN`` (the last N decoder layers), ``all``, ``lower``, ``upper`` or indices, checked
    (:func:`..config.layer_set`)."""
    return layer_set(spec, n_layers)


def new_branches(model: nn.Module, branches: int, layers: str | Sequence[int] = "top4", *, model_name: str = "",
                 init_scale: float = 0.0, hidden_rms: Sequence[float] | None = None,
                 generator: torch.Generator | None = None) -> LearnedBranches:
    """Branches for ``model`` (zero vectors unless ``init_scale > 0`` and a ``generator`` are given)."""
    cfg = model.config
    idx = resolve_layers(layers, cfg.num_hidden_layers)
    bc = BranchesConfig(model_name, cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size,
                        model_fingerprint(model), idx, branches, float(init_scale),
                        [float(r) for r in hidden_rms] if hidden_rms is not None else [])
    module = LearnedBranches(bc).to(next(model.parameters()).device)
    if init_scale > 0:
        if generator is None:
            raise ConfigError("init_scale > 0 needs a seeded torch.Generator")
        module.reset(generator)
    return module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a supported Hugging Face causal LM (as ``hf.graft`` finds it)."""
    mtype = getattr(model.config, "model_type", None)
    if mtype not in SUPPORTED:
        raise ConfigError(f"learned branches need one of {', '.join(sorted(SUPPORTED))}, got {mtype!r}")
    return get_path(model, SUPPORTED[mtype][0])


@contextlib.contextmanager
def apply_branches(model: nn.Module, branches: LearnedBranches, row_branch: torch.Tensor):
    """Add ``branches.vectors[row_branch[r], j]`` to the hidden states of row ``r`` at the input of
    decoder layer ``branches.layers[j]`` (forward pre-hooks, every position), removed on exit.

    Args:
        row_branch: ``(rows,)`` branch index of each batch row; a forward call must have that many rows.
    """
    row_branch = torch.as_tensor(row_branch, dtype=torch.long)
    if row_branch.dim() != 1 or (row_branch.numel() and not 0 <= int(row_branch.min()) <= int(row_branch.max())
                                 < branches.n_branches):
        raise ConfigError(f"row_branch must be a 1-D tensor of indices in [0, {branches.n_branches - 1}]")
    blocks = decoder_layers(model)
    handles = []

    def hook_for(j: int):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            if h.shape[0] != row_branch.numel():
                raise ConfigError(f"apply_branches got {row_branch.numel()} row branches for a batch of "
                                  f"{h.shape[0]} rows")
            v = branches.vectors[row_branch.to(h.device), j]  # (rows, d)
            h = h + v[:, None, :].to(h.dtype)
            return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
        return hook

    try:
        for j, i in enumerate(branches.layers):
            handles.append(blocks[i].register_forward_pre_hook(hook_for(j), with_kwargs=True))
        yield branches
    finally:
        for hd in handles:
            hd.remove()


def save_branches(branches: LearnedBranches, out: str | Path, *, history: dict | None = None,
                  force: bool = False) -> Path:
    """Write ``branches.safetensors``, ``branches.json`` (and ``history.json``) into directory ``out``,
    built in a temporary directory and renamed: an interrupted save leaves nothing half-written."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists: pass --force to overwrite it")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file({"vectors": branches.vectors.detach().float().cpu().contiguous()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": str(FORMAT)})
        (tmp / CONFIG_FILE).write_text(json.dumps(asdict(branches.config), indent=1), encoding="utf-8")
        if history is not None:
            (tmp / HISTORY_FILE).write_text(json.dumps(history, indent=1), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


SHIPPED = Path(__file__).parent.parent / "assets" / "branches"  # branches that ship with the package, by name


def branches_dir(path: str | Path) -> Path:
    """A learned-branches directory: ``path`` itself, or the shipped branches of that name (``assets/branches``)."""
    p = Path(path).expanduser()
    if not p.exists() and (SHIPPED / str(path)).is_dir():
        return SHIPPED / str(path)
    return p


def read_branches_config(path: str | Path) -> BranchesConfig:
    p = branches_dir(path)
    f = p / CONFIG_FILE
    if not f.is_file() or not (p / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{p} is not a learned-branches directory (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
                              f"write one with mot train-branches, or name one that ships: "
                              f"{', '.join(sorted(d.name for d in SHIPPED.glob('*') if d.is_dir())) or 'none'})")
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
        return BranchesConfig(**d)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{f} is not a valid branches config: {e}") from None


def load_branches(path: str | Path, model: nn.Module | None = None, *, strict: bool = True) -> LearnedBranches:
    """The branches saved in ``path``; checked against ``model`` when given.

    Raises:
        CheckpointError: missing or corrupt files; a model of another architecture, hidden size, layer
            count or vocabulary; with ``strict``, a model of the same shapes but other weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = branches_dir(path)
    cfg = read_branches_config(path)
    try:
        vec = load_file(str(Path(path) / WEIGHTS_FILE))["vectors"]
    except (OSError, KeyError, SafetensorError) as e:
        raise CheckpointError(f"{Path(path) / WEIGHTS_FILE} is unreadable: {e}") from None
    if tuple(vec.shape) != (cfg.branches, len(cfg.layers), cfg.hidden_size):
        raise CheckpointError(f"{path}: vectors of shape {tuple(vec.shape)} do not match the config "
                              f"({cfg.branches}, {len(cfg.layers)}, {cfg.hidden_size})")
    module = LearnedBranches(cfg)
    with torch.no_grad():
        module.vectors.copy_(vec)
    if model is not None:
        mc = model.config
        got = (mc.model_type, mc.hidden_size, mc.num_hidden_layers, mc.vocab_size)
        if got != (cfg.model_type, cfg.hidden_size, cfg.num_layers, cfg.vocab_size):
            raise CheckpointError(f"the branches in {path} were trained on {cfg.describe()}; this model is "
                                  f"{got[0]} with hidden size {got[1]}, {got[2]} layers and vocabulary {got[3]}: "
                                  f"load the model they were trained on (--model {cfg.model})")
        if model_fingerprint(model) != cfg.fingerprint:
            msg = (f"the branches in {path} were trained on {cfg.describe()}; this model has the same shapes "
                   f"but other weights")
            if strict:
                raise CheckpointError(msg + f": load the model they were trained on (--model {cfg.model})")
            log.warning(msg)
        module.to(next(model.parameters()).device)
    return module


# ------------------------------------------------------------------------------------ use


@torch.no_grad()
def decode_rows(model, tokenizer, rows: list[list[int]], seeds: list[int], *, max_new_tokens: int,
                 temperature: float, top_p: float | None = None, min_p: float | None = None,
                 branches: LearnedBranches | None = None, row_branch: Sequence[int] | None = None,
                 shared: int = 1):
    """``(continuation ids, text, mean NLL)`` per row: one left-padded pass, each row with its own seed
    (``RowPositionNoise``: the same decoded alone) and, with ``branches``, its own branch. ``shared``:
    the rows come in runs of that many with the same prompt (and no branches), prefilled once per run."""
    if shared > 1 and (branches is not None or len(rows) % shared
                       or any(rows[i] != rows[i - i % shared] for i in range(len(rows)))):
        raise ValueError("shared prefill needs runs of equal prompts and no branches")
    dev = next(model.parameters()).device
    ids, mask = left_pad(rows, pad_token_id(tokenizer), dev)
    check_context(model, ids.shape[1], max_new_tokens)
    look = min(LOOKAHEAD, max_new_tokens)
    noise = RowPositionNoise(RowNoise(seeds, dev), ids.shape[1] - mask.sum(-1), lookahead=look)
    ctx = apply_branches(model, branches, torch.tensor(list(row_branch), device=dev)) \
        if branches is not None else contextlib.nullcontext()
    model.eval()
    with ctx:
        gen = decode(padded_hf_step(model, mask, shared=shared), ids, max_new_tokens, noise,
                     Sampling(temperature, None, top_p, min_p), stop_ids=stop_token_ids(tokenizer, model))
    T0 = ids.shape[1]
    toks, lp, out = gen.tokens[:, T0:].tolist(), gen.logprobs.cpu(), []
    for b, L in enumerate(gen.lengths.tolist()):
        cont = toks[b][:L]
        out.append((cont, tokenizer.decode(cont, skip_special_tokens=True),
                    -float(lp[b, :L].mean()) if L else float("nan")))
    return out


def generate_learned(model: nn.Module, tokenizer, branches: LearnedBranches, ids_list: Sequence[list[int]],
                     seeds: Sequence[int], branch_of: Sequence[int] | None = None, *, max_new_tokens: int = 32,
                     temperature: float = 0.0, top_p: float | None = None,
                     min_p: float | None = None) -> list[tuple[list[int], str, float]]:
    """Per prompt (in order) and per seed ``j``: ``(continuation ids, text, mean NLL under the branch
    model)``, decoded with branch ``branch_of[j]`` (default ``j mod B``); all rows in one left-padded pass
    (the output format of ``experiments.compare_lm._generate``)."""
    seeds = list(seeds)
    branch_of = [j % branches.n_branches for j in range(len(seeds))] if branch_of is None else list(branch_of)
    if len(branch_of) != len(seeds):
        raise ConfigError(f"branch_of has {len(branch_of)} entries for {len(seeds)} seeds")
    rows = [list(ids) for ids in ids_list for _ in seeds]
    return decode_rows(model, tokenizer, rows, [s for _ in ids_list for s in seeds], max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, min_p=min_p, branches=branches,
                        row_branch=[b for _ in ids_list for b in branch_of])


def think_learned(model: nn.Module, tokenizer, prompt: str, branches_module: LearnedBranches, *,
                  branches: int | None = None, seed: int = 0, branch_seeds: Sequence[int] | None = None,
                  branch_ids: Sequence[int] | None = None, max_new_tokens: int = 50, temperature: float = 0.0,
                  top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                  stop: str | None = None, on_token=None, chat: bool | None = None) -> ThinkResult:
    """N branches of one prompt in one batched pass: row ``i`` has seed ``seed + i`` and learned branch
    ``i mod B`` (``branches`` defaults to B). A row is reproducible alone: ``branch_seeds=[seed + i]``
    decodes it with branch ``i mod B`` again (``branch_ids`` default ``(s - seed) mod B`` for each seed).

    Returns:
        :class:`~mixture_of_thoughts.generation.decoder.ThinkResult`; each branch's ``routing`` is, per
        branch layer, the one-hot of the learned branch it used.
    """
    B = branches_module.n_branches
    seeds = list(branch_seeds) if branch_seeds is not None else [seed + i for i in range(branches or B)]
    if not seeds:
        raise ConfigError("branches must be >= 1")
    ids = list(branch_ids) if branch_ids is not None else [(s - seed) % B for s in seeds]
    if len(ids) != len(seeds) or not all(0 <= b < B for b in ids):
        raise ConfigError(f"branch_ids must give one branch in [0, {B - 1}] per seed, got {ids}")
    row_branch = torch.tensor(ids, device=next(model.parameters()).device)
    with apply_branches(model, branches_module, row_branch):
        res = sample_branches(model, tokenizer, prompt, seeds, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, stop=stop,
                              on_token=on_token, chat=chat)
    for br, b in zip(res.branches, ids, strict=True):
        br.routing = {layer: [float(e == b) for e in range(B)] for layer in branches_module.layers}
    return res
