"""``mot serve``: the playground, a local web page to watch parallel thoughts grow."""

from __future__ import annotations

import ipaddress
import sys

from ..errors import ConfigError

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
GRACE_S = 3  # seconds that open streams get to finish when the server stops


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    """Serve a local web page to watch parallel thoughts grow, token by token.

    Example: mot serve --model runs/mot --model runs/diff --port 7860
    Then open http://127.0.0.1:7860 in a browser. The page opens with the shipped Shakespeare MoT
    model and offers every --model (character AR/MoT runs, diffusion runs, or smollm2). It listens
    on 127.0.0.1 only unless --host says otherwise; models come from the command line, never from
    a request. Stop it with Ctrl-C.
    """
    try:
        import uvicorn

        from ..serve.app import create_app
    except ModuleNotFoundError as e:
        raise ConfigError(f"mot serve needs {e.name}: pip install starlette uvicorn") from None
    from ..serve.models import load_models
    from ..serve.params import Limits
    from ..serve.worker import Worker

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    for name in ("max_branches", "max_tokens", "max_prompt", "max_queue", "workers"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    models = load_models(args.model, device=args.device)
    embedder = None
    if args.semantic:
        from ..metrics.semantic import get_embedder

        embedder = get_embedder()
    limits = Limits(max_branches=args.max_branches, max_tokens=args.max_tokens, max_prompt=args.max_prompt)
    loopback = _is_loopback(args.host)
    app = create_app(models, limits=limits, worker=Worker(threads=args.workers, max_pending=args.max_queue),
                     allowed_hosts=LOOPBACK_NAMES if loopback else None, embedder=embedder)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {', '.join(models)} on http://{shown}:{args.port}  (Ctrl-C to stop)", file=sys.stderr)
    if not loopback:
        print(f"warning: --host {args.host} makes the page reachable from other machines", file=sys.stderr)
    # on Ctrl-C, open streams get GRACE seconds; then they are cancelled, which stops their generation
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                timeout_graceful_shutdown=GRACE_S)
    return 0


def register(add) -> None:
    """Add ``serve``; ``add(name, fn)`` returns the new subparser."""
    s = add("serve", cmd_serve)
    s.add_argument("--model", action="append", default=None, metavar="RUN_OR_NAME",
                   help="a model to offer besides the shipped one (repeatable): a run or checkpoint directory "
                        "(autoregressive or diffusion), or smollm2 / a Hugging Face directory")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--max-branches", type=int, default=16, help="most branches (or variants) per request")
    s.add_argument("--max-tokens", type=int, default=1000,
                   help="most new tokens per branch (think) or characters (diffuse, renoise)")
    s.add_argument("--max-prompt", type=int, default=2000, help="most characters in a prompt or text")
    s.add_argument("--max-queue", type=int, default=16, help="requests waiting or running; more get HTTP 429")
    s.add_argument("--workers", type=int, default=1, help="generation threads")
    s.add_argument("--semantic", action="store_true",
                   help="add semantic diversity (sentence embeddings, all-MiniLM-L6-v2; needs the [hf] extra)")
    s.add_argument("--device", default=None)
