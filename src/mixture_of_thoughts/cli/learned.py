"""``mot branch-data`` and ``mot train-branches``: learned thought branches (``hf.learned``).

Decoding with them is ``mot think --learned DIR`` (in :mod:`.core`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError
from .common import load_hf

log = logging.getLogger(__name__)
STAGES = {"sample": ("sampling", "prompt"), "cache": ("lower layers", "prompt"), "train": ("training", "step")}


class _Bars:
    """One tqdm bar per stage of a ``progress(stage, done, total, info)`` callback."""

    def __init__(self) -> None:
        self.bars = {}

    def __call__(self, stage: str, done: int, total: int, info: dict) -> None:
        from tqdm.auto import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            desc, unit = STAGES.get(stage, (stage, "it"))
            bar = self.bars[stage] = tqdm(total=total, desc=desc, unit=unit)
        if "loss" in info:
            bar.set_postfix(loss=f"{info['loss']:.3f}", mix=f"{info['mixture_nll']:.3f}",
                            usage="/".join(f"{u:.2f}" for u in info["usage"]), refresh=False)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _model_name(name: str) -> str:
    """The model as the branches config records it: a directory as an absolute path, a name as given."""
    p = Path(name).expanduser()
    return str(p.resolve()) if p.is_dir() else name


def cmd_branch_data(args) -> int:
    """Sample responses to training prompts from a pretrained model and keep the usable ones (JSONL).

    Example: mot branch-data --model smollm2 --prompts 320 --responses 8 --max-new-tokens 32
    --out data/branches.jsonl
    Response j of prompt i has seed SEED + 1000 i + j. Dropped: empty, looping or off-topic responses
    (MiniLM embeddings) and those whose mean NLL under the model exceeds --max-nll; then prompts with
    fewer than 2 responses. One line per prompt; the counts go to OUT_STEM.stats.json.
    """
    from ..hf.branch_data import DEFAULT_MAX_NLL, build_branch_data, write_branch_data
    from ..metrics import semantic

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists: pass --force to overwrite it")
    max_nll = DEFAULT_MAX_NLL if args.max_nll is None else args.max_nll
    for name, lo in (("prompts", 1), ("responses", 2), ("max_new_tokens", 1), ("batch_prompts", 1)):
        if getattr(args, name) < lo:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(args, name)}")
    try:
        from ..data.prompts import training_prompts
    except ImportError:
        raise ConfigError("this install has no training prompt set (mixture_of_thoughts.data.prompts)") from None
    prompts = training_prompts(args.prompts, seed=args.seed)
    embedder = semantic.get_embedder()  # the off-topic rule; a missing package says what to install
    model, tok = load_hf(args.model, args.device)
    bars = None if args.quiet else _Bars()
    try:
        rows, stats = build_branch_data(model, tok, prompts, responses=args.responses,
                                        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                        seed=args.seed, max_nll=max_nll, batch_prompts=args.batch_prompts,
                                        embedder=embedder, progress=bars)
    finally:
        if bars is not None:
            bars.close()
    stats["model"] = _model_name(args.model)
    side = write_branch_data(rows, stats, out, force=args.force)
    d = stats["dropped"]
    print(f"{stats['prompts_kept']} of {stats['prompts']} prompts, {stats['responses_kept']} of "
          f"{stats['responses_sampled']} responses kept ({stats['kept_rate']:.0%}) in {stats['seconds']:.0f} s; "
          f"dropped: {d['empty']} empty, {d['loop']} loops, {d['off-topic']} off-topic, {d['nll']} with mean NLL "
          f"> {max_nll}, {d['with_prompt']} with their prompt ({stats['prompts_dropped']} prompts)")
    print(f"wrote {out} and {side}")
    return 0


def cmd_train_branches(args) -> int:
    """Train B learned thought branches (vectors in the upper layers) of a frozen pretrained model.

    Example: mot train-branches --model smollm2 --data data/branches.jsonl --branches 4 --layers top4
    --tokens 16 --objective soft-em --epochs 2 --out branches/smollm2-4
    The mixture objective over the branches (soft-em: the mixture likelihood; wta: the best branch
    takes each response) on the first --tokens tokens of each response, plus a usage-balance term.
    Then: mot think --learned branches/smollm2-4 --prompt "..." --temperature 0
    """
    import json

    from ..hf.branch_data import load_branch_data, stats_path
    from ..hf.branch_training import BranchTrainConfig, train_branches
    from ..hf.learned import save_branches

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists: pass --force to overwrite it")
    rows = load_branch_data(args.data)
    try:
        made_by = json.loads(stats_path(args.data).read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        made_by = None
    if made_by is not None and made_by != _model_name(args.model):
        log.warning("%s was sampled from %s, not %s: the branches learn another model's responses",
                    args.data, made_by, args.model)
    cfg = BranchTrainConfig(branches=args.branches, layers=args.layers, tokens=args.tokens, objective=args.objective,
                            epochs=args.epochs, batch_prompts=args.batch_prompts, lr=args.lr,
                            init_scale=args.init_scale, balance=args.balance, wta_eps=args.wta_eps,
                            val_frac=args.val_frac, seed=args.seed, bf16=args.bf16, max_steps=args.max_steps)
    model, tok = load_hf(args.model, args.device)
    bars = None if args.quiet else _Bars()
    try:
        branches, history = train_branches(model, tok, rows, cfg, model_name=_model_name(args.model), progress=bars)
    finally:
        if bars is not None:
            bars.close()
    history["data"] = str(args.data)
    save_branches(branches, out, history=history, force=args.force)
    steps = history["steps"]
    last = [s for s in steps if s["epoch"] == steps[-1]["epoch"]] if steps else []
    mean = (lambda k: sum(s[k] for s in last) / len(last)) if last else (lambda k: float("nan"))
    L = branches.layers
    print(f"trained {branches.n_branches} branches ({cfg.objective}) on layers {','.join(map(str, L))} of "
          f"{args.model}: {len(steps)} steps, {history['train_prompts']} training / {history['val_prompts']} "
          f"validation prompts, {history['seconds']:.0f} s "
          f"({sum(s['seconds'] for s in steps) / max(1, len(steps)):.2f} s per step)")
    print(f"last epoch: loss {mean('loss'):.4f}, mixture NLL {mean('mixture_nll'):.4f} nats/token, "
          f"winner share per branch {' '.join(f'{u:.2f}' for u in last[-1]['usage'])}" if last else "no step run")
    if history["epochs"]:
        first, final = history["epochs"][0], history["epochs"][-1]
        print(f"validation mixture NLL {final['val_mixture_nll']:.4f} nats/token (at init "
              f"{first['val_mixture_nll']:.4f}, plain model {history['plain_val_nll']:.4f}); winner share "
              f"{' '.join(f'{u:.2f}' for u in final['val_usage'])}, responsibility entropy "
              f"{final['val_entropy']:.3f} nats")
    print(f"saved {out}; decode with: mot think --learned {out} --prompt \"...\" --temperature 0")
    return 0


def register(add) -> None:
    """Add ``branch-data`` and ``train-branches``; ``add(name, fn)`` returns the new subparser."""
    d = add("branch-data", cmd_branch_data)
    d.add_argument("--model", default="smollm2", help="the model to sample from: smollm2, a directory or a hub id")
    d.add_argument("--prompts", type=int, default=320, help="training prompts (data.prompts.training_prompts)")
    d.add_argument("--responses", type=int, default=8, help="responses sampled per prompt")
    d.add_argument("--max-new-tokens", type=int, default=32)
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--max-nll", type=float, default=None,
                   help="drop responses whose mean NLL under the model exceeds this (nats/token; default 3.0, "
                        "see hf.branch_data.DEFAULT_MAX_NLL)")
    d.add_argument("--batch-prompts", type=int, default=8, help="prompts decoded in one batch")
    d.add_argument("--seed", type=int, default=0, help="picks the prompts and seeds the responses")
    d.add_argument("--out", default="data/branches.jsonl")
    d.add_argument("--force", action="store_true", help="overwrite --out")
    d.add_argument("--device", default=None)
    d.add_argument("--quiet", action="store_true", help="no progress bar")

    t = add("train-branches", cmd_train_branches)
    t.add_argument("--model", default="smollm2")
    t.add_argument("--data", default="data/branches.jsonl", help="a file written by mot branch-data")
    t.add_argument("--branches", type=int, default=4, help="B, the number of learned branches")
    t.add_argument("--layers", default="top4", help="topN (the last N decoder layers), all, or indices like 26,27")
    t.add_argument("--tokens", type=int, default=16, help="K: the objective reads each response's first K tokens")
    t.add_argument("--objective", choices=["soft-em", "wta"], default="soft-em")
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--batch-prompts", type=int, default=4, help="prompts per step (with all their responses)")
    t.add_argument("--lr", type=float, default=0.02, help="Adam step, relative to the hidden-state RMS")
    t.add_argument("--init-scale", type=float, default=0.1, help="initial vector std, relative to the hidden RMS")
    t.add_argument("--balance", type=float, default=0.1, help="weight of the usage-balance term")
    t.add_argument("--wta-eps", type=float, default=0.05, help="wta: weight left to the branches that lost")
    t.add_argument("--val-frac", type=float, default=0.1, help="prompts held back for validation")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster where the CPU supports it)")
    t.add_argument("--out", default="branches/smollm2-4", help="directory to write")
    t.add_argument("--force", action="store_true", help="overwrite --out")
    t.add_argument("--device", default=None)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
