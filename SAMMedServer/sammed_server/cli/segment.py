"""`embed` and `segment`: precompute embeddings, segment a slice or a whole volume."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .common import floats, make_predictor, model_options, point, progress_bar


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `embed` and `segment` command(s)."""
    embed = commands.add_parser("embed", help="precompute and cache the embeddings of a volume")
    embed.add_argument("volume", type=Path, help="NIfTI/NRRD/MHA file or DICOM folder")
    embed.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="IJK axis to slice along (2 = K)")
    model_options(embed)
    embed.set_defaults(run=_embed)

    segment = commands.add_parser("segment", help="segment one slice from a box and/or points (one \"+\" point is enough)")
    segment.add_argument("volume", type=Path)
    segment.add_argument("--slice", type=int, default=None, help="slice index along --axis (prompted segmentation)")
    segment.add_argument("--auto", default=None, metavar="MODEL_ID",
                         help="segment every slice with a stored SAP-Net (`train sapnet`) or automatic model (`train hsam|masam`)")
    segment.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    segment.add_argument("--box", type=floats(4), help="x0,y0,x1,y1 in slice pixels (x = column, y = row)")
    segment.add_argument("--point", type=point, action="append", default=[], help="x,y,+ or x,y,- (repeatable)")
    segment.add_argument("--name", default="Segment_1", help="segment name in the output")
    segment.add_argument("--color", type=floats(3), default=None, help="r,g,b in [0, 1]")
    segment.add_argument("-o", "--output", type=Path, required=True, help="out.seg.nrrd or out.nii.gz")
    segment.add_argument("--prompt-encoder", default=None, help="id of a learned prompt encoder (`train prompt-encoder`)")
    model_options(segment)
    segment.set_defaults(run=_segment)


def _embed(args: argparse.Namespace) -> None:
    from ..engine.volume import load_volume

    predictor = make_predictor(args)
    prepared = predictor.prepare(load_volume(args.volume), args.window)
    bar, update = progress_bar(f"embedding {args.volume.name}", "slice")
    with bar:
        encoded = predictor.precompute(prepared, args.axis, progress=update)
    count = prepared.volume.num_slices(args.axis)
    print(f"{encoded} slice(s) encoded, {count - encoded} already cached; "
          f"cache: {predictor.cache.location(predictor.store_key(prepared, args.axis))}")


def _segment(args: argparse.Namespace) -> None:
    import numpy as np

    from ..engine.prompts import SlicePrompts
    from ..engine.segmentation_file import Segment, default_color, write_segmentation
    from ..engine.volume import load_volume, slice_index

    if args.auto:
        return _segment_auto(args)
    if args.slice is None or (args.box is None and not args.point):
        raise InputError("give --slice and a --box and/or at least one --point", "or --auto MODEL_ID for every organ")
    predictor = make_predictor(args)
    volume = load_volume(args.volume)
    prepared = predictor.prepare(volume, args.window)
    prompts = SlicePrompts(
        points=[(x, y) for x, y, _ in args.point], labels=[label for _, _, label in args.point], box=args.box
    )
    learned = None
    if args.prompt_encoder:
        from ..sammed.learned_prompts import load_prompt_encoder

        learned = load_prompt_encoder(args.prompt_encoder, predictor.backend)
    prediction = predictor.predict(prepared, args.axis, args.slice, prompts, prompt_encoder=learned)
    mask = np.zeros(volume.array.shape, dtype=bool)
    mask[slice_index(args.axis, args.slice)] = prediction.masks[prediction.best]
    color = tuple(args.color) if args.color else default_color(0)
    path = write_segmentation(volume, [Segment(args.name, mask, color)], args.output)
    resolved = "" if prediction.box is None else " from box " + ",".join(f"{v:.1f}" for v in prediction.box)
    print(f"{args.name}: {int(mask.sum())} voxels on slice {args.slice}{resolved} (predicted IoU "
          f"{float(prediction.scores[prediction.best]):.3f}) -> {path}")


def _segment_sapnet(args: argparse.Namespace) -> None:
    from ..artefacts import read_manifest
    from ..engine.segmentation_file import Segment, default_color, write_segmentation
    from ..engine.volume import load_volume
    from ..sammed.canonical import auto_segment_native
    from ..sammed.sapnet import load_sapnet

    predictor = make_predictor(args)
    sapnet = load_sapnet(args.auto, predictor.backend)
    encoder, prompt = None, "box"
    if args.prompt_encoder:
        from ..sammed.learned_prompts import load_prompt_encoder

        encoder = load_prompt_encoder(args.prompt_encoder, predictor.backend)
        prompt = read_manifest("prompt_encoders", args.prompt_encoder)["prompt_type"]
    volume = load_volume(args.volume)
    bar, update = progress_bar(f"SAM-auto {args.volume.name}", "step")
    with bar:
        result = auto_segment_native(predictor, volume, sapnet, args.axis, window=args.window, prompt_encoder=encoder,
                                     prompt=prompt, progress=update)
    color = tuple(args.color) if args.color else default_color(0)
    path = write_segmentation(volume, [Segment(sapnet.name, result.mask, color)], args.output)
    print(f"{sapnet.name}: {int(result.mask.sum())} voxels on {len(result.prompts)} slice(s) ({prompt} prompts) -> {path}")


def _segment_auto(args: argparse.Namespace) -> None:
    from ..adapted.inference import segment_with_auto_model
    from ..adapted.store import ARTEFACT_KIND
    from ..artefacts import artefact_kind
    from ..engine.segmentation_file import write_segmentation
    from ..engine.volume import load_volume

    if artefact_kind(args.auto, ("sapnets", ARTEFACT_KIND)) == "sapnets":
        return _segment_sapnet(args)
    predictor = make_predictor(args)
    volume = load_volume(args.volume)
    bar, update = progress_bar(f"segmenting {args.volume.name}", "window")
    with bar:
        segments = segment_with_auto_model(args.auto, predictor.backend, volume, predictor.cache, args.axis, update)
    path = write_segmentation(volume, segments, args.output)
    for segment in segments:
        print(f"{segment.name}: {int(segment.mask.sum())} voxels")
    print(f"-> {path}")
