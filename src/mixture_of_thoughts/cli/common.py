"""Helpers shared by the ``mot`` command modules: flag parsers, shared flags, and loading runs, models
and corpora.

Layering: the command modules (``core``, ``diffusion``, ``experiments``, ``hf``) import from this
module and from the library, never from one another; this module imports only the library.
Heavy imports (torch, transformers) stay inside the functions, so ``mot --help`` is fast.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ..api import SHIPPED
from ..errors import ConfigError

DEFAULT_MODEL = SHIPPED  # the shipped Shakespeare MoT model (api.SHIPPED)
DATA_HELP = "a UTF-8 text file, or 'shakespeare' (from $MOT_DATA_DIR, the cache, or downloaded)"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


# ----------------------------------------------------------------------------- flag parsers


def parse_bool(s: str) -> bool:
    """An argparse ``type`` for boolean flags: true/false, yes/no, on/off, 1/0 (any case); else an error."""
    v = s.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (also yes/no, on/off, 1/0), got {s!r}")


def parse_layers(s: str):
    """An argparse ``type``: ``all``, ``none`` or comma-separated layer indices like ``0,2``."""
    if s in ("all", "none"):
        return s
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, none or comma-separated layer indices, got {s!r}") from None


def parse_creativity(s: str | None):
    """``--creativity``: None, a number, ``LO:HI`` (spread over the branches) or a list ``a,b,c``."""
    if s is None:
        return None
    try:
        if ":" in s:
            lo, hi = s.split(":")
            return (float(lo), float(hi))
        if "," in s:
            return [float(v) for v in s.split(",")]
        return float(s)
    except ValueError:
        raise ConfigError(f"--creativity must be a number, LO:HI or a comma-separated list, got {s!r}") from None


# ----------------------------------------------------------------------------- shared flags


def sampling_flags(p: argparse.ArgumentParser, temperature=1.0) -> None:
    """The flags of ``mot sample`` and ``mot think``: prompt, length, sampling filters, checkpoint, output."""
    p.add_argument("--prompt", default="", help="text to continue (empty: start from a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--stop", default=None, help="stop a sample once it ends with this string")
    p.add_argument("--unknown-chars", choices=["error", "skip", "replace"], default="error",
                   help="prompt characters outside the vocabulary: error (default), skip or replace")
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    p.add_argument("--device", default=None)
    p.add_argument("--no-cache", action="store_true", help="recompute the context at every step (slow; reference)")
    p.add_argument("--compile", action="store_true",
                   help="decode through a torch.compile-d step: ~2x faster after a one-off compile of ~9 s "
                        "(needs a C++ compiler; the same texts)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


# ----------------------------------------------------------------------------- loading


def read_corpus(data) -> str:
    """The text ``--data`` names, resolved as every command resolves it: a path to a UTF-8 text file or a
    corpus name (``shakespeare``), see :func:`mixture_of_thoughts.data.corpus.load_corpus`.

    Raises :class:`~mixture_of_thoughts.errors.DataError` with a one-line message on any problem.
    """
    from ..data.corpus import load_corpus

    return load_corpus(data)


def load_run(run, *, expect=None, which="best", device=None):
    """The checkpoint of a run or checkpoint directory (default: the shipped MoT model)."""
    from ..device import resolve_device
    from ..training.checkpoint import load_checkpoint

    return load_checkpoint(run or DEFAULT_MODEL, which=which, device=resolve_device(device), expect=expect)


def load_hf(path: str, device: str | None = None):
    """(model, tokenizer) from a mixture_of_thoughts run, or any model ``hf.registry.load_pretrained``
    takes (a registry name such as smollm2, a grafted or Hugging Face directory, a hub id), as
    :func:`..api.load` loads it without grafting."""
    from ..api import is_char_model, load

    th = load(path, graft=None, device=device or ("cpu" if is_char_model(path) else None))
    return th.model, th.tokenizer


def typed_command(group: str) -> str:
    """The command as typed (for a report), when ``mot GROUP ...`` was typed: empty when called from Python."""
    return "mot " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == [group] else ""
