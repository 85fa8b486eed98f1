"""`weights`: list, download or verify model checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .common import progress_bar


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `weights` command(s)."""
    weights = commands.add_parser("weights", help="list, download or verify model checkpoints")
    weights_commands = weights.add_subparsers(required=True, metavar="ACTION")
    listing = weights_commands.add_parser("list", help="models, their files and whether they are present")
    listing.set_defaults(run=_weights_list)
    fetch = weights_commands.add_parser("download", help="download a checkpoint (resumes, verifies sha256)")
    fetch.add_argument("model")
    fetch.add_argument("--url", default=None, help="override the download address (mirror)")
    fetch.set_defaults(run=_weights_download)
    verify = weights_commands.add_parser("verify", help="check that a checkpoint loads into its model")
    verify.add_argument("model")
    verify.add_argument("--checkpoint", type=Path, default=None)
    verify.set_defaults(run=_weights_verify)


def _weights_list(args: argparse.Namespace) -> None:
    from ..engine.registry import REGISTRY, default_checkpoint_path

    for spec in REGISTRY.values():
        path = default_checkpoint_path(spec)
        state = "present" if path.is_file() else "missing"
        print(f"{spec.model_id:<11} {state:<8} {path}  ({spec.description})")


def _weights_download(args: argparse.Namespace) -> None:
    from ..engine.checkpoints import download
    from ..engine.registry import default_checkpoint_path, get_spec

    spec = get_spec(args.model)
    url = args.url or spec.url
    if url is None:
        raise InputError(f"{spec.model_id} has no download address", f"place {spec.checkpoint_name} in the weights folder or pass --url")
    destination = default_checkpoint_path(spec)
    bar, update = progress_bar(spec.checkpoint_name, "B", unit_scale=True, unit_divisor=1024)
    with bar:
        download(url, destination, spec.sha256, update)
    print(f"{spec.model_id}: {destination} (sha256 verified)" if spec.sha256 else f"{spec.model_id}: {destination}")


def _weights_verify(args: argparse.Namespace) -> None:
    from ..engine.registry import load_backend

    backend = load_backend(args.model, args.checkpoint, "cpu")
    print(f"{args.model}: checkpoint OK (sha256 {backend.weights_sha256})")
