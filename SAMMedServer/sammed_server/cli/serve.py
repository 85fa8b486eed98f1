"""`serve`: run the HTTP worker."""

from __future__ import annotations

import argparse

from .common import model_options


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `serve` command(s)."""
    serve = commands.add_parser("serve", help="run the HTTP worker the Slicer module talks to")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs --token)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token", default=None, help="API token every request must carry")
    model_options(serve, checkpoint=False)
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> None:
    from ..api.server import serve

    serve(host=args.host, port=args.port, token=args.token, model=args.model, device=args.device)
