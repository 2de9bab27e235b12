"""The ``mot`` command line: thin subcommands over the library.

Each subcommand parses its flags, calls one library function and prints or writes the result; its
``--help`` text is its docstring. User mistakes end with a one-line ``mot: error: ...`` and exit
status 2, never a traceback. Command groups live in submodules, each with a ``register(add)``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import MotError

# Submodules that add subcommands, in --help order. A group whose optional dependency is missing
# still registers; its commands explain what to install when run.
GROUPS = ("core", "diffusion", "experiments", "hf")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mot",
                                description="Mixture of Thoughts: parallel thought branches in transformers.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn):
        doc = fn.__doc__.strip()
        sp = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    for group in GROUPS:
        try:
            mod = importlib.import_module(f"{__name__}.{group}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(__name__):
                continue  # a group not written yet
            raise
        mod.register(add)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.fn(args) or 0
    except MotError as e:
        print(f"mot: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
