"""``mot vary``: noising an idea with a real model (prompt operators and thought noise, one batch).

``transformers`` and torch are imported inside the command, so ``mot --help`` stays fast.
"""

from __future__ import annotations

import json

from ..errors import ConfigError


def cmd_vary(args) -> int:
    """Develop a draft in several directions with a real model, all variants in one batched pass.

    Each way is a prompt operator applied to the draft (style, angle, constraint, example, shorter,
    opposite, question, or none = a plain rewrite); the operators are instruction templates in an
    editable JSON file (--ways-file; --list-ways shows them). --creativity C > 0 adds thought noise
    to every variant: the model is grafted on the fly (training-free) and each variant's branches get
    noise of strength C. Variant j of every way has seed SEED+j, and a variant is the same generated
    alone: run one way with --variants 1 --seed SEED+j to get it back.

    Example: mot vary --text "A library that lends tools instead of books." --ways style,angle,example --variants 2
    Example: mot vary --text "A library that lends tools." --ways none --variants 4 --creativity 1
    """
    from ..hf.vary import load_ways, resolve_ways, vary

    if args.list_ways:
        ways = load_ways(args.ways_file)
        width = max(len(n) for n in ways)
        for w in ways.values():
            print(f"{w.name:<{width}}  {w.description}")
        return 0
    if args.text is None:
        raise ConfigError('give the draft to vary with --text "..." (or --list-ways to see the ways)')
    if not args.text.strip():
        raise ConfigError("the draft is empty: give the text to vary with --text")
    if args.variants < 1:
        raise ConfigError(f"--variants must be >= 1, got {args.variants}")
    if args.creativity < 0:
        raise ConfigError(f"--creativity must be >= 0, got {args.creativity}")
    ways = args.ways
    resolve_ways(ways, load_ways(args.ways_file))  # a bad file or way is reported before the model loads

    from ..api import load

    th = load(args.model, graft="all" if args.creativity > 0 else None, device=args.device)
    if th.kind != "hf":
        raise ConfigError(f"--model {args.model}: mot vary rewrites with a pretrained instruct model (e.g. smollm2), "
                          "not a character run")
    model, tok = th.model, th.tokenizer
    res = vary(model, tok, args.text, ways, variants=args.variants, creativity=args.creativity, seed=args.seed,
               max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
               top_p=args.top_p, min_p=args.min_p, ways_file=args.ways_file, chat=False if args.no_chat else None)
    if args.json:
        print(json.dumps({"model": args.model, **res.to_dict()}))
    else:
        print(f"model {args.model}")
        print(res.format())
    return 0


def register(add) -> None:
    """Add ``vary``; ``add(name, fn)`` returns the new subparser."""
    v = add("vary", cmd_vary)
    v.add_argument("--model", default="smollm2",
                   help="registry name (smollm2), grafted or Hugging Face model directory, or hub id")
    v.add_argument("--text", default=None, help="the draft to vary")
    v.add_argument("--ways", default="style,angle,constraint,example",
                   help="comma-separated way names from --ways-file; 'none' = a plain rewrite")
    v.add_argument("--ways-file", default=None,
                   help='JSON file of ways: {"name": {"instruction": "... {text} ...", "description": "..."}} '
                        "(default: the shipped vary_ways.json)")
    v.add_argument("--list-ways", action="store_true", help="list the ways of --ways-file and exit")
    v.add_argument("--variants", type=int, default=2, help="variants per way; variant j has seed SEED+j")
    v.add_argument("--creativity", type=float, default=0.0,
                   help="thought noise of every variant (0 = prompt operators only; > 0 grafts the model)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--max-new-tokens", type=int, default=64)
    v.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    v.add_argument("--top-k", type=int, default=None)
    v.add_argument("--top-p", type=float, default=None)
    v.add_argument("--min-p", type=float, default=None)
    v.add_argument("--no-chat", action="store_true", help="raw prompts, without the tokenizer's chat template")
    v.add_argument("--device", default=None)
    v.add_argument("--json", action="store_true", help="machine-readable output")
