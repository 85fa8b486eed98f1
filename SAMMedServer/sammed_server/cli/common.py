"""Shared pieces of the command modules: argument types, model options, progress bars, label loading."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from ..engine.runtimes import RUNTIMES
from ..errors import InputError

#: `train <command>` → automatic model mode (``adapted.store.MODES``).
AUTO_MODES = {"hsam": "hsam", "masam": "masam", "decoder": "decoder_only"}


def model_options(parser: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    parser.add_argument("--model", default="litemedsam", help="model id (see `sammed-server weights list`)")
    if checkpoint:
        parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file (default: weights folder)")
        parser.add_argument("--window", default=None, help="abdomen|lung|bone|brain|mr|LEVEL,WIDTH (default: auto)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    parser.add_argument("--runtime", default=None, choices=("auto", *RUNTIMES),
                        help="inference runtime (default $SAMMED_RUNTIME or auto: ONNX Runtime on the CPU, torch on CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default $SAMMED_THREADS or all usable cores; decode gets 1, encode the rest)")


def runtime_environment(args: argparse.Namespace) -> None:
    """Make ``--runtime`` / ``--threads`` the process default (``$SAMMED_RUNTIME`` / ``$SAMMED_THREADS``), so
    every backend this command loads, and every worker it starts, uses them."""
    if getattr(args, "runtime", None):
        os.environ["SAMMED_RUNTIME"] = args.runtime
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        os.environ["SAMMED_THREADS"] = str(args.threads)


def floats(count: int):
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}") from None
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
        return values

    return parse


def ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated slice indices, got {text!r}") from None


def names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated organ names, got {text!r}")
    return names


def point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    if len(parts) != 3 or parts[2] not in ("+", "-"):
        raise argparse.ArgumentTypeError(f"a point is x,y,+ or x,y,- ; got {text!r}")
    x, y = floats(2)(",".join(parts[:2]))
    return x, y, 1 if parts[2] == "+" else 0


def make_predictor(args: argparse.Namespace):
    from ..engine.cache import EmbeddingCache
    from ..engine.predictor import SlicePredictor
    from ..engine.registry import load_backend

    backend = load_backend(args.model, getattr(args, "checkpoint", None), args.device)
    return SlicePredictor(backend, EmbeddingCache.from_settings())


def progress_bar(description: str, unit: str, **options):
    """A tqdm bar and a ``(done, total)`` callback that drives it."""
    bar = tqdm(desc=description, unit=unit, dynamic_ncols=True, **options)

    def update(done: int, total: Optional[int]) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def loss_bar(description: str, total: Optional[int]):
    """A tqdm bar over training steps and a ``(step, total, loss)`` callback that drives it and shows the loss."""
    bar = tqdm(total=total, desc=description, unit="step", dynamic_ncols=True)

    def update(step: int, total: Optional[int], loss: float) -> None:
        bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")

    return bar, update


def annotated_slices(args: argparse.Namespace):
    """The volume and ``{slice: label == args.label}`` on ``args.slices`` (labels checked against the volume)."""
    from ..engine.geometry import load_labels
    from ..engine.volume import load_volume, slice_index

    volume = load_volume(args.volume)
    labels = load_labels(args.labels, volume)
    count = volume.num_slices(args.axis)
    if not all(0 <= k < count for k in args.slices):
        raise InputError(f"--slices must lie in 0..{count - 1}")
    return volume, {k: labels[slice_index(args.axis, k)] == args.label for k in args.slices}


def organ_table(args: argparse.Namespace, labels) -> dict[str, int]:
    """{organ: label value} from --label-names (default labels.json beside LABELS), limited to --organs."""
    import numpy as np

    from ..adapted.data import parse_classes

    names_file = args.label_names or args.labels.parent / "labels.json"
    if not names_file.is_file():
        raise InputError(f"no label names: {names_file} does not exist", "pass --label-names labels.json")
    classes = parse_classes(None, names_file, [args.labels.name])
    table = dict(zip(classes.names, classes.values))
    if args.organs:
        unknown = [o for o in args.organs if o not in table]
        if unknown:
            raise InputError(f"unknown organ(s) {', '.join(unknown)}", f"{names_file.name} names: {', '.join(table)}")
        return {o: table[o] for o in args.organs}
    present = set(np.unique(labels).tolist())
    return {name: value for name, value in table.items() if value in present}
