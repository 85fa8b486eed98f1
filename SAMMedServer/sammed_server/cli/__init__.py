"""`sammed-server`: serve | embed | segment | batch | train | evaluate | demo | bench | weights.

One module per command group; each has ``register(commands)`` that adds its sub-parser(s) and handlers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from .. import __version__
from ..errors import SAMMedError
from . import batch, demo, evaluate, segment, serve, train, weights
from .common import runtime_environment

COMMAND_GROUPS = (serve, segment, batch, train, evaluate, demo, weights)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command group registered."""
    parser = argparse.ArgumentParser(prog="sammed-server", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sammed-server {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; a :class:`SAMMedError` becomes one ``error:`` line (+ hint) and exit code 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="sammed-server: %(levelname)s: %(message)s")
    try:
        runtime_environment(args)
        return args.run(args) or 0
    except SAMMedError as exc:
        print(f"sammed-server: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"sammed-server: hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sammed-server: interrupted", file=sys.stderr)
        return 130
