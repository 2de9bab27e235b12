"""A learned value for search on Game of 24: P(the numbers left can still reach the target).

Tree of Thoughts' BFS wins on Game of 24 because a *value* prunes dead states ("sure / likely /
impossible", Yao et al., 2023): the model's likelihood of its own lines does not tell a state that can
still make 24 from one that cannot. Here every intermediate state of the *training* puzzles is labelled
exactly by the solver (:func:`..tasks.game24.solvable`), and a small network learns the labels; the
solver never sees a validation or test puzzle at search time.

The network (:class:`ValueNet`) reads the numbers left as a *set* of number tokens (one embedding per
number written in the training states, ``<unk>`` for any other) plus the target, through a small
transformer encoder without positions (so the order of the numbers cannot matter), and outputs one
logit. A read is charged to the search budget at one position per character of the state's text
(``"4 9 -> 24"``, :meth:`Value.cost`), as if a character model read it: more than the network's own
token count, so a search that uses the value pays at least what the value costs.

A *value head* (:class:`HeadValue`) reads the language model itself instead: a small MLP on the model's
hidden states at the end of the step line that reached the state, trained on solver-labelled lines of
the training puzzles; its reads cost no positions (the row already wrote them), and it is what
``distinct-value``, ``beam-value`` and ``mcts-value`` prune with by default (``assets/game24/value-head``,
``mot game24 train-value --kind head``).

The trained value ships in ``assets/game24/value`` (``value.safetensors`` and ``value.json``:
vocabulary, sizes, training history, validation figures, the pruning threshold chosen on validation);
``mot game24 train-value`` rebuilds it.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError, DataError
from . import game24
from .search.base import BLOCK_SEP

WEIGHTS, META = "value.safetensors", "value.json"
PAD, UNK = 0, 1
SPECIALS = ("<pad>", "<unk>")
SHIPPED = Path(__file__).parent.parent / "assets" / "game24" / "value"
SHIPPED_HEAD = SHIPPED.parent / "value-head"  # the searches' default: a head on the shipped model


# ------------------------------------------------------------------------------------ data


def state_key(numbers: Iterable[Fraction], target: int = game24.TARGET) -> tuple[tuple[Fraction, ...], int]:
    return tuple(sorted(numbers)), int(target)


def reachable(puzzle, target: int = game24.TARGET) -> set[tuple[tuple[Fraction, ...], int]]:
    """Every state of ``puzzle`` with at least two numbers left (the start included), as sorted numbers:
    the states a search must judge before its last step (a state of one number is judged by the verifier)."""
    out: set = set()

    def rec(nums: tuple[Fraction, ...]) -> None:
        key = state_key(nums, target)
        if len(nums) < 2 or key in out:
            return
        out.add(key)
        for step in game24.steps_of(key[0]):
            rec(game24.after(key[0], step))

    rec(tuple(Fraction(x) for x in puzzle))
    return out


def value_examples(puzzles, targets: Iterable[int] = (game24.TARGET,)) -> list[tuple[tuple[Fraction, ...], int, bool]]:
    """``(numbers, target, solvable)`` for every distinct state of ``puzzles`` and every target (labels
    from the solver). Pass training puzzles only."""
    keys: set = set()
    for p in puzzles:
        states = reachable(p)
        keys |= {(n, int(t)) for n, _ in states for t in targets}
    return [(nums, t, game24.solvable(nums, t)) for nums, t in sorted(keys, key=lambda k: (len(k[0]), k))]


MAX_UP_TO = 24  # every multiset up to 24: 17,550 puzzles, ~0.5 M states


def value_puzzles(train_puzzles, up_to: int, exclude=()) -> list[tuple[int, ...]]:
    """More data for the value: ``train_puzzles`` and then every other four-number multiset from 1 to
    ``up_to``, *solvable or not* (a dead puzzle's states are all negatives), less every multiset in
    ``exclude`` (pass the validation and test puzzles). Their states are labelled by the solver like the
    training puzzles'; no validation or test state is labelled unless another puzzle reaches it too.

    Raises:
        DataError: ``up_to`` below 13 (the numbers of a puzzle) or above :data:`MAX_UP_TO`.
    """
    if isinstance(up_to, bool) or not isinstance(up_to, int) or not game24.HIGH <= up_to <= MAX_UP_TO:
        raise DataError(f"the value's extra puzzles need numbers up to something between {game24.HIGH} and "
                        f"{MAX_UP_TO}, got {up_to!r}")
    held = {tuple(sorted(p)) for p in exclude}
    seen = {tuple(sorted(p)) for p in train_puzzles}
    extra = [p for p in itertools.combinations_with_replacement(range(game24.LOW, up_to + 1), game24.N_NUMBERS)
             if p not in held and p not in seen]
    return list(train_puzzles) + extra


def state_text(numbers: Iterable[Fraction], target: int = game24.TARGET) -> str:
    """What the value reads: the numbers left and the target, e.g. ``"4 9 -> 24"``."""
    return " ".join(game24.fmt(x) for x in sorted(numbers)) + f" -> {target}"


# ------------------------------------------------------------------------------------ the network


@dataclass
class ValueConfig:
    """Sizes and training settings of a value network."""

    d_model: int = 96
    n_layers: int = 3
    n_heads: int = 4
    epochs: int = 12
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self):
        for k in ("d_model", "n_layers", "n_heads", "epochs", "batch_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"value {k} must be an integer >= 1, got {v!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"value d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if not self.lr > 0:
            raise ConfigError(f"value lr must be > 0, got {self.lr}")


class ValueNet(nn.Module):
    """Number tokens and a target token -> one logit of "solvable". Permutation invariant: no positions;
    the target is told apart by a role embedding."""

    def __init__(self, vocab_size: int, cfg: ValueConfig):
        super().__init__()
        d = cfg.d_model
        self.embed = nn.Embedding(vocab_size, d, padding_idx=PAD)
        self.role = nn.Embedding(2, d)  # 0: a number left, 1: the target
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids``: ``(B, 1 + N)`` with the target first, numbers after, ``PAD`` to the right."""
        role = torch.ones_like(ids)
        role[:, 1:] = 0
        h = self.embed(ids) + self.role(role)
        pad = ids == PAD
        h = self.norm(self.encoder(h, src_key_padding_mask=pad))
        keep = (~pad[:, 1:]).unsqueeze(-1).to(h.dtype)
        pooled = (h[:, 1:] * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.head(torch.cat([h[:, 0], pooled], -1)).squeeze(-1)


def _encode(vocab: dict[str, int], keys: list[tuple[tuple[Fraction, ...], int]]) -> torch.Tensor:
    """Token ids ``(B, 1 + N)`` of ``(numbers, target)`` keys: the target first, ``PAD`` to the right."""
    width = 1 + max((len(n) for n, _ in keys), default=1)
    ids = torch.full((len(keys), width), PAD, dtype=torch.long)
    for b, (n, t) in enumerate(keys):  # building a batch from Python lists is per row by nature
        ids[b, :1 + len(n)] = torch.tensor([vocab.get(str(t), UNK)] + [vocab.get(game24.fmt(x), UNK) for x in n])
    return ids


def _auc(p: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (the rank statistic; NaN with one class only)."""
    pos, neg = p[y], p[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = np.empty(len(p))
    order = np.argsort(p, kind="mergesort")
    ranks[order] = np.arange(1, len(p) + 1)
    # ties share the mean rank
    _, inv, counts = np.unique(p, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[y].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def classify(p: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    """What pruning at ``threshold`` does on labelled states: live states lost, dead states kept."""
    keep = p >= threshold
    return {"threshold": threshold, "accuracy": float((keep == y).mean()),
            "live_pruned": float((~keep[y]).mean()) if y.any() else float("nan"),
            "dead_kept": float(keep[~y].mean()) if (~y).any() else float("nan")}


class Value:
    """A trained value network with its vocabulary: ``probs(states)`` in one batched forward."""

    def __init__(self, net: ValueNet, vocab: dict[str, int], cfg: ValueConfig, meta: dict | None = None):
        self.net, self.vocab, self.cfg, self.meta = net.eval(), vocab, cfg, dict(meta or {})

    @property
    def threshold(self) -> float:
        """The pruning threshold chosen on the validation puzzles (0.5 until one is chosen)."""
        return float(self.meta.get("threshold", 0.5))

    @staticmethod
    def cost(state: game24.State) -> int:
        """Positions a read of ``state`` is charged: the characters of :func:`state_text` and a separator."""
        return len(state_text(state.numbers)) + 1

    @torch.no_grad()
    def probs_of(self, keys: list[tuple[tuple[Fraction, ...], int]], batch: int = 4096) -> np.ndarray:
        out = []
        for i in range(0, len(keys), batch):
            out.append(torch.sigmoid(self.net(_encode(self.vocab, keys[i:i + batch]))).numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def probs(self, states: list[game24.State]) -> np.ndarray:
        """P(solvable) of each state's numbers left (target 24)."""
        return self.probs_of([state_key(s.numbers) for s in states])

    def save(self, out: str | Path, *, force: bool = False) -> Path:
        """``value.safetensors`` and ``value.json`` in ``out``, written under temporary names and renamed."""
        meta = {"config": asdict(self.cfg), "vocab": sorted(self.vocab, key=self.vocab.get), **self.meta}
        return _save(out, self.net, meta, force)


def _save(out: str | Path, net: nn.Module, meta: dict, force: bool) -> Path:
    out = Path(out)
    if (out / WEIGHTS).exists() and not force:
        raise ConfigError(f"{out} already holds a value: pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_m = out / (WEIGHTS + ".tmp"), out / (META + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp_w))
    tmp_m.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    tmp_w.replace(out / WEIGHTS)
    tmp_m.replace(out / META)
    return out


class HeadNet(nn.Module):
    """Features of the language model at a step line's end -> one logit of "solvable": the features
    standardised by the training set's mean and spread (buffers), then a one-hidden-layer MLP."""

    def __init__(self, n_features: int, hidden: int = 256):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.mlp = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.mlp((f - self.mean) / self.std).squeeze(-1)


@torch.no_grad()
def line_features(model, tokenizer, texts: list[str], batch: int = 512) -> torch.Tensor:
    """The language model's final hidden states (after its last norm) at the last two characters of each
    text (a step line's ``)`` and its newline), side by side: ``(len(texts), 2 * n_embd)``. Each text is
    read after ``BLOCK_SEP``, the blank line a search's rows start from. One padded, batched forward per
    ``batch`` texts (causal, so the padding on the right changes nothing)."""
    model.eval()
    seen: list[torch.Tensor] = []
    hook = model.norm_f.register_forward_hook(lambda mod, inp, out: seen.append(out))
    try:
        out = []
        for i in range(0, len(texts), batch):
            chunk = [BLOCK_SEP + t for t in texts[i:i + batch]]
            ids = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            for j, t in enumerate(chunk):  # building a batch from Python strings is per row by nature
                ids[j, :len(t)] = torch.tensor(tokenizer.encode(t))
            last = torch.tensor([len(t) - 1 for t in chunk])
            seen.clear()
            model(ids, aux=False)
            h, rows = seen[-1], torch.arange(len(chunk))
            out.append(torch.cat([h[rows, last], h[rows, last - 1]], -1).float())
    finally:
        hook.remove()
    return torch.cat(out) if out else torch.zeros(0, 2 * model.config.n_embd)


class HeadValue:
    """A value read off the language model itself (the issue's "head on the AR model"): a small MLP on
    the model's hidden states at the end of the step line that reached a state. The row has already
    written (and paid for) those positions, so a read is charged nothing (:meth:`cost` 0); it reads the
    text the row wrote (:meth:`probs_texts`; every search hands it over, :func:`.search.judge`), and only
    with the model it was trained on (:meth:`bind` checks the model file's sha256)."""

    def __init__(self, net: HeadNet, meta: dict):
        self.net, self.meta = net.eval(), dict(meta)
        self.model = self.tokenizer = None

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    def bind(self, model, tokenizer, digest: str) -> HeadValue:
        """Read with ``model`` (whose ``model.safetensors`` has sha256 ``digest``): the one trained on."""
        if digest != self.meta.get("model"):
            raise ConfigError(f"this value head was trained on the model with sha256 {self.meta.get('model')}, "
                              f"not {digest}: train one for this model with mot game24 train-value --kind head "
                              "--model <run>")
        self.model, self.tokenizer = model, tokenizer
        return self

    @staticmethod
    def cost(state: game24.State) -> int:
        return 0

    def probs(self, states: list[game24.State]) -> np.ndarray:
        raise ConfigError("a value head reads the model's hidden states at the end of the step line a row "
                          "wrote, not a state: call probs_texts with the rows' texts")

    @torch.no_grad()
    def probs_texts(self, texts: list[str]) -> np.ndarray:
        """P(solvable) of the state each text (the prompt and its step lines, each ending ``\n``) reaches."""
        if self.model is None:
            raise ConfigError("bind the value head to its model first (HeadValue.bind)")
        return torch.sigmoid(self.net(line_features(self.model, self.tokenizer, texts))).numpy()

    def save(self, out: str | Path, *, force: bool = False) -> Path:
        return _save(out, self.net, {"kind": "head", **self.meta}, force)


def head_examples(puzzles, *, second: int = 3, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(texts, solvable, numbers left)`` for a value head: every first step of each puzzle (prompt and
    line), and every second step after ``second`` first steps drawn at random (seeded), labelled by the
    solver. Pass training puzzles only."""
    rng = np.random.default_rng(seed)
    texts, ys, left = [], [], []
    for q in puzzles:
        s = game24.State.start(q)
        moves = s.moves()
        firsts = [(st, s.apply(st)) for st in moves]
        deeper = set(rng.choice(len(firsts), min(second, len(firsts)), replace=False).tolist()) if firsts else set()
        for i, (st, c) in enumerate(firsts):
            line = s.prompt() + st.line(c.numbers) + "\n"
            todo = [(line, c)]
            if i in deeper:
                todo += [(line + st2.line(d.numbers) + "\n", d) for st2, d in ((m, c.apply(m)) for m in c.moves())]
            for text, state in todo:
                texts.append(text)
                ys.append(game24.solvable(tuple(sorted(state.numbers))))
                left.append(len(state.numbers))
    return texts, np.array(ys, dtype=bool), np.array(left)


def train_value_head(model, tokenizer, digest: str, train_puzzles, val_puzzles, *, epochs: int = 8,
                     seed: int = 0, log=None) -> HeadValue:
    """Train a :class:`HeadValue` for ``model`` (sha256 ``digest``) on the steps of ``train_puzzles``
    (:func:`head_examples`, solver labels), measure it on those of ``val_puzzles``, and pick the
    threshold there as :func:`train_value` does."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"value head epochs must be an integer >= 1, got {epochs!r}")
    t0 = time.time()
    texts, y, _ = head_examples(train_puzzles, seed=seed)
    if not texts:
        raise DataError("no training states: give at least one training puzzle")
    vtexts, vy, vleft = head_examples(val_puzzles, seed=seed)
    f, vf = line_features(model, tokenizer, texts), line_features(model, tokenizer, vtexts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = HeadNet(f.shape[1])
    net.mean.copy_(f.mean(0))
    net.std.copy_(f.std(0) + 1e-5)
    yt = torch.tensor(y, dtype=torch.float32)
    pos_weight = ((1 - yt.mean()) / yt.mean().clamp_min(1e-6)).detach()
    opt = torch.optim.AdamW(net.mlp.parameters(), lr=1e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed + 1)
    value, history = HeadValue(net, {}), []
    for epoch in range(epochs):
        net.train()
        perm, total = torch.randperm(len(y), generator=g), 0.0
        for i in range(0, len(y), 512):
            idx = perm[i:i + 512]
            loss = nn.functional.binary_cross_entropy_with_logits(net(f[idx]), yt[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        net.eval()
        with torch.no_grad():
            vp = torch.sigmoid(net(vf)).numpy() if len(vy) else np.zeros(0)
        three = vleft == 3
        row = {"epoch": epoch + 1, "train_loss": total / len(y), "val_auc": _auc(vp, vy),
               "val_auc_3": _auc(vp[three], vy[three]), "val_auc_2": _auc(vp[~three], vy[~three])}
        history.append(row)
        if log is not None:
            log(row)
    threshold = choose_threshold(vp, vy)
    value.meta = {"threshold": threshold, "model": digest, "history": history, "epochs": epochs, "seed": seed,
                  "data": {"train_puzzles": len(train_puzzles), "train_states": len(y),
                           "train_solvable": float(y.mean()), "val_puzzles": len(val_puzzles),
                           "val_states": len(vy)},
                  "val": {**history[-1], **(classify(vp, vy, threshold) if len(vy) else {})},
                  "seconds": time.time() - t0}
    return value


class SolverValue:
    """The exact solver as a value (1 for a state that can still reach 24, else 0): the ceiling of what
    a learned value can do for search, for diagnosis on the validation rows only (``--value solver``
    with ``--split val``); a search on test puzzles never runs the solver."""

    threshold = 0.5
    meta: dict = {}

    def probs(self, states: list[game24.State]) -> np.ndarray:
        return np.array([float(game24.solve_from(s)) for s in states])

    cost = staticmethod(Value.cost)


def load_value(path: str | Path | None = None) -> Value | HeadValue:
    """A value saved by :meth:`Value.save` (default: the shipped one); a clear error for anything else."""
    p = Path(path) if path is not None else SHIPPED
    if not (p / WEIGHTS).is_file() or not (p / META).is_file():
        raise ConfigError(f"no value at {p} (expected {WEIGHTS} and {META}): train one with "
                          f"mot game24 train-value --out {p}")
    try:
        meta = json.loads((p / META).read_text(encoding="utf-8"))
        if meta.pop("kind", None) == "head":
            weights = load_file(str(p / WEIGHTS))
            head = HeadNet(weights["mean"].numel(), weights["mlp.0.weight"].shape[0])
            head.load_state_dict(weights)
            return HeadValue(head, meta)
        cfg = ValueConfig(**meta.pop("config"))
        vocab = {w: i for i, w in enumerate(meta.pop("vocab"))}
        net = ValueNet(len(vocab), cfg)
        net.load_state_dict(load_file(str(p / WEIGHTS)))
    except (ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise DataError(f"{p} is not a readable value ({type(e).__name__}: {e}); train it again with "
                        f"mot game24 train-value --out {p} --force") from None
    return Value(net, vocab, cfg, meta)


# ------------------------------------------------------------------------------------ training


def train_value(train_puzzles, val_puzzles, cfg: ValueConfig | None = None, *, targets: Iterable[int] = (24,),
                log=None) -> Value:
    """Train a value on every state of ``train_puzzles`` for every one of ``targets`` (solver labels),
    measure it on the states of ``val_puzzles`` (target 24), and pick the pruning threshold there: the
    largest one that loses at most 2% of the live validation states (a pruned live state can cost the
    solution; a kept dead one costs positions)."""
    cfg = cfg or ValueConfig()
    t0 = time.time()
    targets = tuple(dict.fromkeys(int(t) for t in targets))
    train = value_examples(train_puzzles, targets)
    val = value_examples(val_puzzles)
    if not train:
        raise DataError("no training states: give at least one training puzzle")
    vocab = {w: i for i, w in enumerate(SPECIALS)}
    for nums, t, _ in train:
        for w in [str(t)] + [game24.fmt(x) for x in nums]:
            vocab.setdefault(w, len(vocab))
    x = _encode(vocab, [(n, t) for n, t, _ in train])
    y = torch.tensor([lab for _, _, lab in train], dtype=torch.float32)
    pos_weight = ((1 - y.mean()) / y.mean().clamp_min(1e-6)).detach()  # balance the classes
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = ValueNet(len(vocab), cfg)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    # OneCycleLR divides by zero when its warm-up ends on step 0 (0.1 x 10 steps): warm up a little longer then
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps,
                                                pct_start=0.1 if steps != 10 else 0.15)
    value = Value(net, vocab, cfg)
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(train), generator=g)
        total = 0.0
        for i in range(0, len(train), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(net(x[idx]), y[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        net.eval()
        row = {"epoch": epoch + 1, "train_loss": total / len(train), **_measure(value, val)}
        history.append(row)
        if log is not None:
            log(row)
    vp = value.probs_of([(n, t) for n, t, _ in val])
    vy = np.array([lab for _, _, lab in val], dtype=bool)
    threshold = choose_threshold(vp, vy)
    value.meta = {"threshold": threshold, "history": history,
                  "data": {"train_puzzles": len(train_puzzles), "targets": list(targets), "train_states": len(train),
                           "train_solvable": float(y.mean()), "val_puzzles": len(val_puzzles),
                           "val_states": len(val), "val_solvable": float(vy.mean()) if len(vy) else float("nan")},
                  "val": {**history[-1], **classify(vp, vy, threshold)} if len(vy) else history[-1],
                  "seconds": time.time() - t0}
    return value


def choose_threshold(p: np.ndarray, y: np.ndarray, max_live_lost: float = 0.02) -> float:
    """The largest threshold that prunes at most ``max_live_lost`` of the live states (0.5 without labels)."""
    if not y.any():
        return 0.5
    return float(np.quantile(p[y], max_live_lost, method="lower"))


def _measure(value: Value, examples) -> dict:
    if not examples:
        return {}
    p = value.probs_of([(n, t) for n, t, _ in examples])
    y = np.array([lab for _, _, lab in examples], dtype=bool)
    eps = 1e-7
    bce = float(-np.mean(np.where(y, np.log(p + eps), np.log(1 - p + eps))))
    three = np.array([len(n) == 3 for n, _, _ in examples])  # the states a search judges after its first step
    return {"val_loss": bce, "val_accuracy": float(((p >= 0.5) == y).mean()), "val_auc": _auc(p, y),
            "val_auc_3": _auc(p[three], y[three])}
