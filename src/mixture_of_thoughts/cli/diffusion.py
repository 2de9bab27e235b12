"""``mot diffuse`` and ``mot renoise``: the masked-diffusion model's commands."""

from __future__ import annotations

import json

from ..errors import ConfigError
from .common import load_run, parse_creativity

MASK_CHAR = "_"  # how [MASK] is shown in --show-steps and --animate
SHOWN_STEPS = 6  # snapshots printed by --show-steps
GIF_FRAMES = 60  # at most this many frames in --animate
GIF_COLS = 64  # characters per line in the animation


def _render(tokenizer, row, mask: int) -> str:
    return "".join(MASK_CHAR if i == mask else tokenizer.chars[i] for i in row.tolist())


def _sampler_kw(args) -> dict:
    return {"sampler": args.sampler, "steps": args.steps, "k": args.k, "threshold": args.threshold,
            "temperature": args.temperature, "creativity": _creativity(args)}


def _creativity(args):
    c = parse_creativity(args.creativity)
    if c is not None and not isinstance(c, float):
        raise ConfigError("--creativity for diffusion commands takes a single number")
    return c


def _evaluator(args, ck):
    from ..generation.denoise_search import ARLikelihoodEvaluator, DiversityEvaluator, ElboEvaluator, WeightedEvaluator

    if args.evaluator == "ar":
        if not args.judge:
            raise ConfigError("--evaluator ar needs --judge AR_RUN (an autoregressive run)")
        j = load_run(args.judge, expect="ar", device=args.device)
        return ARLikelihoodEvaluator(j.model, j.tokenizer)
    elbo = ElboEvaluator(ck.model, ck.tokenizer, seed=args.seed)
    if args.evaluator == "diversity":
        return DiversityEvaluator()
    if args.evaluator == "elbo+diversity":
        return WeightedEvaluator([(1.0, elbo), (args.diversity_weight, DiversityEvaluator())])
    return elbo


def _show_steps(tokenizer, traj, mask: int, prompt_len: int) -> None:
    n = len(traj)
    picks = sorted({round(i * (n - 1) / (SHOWN_STEPS - 1)) for i in range(SHOWN_STEPS)})
    for i in picks:
        print(f"--- step {i}/{n - 1}")
        print(_render(tokenizer, traj[i][0], mask))


def _animate(path: str, tokenizer, traj, mask: int) -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter

    n = len(traj)
    picks = sorted({round(i * (n - 1) / max(1, min(GIF_FRAMES, n) - 1)) for i in range(min(GIF_FRAMES, n))})
    frames = ["\n".join(textwrap.wrap(_render(tokenizer, traj[i][0], mask).replace("\n", " "), GIF_COLS,
                                      drop_whitespace=False)) for i in picks]
    lines = max(f.count("\n") + 1 for f in frames)
    fig = plt.figure(figsize=(GIF_COLS * 0.11, 0.6 + lines * 0.22), dpi=80)
    txt = fig.text(0.02, 0.98, "", family="monospace", va="top", fontsize=10)
    title = fig.text(0.02, 0.01, "", fontsize=8, color="gray")

    def draw(j):
        txt.set_text(frames[j])
        title.set_text(f"step {picks[j]}/{n - 1}")
        return txt, title

    anim = FuncAnimation(fig, draw, frames=len(frames), blit=False)
    try:
        anim.save(path, writer=PillowWriter(fps=8))
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not write the animation to {path}: {e}") from None
    finally:
        plt.close(fig)


def cmd_diffuse(args) -> int:
    """Generate N branches from a diffusion run, optionally keeping the best and forking them.

    Example: mot diffuse runs/diff --prompt "ROMEO:" --length 256 --sampler confidence --threshold 0.9
    --branches 8 --keep 2 --seed 1
    With --keep M, at each --points noise level the branches are scored (--evaluator), the best M
    kept, and each forked into N/M by re-masking that fraction of its text. Output is ranked.
    """
    from ..generation.denoise_search import branch_search

    ck = load_run(args.run, expect="diffusion", which=args.checkpoint, device=args.device)
    want_traj = bool(args.show_steps or args.animate)
    try:
        points = [float(v) for v in args.points.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--points must be comma-separated noise levels in (0, 1], got {args.points!r}") from None
    res = branch_search(ck.model, ck.tokenizer, args.prompt, length=args.length, branches=args.branches,
                        keep=args.keep, points=points, seed=args.seed, evaluator=_evaluator(args, ck),
                        unknown_chars=args.unknown_chars, trajectory=want_traj, **_sampler_kw(args))
    mask = ck.model.config.vocab_size - 1
    if args.animate:
        _animate(args.animate, ck.tokenizer, res.trajectory, mask)
    if args.json:
        print(json.dumps(res.to_dict()))
        return 0
    if args.show_steps:
        print(f"denoising of the first branch (seed {args.seed}), {MASK_CHAR} = [MASK]:")
        _show_steps(ck.tokenizer, res.trajectory, mask, len(res.prompt))
        print()
    print(f"{len(res.branches)} branches from {ck.path}, sampler {args.sampler}, evaluator {args.evaluator}; "
          f"prompt {res.prompt!r}")
    for i, b in enumerate(res.branches):
        origin = "" if b.parent_seed is None else f"  forked from seed {b.parent_seed} at round {b.round}"
        print(f"\n=== rank {i}  seed={b.seed}  score={b.score:.4f}{origin}")
        print(res.prompt + b.text)
    if args.animate:
        print(f"\nwrote {args.animate}")
    return 0


def _parse_span(s: str | None):
    if s is None:
        return None
    try:
        a, b = s.split(":")
        return int(a), int(b)
    except ValueError:
        raise ConfigError(f"--span must be A:B (character offsets, A < B), got {s!r}") from None


def cmd_renoise(args) -> int:
    """Variations of a text: mask a fraction of it and let the diffusion model fill it in again.

    Example: mot renoise runs/diff --text "ROMEO: I will go." --noise 0.3 --variants 6 --seed 1
    With --draft-from AR_RUN the text is first drafted by that autoregressive run from --prompt, and
    only the drafted part is re-noised (unless --span says otherwise).
    """
    from ..generation.denoise_search import renoise

    if not 0.0 <= args.noise <= 1.0:
        raise ConfigError(f"--noise must be in [0, 1] (the fraction of characters to mask), got {args.noise}")
    span = _parse_span(args.span)
    ck = load_run(args.run, expect="diffusion", which=args.checkpoint, device=args.device)
    text = args.text
    if args.draft_from:
        from ..generation.autoregressive import think

        ar = load_run(args.draft_from, expect="ar", device=args.device)
        draft = think(ar.model, ar.tokenizer, args.prompt, branches=1, seed=args.seed,
                      max_new_tokens=args.draft_tokens, temperature=args.draft_temperature)
        text = draft.prompt + draft.branches[0].text
        if span is None:
            span = (len(draft.prompt), len(text))
    if text is None:
        raise ConfigError("give --text TEXT, or --draft-from AR_RUN --prompt PROMPT to draft one")
    res = renoise(ck.model, ck.tokenizer, text, noise=args.noise, variants=args.variants, seed=args.seed,
                  span=span, unknown_chars=args.unknown_chars, **_sampler_kw(args))
    if args.json:
        print(json.dumps(res.to_dict()))
        return 0
    where = "" if res.span is None else f" inside characters {res.span[0]}:{res.span[1]}"
    print(f"original ({len(res.text)} characters; noise {res.noise}{where}):\n{res.text}")
    for v in res.variants:
        print(f"\n=== seed={v.seed}  masked {v.masked}, changed {v.changed} characters")
        print(v.text)
    return 0


def _sampler_flags(p) -> None:
    p.add_argument("--sampler", choices=["ancestral", "topk", "confidence"], default="confidence")
    p.add_argument("--steps", type=int, default=None, help="ancestral/topk: steps per window (default 64)")
    p.add_argument("--k", type=int, default=None, help="topk: positions decoded per step")
    p.add_argument("--threshold", type=float, default=0.9, help="confidence: reveal above this probability")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = argmax")
    p.add_argument("--creativity", default=None, help="thought-layer creativity (MoT denoisers)")
    p.add_argument("--seed", type=int, default=0, help="branch/variant i uses seed SEED+i")
    p.add_argument("--unknown-chars", choices=["error", "skip", "replace"], default="error")
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def register(add) -> None:
    """Add ``diffuse`` and ``renoise``; ``add(name, fn)`` returns the new subparser."""
    d = add("diffuse", cmd_diffuse)
    d.add_argument("run", help="a diffusion run or checkpoint directory")
    d.add_argument("--prompt", default="", help="text the branches continue (empty: a newline)")
    d.add_argument("--length", type=int, default=256, help="total characters, prompt included")
    d.add_argument("--branches", type=int, default=4)
    d.add_argument("--keep", type=int, default=None, help="branches kept at each fork point (enables search)")
    d.add_argument("--points", default="0.5", help="noise levels at which to keep and fork, e.g. 0.5,0.25")
    d.add_argument("--evaluator", choices=["elbo", "ar", "diversity", "elbo+diversity"], default="elbo")
    d.add_argument("--judge", default=None, metavar="AR_RUN", help="autoregressive run for --evaluator ar")
    d.add_argument("--diversity-weight", type=float, default=0.5)
    d.add_argument("--show-steps", action="store_true", help="print the first branch at a few denoising steps")
    d.add_argument("--animate", default=None, metavar="OUT.gif", help="write the first branch's denoising as a GIF")
    _sampler_flags(d)

    r = add("renoise", cmd_renoise)
    r.add_argument("run", help="a diffusion run or checkpoint directory")
    r.add_argument("--text", default=None, help="the text to vary")
    r.add_argument("--noise", type=float, default=0.3, help="fraction of characters to mask, in [0, 1]")
    r.add_argument("--variants", type=int, default=4)
    r.add_argument("--span", default=None, metavar="A:B", help="only re-noise characters A..B-1")
    r.add_argument("--draft-from", default=None, metavar="AR_RUN", help="draft the text with this AR run")
    r.add_argument("--prompt", default="", help="prompt of the AR draft")
    r.add_argument("--draft-tokens", type=int, default=200)
    r.add_argument("--draft-temperature", type=float, default=0.8)
    _sampler_flags(r)
