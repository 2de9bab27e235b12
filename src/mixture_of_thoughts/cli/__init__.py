"""The ``mot`` command line: thin subcommands over the library.

Each subcommand parses its flags, calls one library function and prints or writes the result; its
``--help`` text is its docstring (``%`` in it is literal). User mistakes end with a one-line
``mot: error: ...`` and exit status 2, never a traceback. Command groups live in submodules, each
with a ``register(add)``; they share helpers through :mod:`.common` and never import one another.

Output into a pipe that closes early (``mot think --json | head -c 100``) ends the command quietly
with exit status 0, as if the output had been consumed: the reader has what it asked for, and a
pipeline stays successful also under ``set -o pipefail``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import MotError

# Submodules that add subcommands, in --help order. A group whose optional dependency is missing
# still registers; its commands explain what to install when run.
GROUPS = ("core", "diffusion", "experiments", "hf", "learned", "vary", "game24", "serve")


def _help_text(text: str) -> str:
    """``text`` as argparse shows it literally: help strings are always %-formatted."""
    return text.replace("%", "%%")


def _description_text(text: str) -> str:
    """``text`` as argparse shows it literally: a description is %-formatted only if it holds ``%(prog)``."""
    return _help_text(text) if "%(prog)" in text else text


def add_command(sub, name: str, fn) -> argparse.ArgumentParser:
    """Add subcommand ``name`` running ``fn(args)``; its help is ``fn``'s docstring (first line in the list)."""
    doc = (fn.__doc__ or name).strip()
    sp = sub.add_parser(name, help=_help_text(doc.splitlines()[0]), description=_description_text(doc),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.set_defaults(fn=fn)
    return sp


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mot",
                                description="Mixture of Thoughts: parallel thought branches in transformers.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn):
        return add_command(sub, name, fn)

    for group in GROUPS:
        try:
            mod = importlib.import_module(f"{__name__}.{group}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(__name__):
                continue  # a group not written yet
            raise
        mod.register(add)
    return p


def _discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so that flushing what is left at exit cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (captured by a test): nothing will be flushed to a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    from .experiments import legacy_hint

    hint = legacy_hint(sys.argv[1:] if argv is None else list(argv))
    if hint:
        print(f"mot: error: {hint}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        code = args.fn(args) or 0
        sys.stdout.flush()  # a closed pipe shows up here rather than at interpreter exit
        return code
    except BrokenPipeError:  # the reader of stdout went away (mot ... | head): stop quietly
        _discard_stdout()
        return 0
    except MotError as e:
        print(f"mot: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
