"""`sammed-server`: serve | embed | segment | demo | bench | weights."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from tqdm import tqdm

from . import __version__
from .errors import InputError, SAMMedError


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="sammed-server: %(levelname)s: %(message)s")
    try:
        return args.run(args) or 0
    except SAMMedError as exc:
        print(f"sammed-server: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"sammed-server: hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sammed-server: interrupted", file=sys.stderr)
        return 130


#: `train <command>` → automatic model mode (``adapted.store.MODES``).
AUTO_MODES = {"hsam": "hsam", "masam": "masam", "decoder": "decoder_only"}

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sammed-server", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sammed-server {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP worker the Slicer module talks to")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs --token)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token", default=None, help="API token every request must carry")
    _model_options(serve, checkpoint=False)
    serve.set_defaults(run=_serve)

    embed = commands.add_parser("embed", help="precompute and cache the embeddings of a volume")
    embed.add_argument("volume", type=Path, help="NIfTI/NRRD/MHA file or DICOM folder")
    embed.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="IJK axis to slice along (2 = K)")
    _model_options(embed)
    embed.set_defaults(run=_embed)

    segment = commands.add_parser("segment", help="segment one slice from a box and/or points")
    segment.add_argument("volume", type=Path)
    segment.add_argument("--slice", type=int, default=None, help="slice index along --axis (prompted segmentation)")
    segment.add_argument("--auto", default=None, metavar="MODEL_ID",
                         help="segment every slice with a stored SAP-Net (`train sapnet`) or automatic model (`train hsam|masam`)")
    segment.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    segment.add_argument("--box", type=_floats(4), help="x0,y0,x1,y1 in slice pixels (x = column, y = row)")
    segment.add_argument("--point", type=_point, action="append", default=[], help="x,y,+ or x,y,- (repeatable)")
    segment.add_argument("--name", default="Segment_1", help="segment name in the output")
    segment.add_argument("--color", type=_floats(3), default=None, help="r,g,b in [0, 1]")
    segment.add_argument("-o", "--output", type=Path, required=True, help="out.seg.nrrd or out.nii.gz")
    segment.add_argument("--prompt-encoder", default=None, help="id of a learned prompt encoder (`train prompt-encoder`)")
    _model_options(segment)
    segment.set_defaults(run=_segment)

    train = commands.add_parser("train", help="train a SAM-assist prompt encoder from annotated slices")
    train_kinds = train.add_subparsers(required=True, metavar="KIND")
    prompt = train_kinds.add_parser("prompt-encoder", help="learn a target from a few annotated slices (SAM^Med)")
    prompt.add_argument("volume", type=Path)
    prompt.add_argument("--labels", type=Path, required=True, help="labelmap on the volume's grid")
    prompt.add_argument("--label", type=int, required=True, help="label value of the target")
    prompt.add_argument("--slices", type=_ints, required=True, help="annotated slice indices, e.g. 10,20")
    prompt.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    prompt.add_argument("--name", default=None, help="target name stored in the artefact (default: label_N)")
    prompt.add_argument("--prompt-type", default="point", choices=("point", "box", "composite"))
    prompt.add_argument("--scheme", default="center", choices=("uniform", "center", "boundary"))
    prompt.add_argument("--iterations", type=int, default=40)
    _model_options(prompt)
    prompt.set_defaults(run=_train_prompt_encoder)
    sapnet = train_kinds.add_parser("sapnet", help="SAM-auto: a SAP-Net from a few annotated slices (SAM^Med)")
    sapnet.add_argument("volume", type=Path)
    sapnet.add_argument("--labels", type=Path, required=True, help="labelmap on the volume's grid")
    sapnet.add_argument("--label", type=int, required=True, help="label value of the target")
    sapnet.add_argument("--slices", type=_ints, required=True, help="annotated slice indices, e.g. 7,22")
    sapnet.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    sapnet.add_argument("--name", default=None, help="target name stored in the artefact (default: label_N)")
    sapnet.add_argument("--iterations", type=int, default=60)
    sapnet.add_argument("--beta", type=float, default=2.0, help="biased Dice: weight of false positives")
    _model_options(sapnet)
    sapnet.set_defaults(run=_train_sapnet)
    for command, text in (
            ("hsam", "H-SAM: LoRA encoder + hierarchical two-stage decoder, segments all organs"),
            ("masam", "MA-SAM: FacT + 3D adapters on 5-slice windows, segments all organs"),
            ("decoder", "frozen encoder, SAM decoder with one token per organ (SAMed without LoRA): no encoder pass "
                        "while training, so about 70x faster per step on a CPU")):
        _auto_training_options(train_kinds.add_parser(command, help=text)).set_defaults(
            run=_train_auto, mode=AUTO_MODES[command])

    evaluate = commands.add_parser("evaluate", help="SAM^Med prompt protocols per organ: Markdown table + CSV")
    evaluate.add_argument("volume", type=Path)
    evaluate.add_argument("labels", type=Path, help="reference labelmap on the volume's grid")
    evaluate.add_argument("--organs", type=_names, default=None, help="e.g. liver,spleen (default: every named label)")
    evaluate.add_argument("--label-names", type=Path, default=None,
                          help="labels.json: {value: name} or {labelmap file name: {value: name}} (default: beside LABELS)")
    evaluate.add_argument("--train-slices", type=_ints, default=[2, 5], help="slice counts for learned encoders")
    evaluate.add_argument("--out", type=Path, default=None, help="CSV path (default: out/eval/VOLUME.csv)")
    evaluate.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--max-slices", type=int, default=None, help="evaluate at most N evenly spaced slices per organ")
    evaluate.add_argument("--iterations", type=int, default=40, help="prompt encoder training iterations")
    evaluate.add_argument("--no-sapnet", action="store_true", help="skip the SAP-Net / SAM-auto rows")
    evaluate.add_argument("--quick", action="store_true",
                          help="for tests: 1-point prompts, ≤ 3 slices, 1 click, learned point encoder only, no SAP-Net")
    _model_options(evaluate)
    evaluate.set_defaults(run=_evaluate)

    demo = commands.add_parser("demo", help="embed a CT, segment organs from boxes, write .seg.nrrd + PNG, print Dice")
    demo.add_argument("volume", type=Path, nargs="?", help="default: the sample CT (data directory or download)")
    demo.add_argument("--reference", type=Path, help="labelmap to simulate boxes from and score against")
    demo.add_argument("-o", "--output-dir", type=Path, default=Path("out/demo"))
    _model_options(demo)
    demo.set_defaults(run=_demo)

    bench = commands.add_parser("bench", help="print encoder/decoder speed, cache and memory numbers")
    bench.add_argument("volume", type=Path, nargs="?", help="default: the sample CT")
    bench.add_argument("--slices", type=int, default=5)
    bench.add_argument("--decodes", type=int, default=100)
    bench.add_argument("--http", action="store_true", help="also measure predict round trips over loopback HTTP")
    bench.add_argument("--reference", type=Path, default=None,
                       help="labelmap for the prompt-encoder training row (default: the sample's)")
    bench.add_argument("--auto", type=_names, default=None,
                       help="also time automatic models, e.g. hsam,masam,decoder (needs the labelmap)")
    bench.add_argument("--auto-steps", type=int, default=3, help="timed training steps per automatic model")
    _model_options(bench)
    bench.set_defaults(run=_bench)

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
    return parser


def _auto_training_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="training volumes")
    parser.add_argument("--labels", type=Path, nargs="+", required=True, help="one labelmap per volume, same grid")
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classes", help="organs as VALUE=NAME pairs, e.g. 5=liver,1=spleen")
    classes.add_argument("--label-names", type=Path, help="labels.json: {value: name} (or one table per labelmap)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fraction", type=float, default=None, help="share of slices to train on (default 0.1)")
    which.add_argument("--slices", type=_ints, default=None, help="annotated slice indices used in every volume")
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--minutes", type=float, help="training time budget")
    length.add_argument("--iterations", type=int, help="training steps")
    parser.add_argument("--resume", action="store_true", help="continue the same job from its last checkpoint")
    parser.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--name", default=None, help="artefact name (default: mode and organs)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA/FacT rank (default: 4 for H-SAM, 32 for MA-SAM)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-3; MA-SAM 3e-4)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action="store_true",
                        help="random rotation (±20°) and scaling per window; recomputes the stem every step")
    _model_options(parser, checkpoint=False)
    return parser


def _model_options(parser: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    parser.add_argument("--model", default="litemedsam", help="model id (see `sammed-server weights list`)")
    if checkpoint:
        parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file (default: weights folder)")
        parser.add_argument("--window", default=None, help="abdomen|lung|bone|brain|mr|LEVEL,WIDTH (default: auto)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")


def _floats(count: int):
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}") from None
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
        return values

    return parse


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated slice indices, got {text!r}") from None


def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated organ names, got {text!r}")
    return names


def _point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    if len(parts) != 3 or parts[2] not in ("+", "-"):
        raise argparse.ArgumentTypeError(f"a point is x,y,+ or x,y,- ; got {text!r}")
    x, y = _floats(2)(",".join(parts[:2]))
    return x, y, 1 if parts[2] == "+" else 0


def _predictor(args: argparse.Namespace):
    from .engine.cache import EmbeddingCache
    from .engine.predictor import SlicePredictor
    from .engine.registry import load_backend
    from .settings import embedding_cache_dir, memory_cache_bytes

    backend = load_backend(args.model, getattr(args, "checkpoint", None), args.device)
    return SlicePredictor(backend, EmbeddingCache(embedding_cache_dir(), memory_cache_bytes()))


def _progress_bar(description: str, unit: str, **options):
    """A tqdm bar and a ``(done, total)`` callback that drives it."""
    bar = tqdm(desc=description, unit=unit, dynamic_ncols=True, **options)

    def update(done: int, total: Optional[int]) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _loss_bar(description: str, total: Optional[int]):
    """A tqdm bar over training steps and a ``(step, total, loss)`` callback that drives it and shows the loss."""
    bar = tqdm(total=total, desc=description, unit="step", dynamic_ncols=True)

    def update(step: int, total: Optional[int], loss: float) -> None:
        bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")

    return bar, update


def _annotated_slices(args: argparse.Namespace, predictor):
    """The volume prepared for ``predictor`` and ``{slice: label == args.label}`` on ``args.slices``."""
    from .engine.volume import load_volume, slice_index

    volume = load_volume(args.volume)
    labels = load_volume(args.labels).array
    if labels.shape != volume.array.shape:
        raise InputError(f"the labelmap has shape {labels.shape}, the volume {volume.array.shape}")
    annotations = {k: labels[slice_index(args.axis, k)] == args.label for k in args.slices}
    return predictor.prepare(volume, args.window), annotations


def _serve(args: argparse.Namespace) -> None:
    from .api.server import serve

    serve(host=args.host, port=args.port, token=args.token, model=args.model, device=args.device)


def _embed(args: argparse.Namespace) -> None:
    from .engine.volume import load_volume

    predictor = _predictor(args)
    prepared = predictor.prepare(load_volume(args.volume), args.window)
    bar, update = _progress_bar(f"embedding {args.volume.name}", "slice")
    with bar:
        encoded = predictor.precompute(prepared, args.axis, progress=update)
    count = prepared.volume.num_slices(args.axis)
    print(f"{encoded} slice(s) encoded, {count - encoded} already cached; "
          f"cache: {predictor.cache.location(predictor.store_key(prepared, args.axis))}")


def _segment(args: argparse.Namespace) -> None:
    import numpy as np

    from .engine.prompts import SlicePrompts
    from .engine.segmentation_file import Segment, default_color, write_segmentation
    from .engine.volume import load_volume, slice_index

    if args.auto:
        return _segment_auto(args)
    if args.slice is None or (args.box is None and not args.point):
        raise InputError("give --slice and a --box and/or at least one --point", "or --auto MODEL_ID for every organ")
    predictor = _predictor(args)
    volume = load_volume(args.volume)
    prepared = predictor.prepare(volume, args.window)
    prompts = SlicePrompts(
        points=[(x, y) for x, y, _ in args.point], labels=[label for _, _, label in args.point], box=args.box
    )
    learned = None
    if args.prompt_encoder:
        from .sammed.learned_prompts import load_prompt_encoder

        learned = load_prompt_encoder(args.prompt_encoder, predictor.backend)
    prediction = predictor.predict(prepared, args.axis, args.slice, prompts, prompt_encoder=learned)
    mask = np.zeros(volume.array.shape, dtype=bool)
    mask[slice_index(args.axis, args.slice)] = prediction.masks[prediction.best]
    color = tuple(args.color) if args.color else default_color(0)
    path = write_segmentation(volume, [Segment(args.name, mask, color)], args.output)
    print(f"{args.name}: {int(mask.sum())} voxels on slice {args.slice} (predicted IoU "
          f"{float(prediction.scores[prediction.best]):.3f}) -> {path}")


def _train_prompt_encoder(args: argparse.Namespace) -> None:
    from .sammed.learned_prompts import PromptTrainingConfig, save_prompt_encoder, train_prompt_encoder

    predictor = _predictor(args)
    prepared, annotations = _annotated_slices(args, predictor)
    config = PromptTrainingConfig(prompt_type=args.prompt_type, scheme=args.scheme, iterations=args.iterations)
    bar, update = _loss_bar("training prompt encoder", config.iterations)
    with bar:
        trained = train_prompt_encoder(predictor, prepared, args.axis, annotations, config, update)
    name = args.name or f"label_{args.label}"
    artefact_id = save_prompt_encoder(trained, name, prepared, args.axis, sorted(annotations), predictor)
    print(f"{artefact_id}: {config.prompt_type} prompt encoder for {name}, {len(annotations)} slice(s), "
          f"{trained.seconds:.0f} s, loss {trained.losses[0]:.3f} -> {trained.losses[-1]:.3f}")


def _train_sapnet(args: argparse.Namespace) -> None:
    from .sammed.sapnet import SAPNetConfig, save_sapnet, train_sapnet

    predictor = _predictor(args)
    prepared, annotations = _annotated_slices(args, predictor)
    config = SAPNetConfig(iterations=args.iterations, beta=args.beta).check()
    bar, update = _loss_bar("training SAP-Net", config.iterations)
    with bar:
        trained = train_sapnet(predictor, prepared, args.axis, annotations, config, update)
    name = args.name or f"label_{args.label}"
    artefact_id = save_sapnet(trained, name, prepared, args.axis, sorted(annotations), predictor)
    print(f"{artefact_id}: SAP-Net for {name}, {len(annotations)} slice(s), {trained.seconds:.0f} s, "
          f"loss {trained.losses[0]:.3f} -> {trained.losses[-1]:.3f}")


def _segment_sapnet(args: argparse.Namespace) -> None:
    from .artefacts import read_manifest
    from .engine.segmentation_file import Segment, default_color, write_segmentation
    from .engine.volume import load_volume
    from .sammed.auto_segment import auto_segment
    from .sammed.sapnet import load_sapnet

    predictor = _predictor(args)
    sapnet = load_sapnet(args.auto, predictor.backend)
    encoder, prompt = None, "box"
    if args.prompt_encoder:
        from .sammed.learned_prompts import load_prompt_encoder

        encoder = load_prompt_encoder(args.prompt_encoder, predictor.backend)
        prompt = read_manifest("prompt_encoders", args.prompt_encoder)["prompt_type"]
    volume = load_volume(args.volume)
    prepared = predictor.prepare(volume, args.window)
    bar, update = _progress_bar(f"SAM-auto {args.volume.name}", "step")
    with bar:
        result = auto_segment(predictor, prepared, args.axis, sapnet, prompt_encoder=encoder, prompt=prompt,
                              progress=update)
    color = tuple(args.color) if args.color else default_color(0)
    path = write_segmentation(volume, [Segment(sapnet.name, result.mask, color)], args.output)
    print(f"{sapnet.name}: {int(result.mask.sum())} voxels on {len(result.prompts)} slice(s) ({prompt} prompts) -> {path}")


def _segment_auto(args: argparse.Namespace) -> None:
    from .adapted.inference import segment_with_auto_model
    from .adapted.store import ARTEFACT_KIND
    from .artefacts import artefact_kind
    from .engine.segmentation_file import write_segmentation
    from .engine.volume import load_volume

    if artefact_kind(args.auto, ("sapnets", ARTEFACT_KIND)) == "sapnets":
        return _segment_sapnet(args)
    predictor = _predictor(args)
    volume = load_volume(args.volume)
    bar, update = _progress_bar(f"segmenting {args.volume.name}", "window")
    with bar:
        segments = segment_with_auto_model(args.auto, predictor.backend, volume, predictor.cache, args.axis, update)
    path = write_segmentation(volume, segments, args.output)
    for segment in segments:
        print(f"{segment.name}: {int(segment.mask.sum())} voxels")
    print(f"-> {path}")


def _train_auto(args: argparse.Namespace) -> None:
    from .adapted.data import AnnotatedVolume, choose_slices, parse_classes
    from .adapted.jobs import run_training_job
    from .adapted.store import DEFAULT_LEARNING_RATES
    from .adapted.training import AutoTrainingConfig
    from .engine.volume import load_volume

    if len(args.images) != len(args.labels):
        raise InputError(f"{len(args.images)} image(s) but {len(args.labels)} labelmap(s)", "give one labelmap per image")
    if args.mode == "decoder_only" and args.rank is not None:
        raise InputError("--rank sets the LoRA/FacT rank; the decoder-only model has no adapters")
    classes = parse_classes(args.classes, args.label_names, [p.name for p in args.labels])
    volumes = []
    for image_path, labels_path in zip(args.images, args.labels):
        volume, labels = load_volume(image_path), load_volume(labels_path).array
        count = volume.num_slices(args.axis)
        if args.slices is not None and not all(0 <= k < count for k in args.slices):
            raise InputError(f"--slices must lie in 0..{count - 1} for {image_path.name}")
        slices = args.slices if args.slices is not None else choose_slices(labels, classes, args.axis, args.fraction or 0.1)
        volumes.append(AnnotatedVolume(volume, labels, tuple(sorted(set(slices)))))
    learning_rate = args.lr if args.lr is not None else DEFAULT_LEARNING_RATES[args.mode]
    config = AutoTrainingConfig(iterations=args.iterations, minutes=args.minutes, learning_rate=learning_rate,
                                batch_size=args.batch_size, seed=args.seed, augment=args.augment)
    predictor = _predictor(args)
    feature_bar, feature_update = _progress_bar("features", "slice")
    bar, show_loss = _loss_bar(f"training {args.mode}", args.iterations)

    def update(step: int, total: Optional[int], loss: float) -> None:
        feature_bar.close()
        show_loss(step, total, loss)

    with bar:
        trained = run_training_job(args.mode, predictor.backend, volumes, classes, config, predictor.cache, args.name,
                                   {} if args.rank is None else {"rank": args.rank}, args.axis, args.resume, update,
                                   feature_update)
    feature_bar.close()
    record = trained.record
    resumed = f", resumed at step {record.resumed_from[-1]}" if record.resumed_from else ""
    print(f"{trained.artefact_id}: {args.mode} for {', '.join(classes.names)}, {record.steps} steps, "
          f"{record.seconds:.0f} s{resumed}, loss {record.losses[0]:.3f} -> {record.losses[-1]:.3f}")


def _evaluate(args: argparse.Namespace) -> None:
    import time
    from dataclasses import replace

    from .engine.volume import load_volume
    from .evaluation.protocols import EvaluationConfig, evaluate
    from .evaluation.report import markdown_table, write_csv
    from .sammed.learned_prompts import PromptTrainingConfig

    volume = load_volume(args.volume)
    labels = load_volume(args.labels).array
    organs = _organ_table(args, labels)
    config = EvaluationConfig(train_slices=tuple(args.train_slices), sapnet=not args.no_sapnet, seed=args.seed,
                              max_eval_slices=args.max_slices, training=PromptTrainingConfig(iterations=args.iterations))
    if args.quick:  # the settings test_learned_prompts shows to learn a point target from 2 slices
        config = replace(config, point_counts=(1,), clicks=1, max_eval_slices=3, learned_types=("point",), sapnet=False,
                         training=replace(config.training, prompts_per_slice=2, learning_rate=3e-3))
    predictor = _predictor(args)
    prepared = predictor.prepare(volume, args.window)
    started = time.perf_counter()
    bar = tqdm(desc="evaluating", unit="step", dynamic_ncols=True)
    with bar:
        def update(done: int, total: int, what: str) -> None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(what)

        rows = evaluate(predictor, prepared, args.axis, labels, organs, config, update)
    out = args.out or Path("out/eval") / f"{args.volume.name.split('.')[0]}.csv"
    print(f"\n{markdown_table(rows)}\n\n{len(rows)} rows -> {write_csv(rows, out)} ({time.perf_counter() - started:.0f} s)")


def _organ_table(args: argparse.Namespace, labels) -> dict[str, int]:
    """{organ: label value} from --label-names (default labels.json beside LABELS), limited to --organs."""
    import numpy as np

    from .adapted.data import parse_classes

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


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo
    from .sample_data import find_sample

    sample = find_sample(args.volume, args.reference)
    print(f"volume: {sample.volume} ({sample.origin})")
    predictor = _predictor(args)
    bar, update = _progress_bar("embedding", "slice")
    with bar:
        results, seg_path, png_path = run_demo(predictor, sample.volume, sample.reference, args.output_dir, progress=update)
    print(f"\n{'organ':<16}{'slices':>7}{'volume Dice':>13}{'largest-slice Dice':>20}")
    for r in results:
        print(f"{r.name:<16}{r.slices:>7}{r.volume_dice:>13.3f}{r.largest_slice_dice:>20.3f}")
    print(f"\nsegmentation: {seg_path}\noverlay:      {png_path}")


def _bench(args: argparse.Namespace) -> None:
    from .bench import print_table, run_bench
    from .sample_data import find_sample

    sample = find_sample(args.volume, args.reference)
    volume = sample.volume
    rows = run_bench(volume, args.model, args.checkpoint, args.device, args.slices, args.decodes)
    if sample.reference is not None:
        from .bench import prompt_training_bench

        rows += prompt_training_bench(volume, sample.reference, args.model, args.checkpoint, args.device)
    print_table(rows, f"sammed-server bench: {volume.name}")
    if args.auto:
        from .bench import auto_model_bench

        if sample.reference is None:
            raise InputError("--auto needs a labelmap to train on", "pass --reference LABELS")
        modes = [AUTO_MODES.get(command, command) for command in args.auto]
        print_table(auto_model_bench(volume, sample.reference, modes, args.auto_steps, args.model, args.checkpoint,
                                     args.device), f"automatic models (LiteMedSAM backbone unless --model): {volume.name}")
    if args.http:
        from .api.bench_http import http_roundtrip_bench

        print_table(http_roundtrip_bench(volume, n=args.decodes, model=args.model, device=args.device), "HTTP round trip (loopback)")


def _weights_list(args: argparse.Namespace) -> None:
    from .engine.registry import REGISTRY, default_checkpoint_path

    for spec in REGISTRY.values():
        path = default_checkpoint_path(spec)
        state = "present" if path.is_file() else "missing"
        print(f"{spec.model_id:<11} {state:<8} {path}  ({spec.description})")


def _weights_download(args: argparse.Namespace) -> None:
    from .engine.checkpoints import download
    from .engine.registry import default_checkpoint_path, get_spec

    spec = get_spec(args.model)
    url = args.url or spec.url
    if url is None:
        raise InputError(f"{spec.model_id} has no download address", f"place {spec.checkpoint_name} in the weights folder or pass --url")
    destination = default_checkpoint_path(spec)
    bar, update = _progress_bar(spec.checkpoint_name, "B", unit_scale=True, unit_divisor=1024)
    with bar:
        download(url, destination, spec.sha256, update)
    print(f"{spec.model_id}: {destination} (sha256 verified)" if spec.sha256 else f"{spec.model_id}: {destination}")


def _weights_verify(args: argparse.Namespace) -> None:
    from .engine.registry import load_backend

    backend = load_backend(args.model, args.checkpoint, "cpu")
    print(f"{args.model}: checkpoint OK (sha256 {backend.weights_sha256})")


if __name__ == "__main__":
    sys.exit(main())
