"""`serve`: run the HTTP worker."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import model_options


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `serve` command(s)."""
    serve = commands.add_parser("serve", help="run the HTTP worker the Slicer module talks to")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs --token)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token", default=None,
                       help="API token every request must carry; 'auto': a random one, printed on the ready line")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also answer requests whose Host is NAME (repeatable; loopback names always work)")
    serve.add_argument("--data-root", action="append", default=[], type=Path, metavar="FOLDER",
                       help="folder from-path may read, besides your home and $SAMMED_DATA_ROOTS (repeatable)")
    serve.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                       help="seconds a client has to send a request's headers")
    serve.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                       help="seconds a request body may stall before the connection is closed")
    serve.add_argument("--max-connections-per-client", type=int, default=64, metavar="N")
    model_options(serve, checkpoint=False)
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> None:
    from ..api.connections import ConnectionLimits
    from ..api.server import serve

    limits = ConnectionLimits(args.header_timeout, args.body_timeout, args.max_connections_per_client)
    serve(host=args.host, port=args.port, token=args.token, model=args.model, device=args.device,
          allow_hosts=args.allow_host, roots=args.data_root, limits=limits)
