"""`train`: prompt encoders, SAP-Nets and automatic models."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .common import AUTO_MODES, annotated_slices, ints, loss_bar, make_predictor, model_options, progress_bar


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `train` command(s)."""
    train = commands.add_parser("train", help="train a SAM-assist prompt encoder from annotated slices")
    train_kinds = train.add_subparsers(required=True, metavar="KIND")
    prompt = _annotated_slice_options(
        train_kinds.add_parser("prompt-encoder", help="learn a target from a few annotated slices (SAM^Med)"), "10,20")
    prompt.add_argument("--prompt-type", default="point", choices=("point", "box", "composite"))
    prompt.add_argument("--scheme", default="center", choices=("uniform", "center", "boundary"))
    prompt.add_argument("--iterations", type=int, default=None, help="training steps (default 16)")
    model_options(prompt)
    prompt.set_defaults(run=_train_prompt_encoder)
    sapnet = _annotated_slice_options(
        train_kinds.add_parser("sapnet", help="SAM-auto: a SAP-Net from a few annotated slices (SAM^Med)"), "7,22")
    sapnet.add_argument("--iterations", type=int, default=60)
    sapnet.add_argument("--beta", type=float, default=2.0, help="biased Dice: weight of false positives")
    model_options(sapnet)
    sapnet.set_defaults(run=_train_sapnet)
    for command, text in (
            ("hsam", "H-SAM: LoRA encoder + hierarchical two-stage decoder, segments all organs"),
            ("masam", "MA-SAM: FacT + 3D adapters on 5-slice windows, segments all organs"),
            ("decoder", "frozen encoder, SAM decoder with one token per organ (SAMed without LoRA): no encoder pass "
                        "while training, so about 70x faster per step on a CPU")):
        auto_training_options(train_kinds.add_parser(command, help=text)).set_defaults(
            run=_train_auto, mode=AUTO_MODES[command])


def _annotated_slice_options(parser: argparse.ArgumentParser, example_slices: str) -> argparse.ArgumentParser:
    """The volume, its labelmap, the target label and the annotated slices (prompt encoders and SAP-Nets)."""
    parser.add_argument("volume", type=Path)
    parser.add_argument("--labels", type=Path, required=True, help="labelmap of the volume (resampled onto its grid if needed)")
    parser.add_argument("--label", type=int, required=True, help="label value of the target")
    parser.add_argument("--slices", type=ints, required=True, help=f"annotated slice indices, e.g. {example_slices}")
    parser.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--name", default=None, help="target name stored in the artefact (default: label_N)")
    return parser


def auto_training_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="training volumes")
    parser.add_argument("--labels", type=Path, nargs="+", required=True, help="one labelmap per volume, same grid")
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classes", help="organs as VALUE=NAME pairs, e.g. 5=liver,1=spleen")
    classes.add_argument("--label-names", type=Path, help="labels.json: {value: name} (or one table per labelmap)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fraction", type=float, default=None, help="share of slices to train on (default 0.1)")
    which.add_argument("--slices", type=ints, default=None, help="annotated slice indices used in every volume")
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
    model_options(parser, checkpoint=False)
    return parser


def _train_prompt_encoder(args: argparse.Namespace) -> None:
    from ..sammed.learned_prompts import (
        PromptTrainingConfig,
        save_prompt_encoder,
        train_prompt_encoder,
    )

    predictor = make_predictor(args)
    volume, annotations = annotated_slices(args)
    prepared = predictor.prepare(volume, args.window)
    config = PromptTrainingConfig(prompt_type=args.prompt_type, scheme=args.scheme,
                                  iterations=args.iterations or PromptTrainingConfig.iterations)
    bar, update = loss_bar("training prompt encoder", config.iterations)
    with bar:
        trained = train_prompt_encoder(predictor, prepared, args.axis, annotations, config, update)
    name = args.name or f"label_{args.label}"
    artefact_id = save_prompt_encoder(trained, name, prepared, args.axis, sorted(annotations), predictor)
    print(f"{artefact_id}: {config.prompt_type} prompt encoder for {name}, {len(annotations)} slice(s), "
          f"{trained.seconds:.0f} s, loss {trained.losses[0]:.3f} -> {trained.losses[-1]:.3f}")


def _train_sapnet(args: argparse.Namespace) -> None:
    from ..sammed.canonical import train_sapnet_canonical
    from ..sammed.sapnet import SAPNetConfig, save_sapnet

    predictor = make_predictor(args)
    volume, annotations = annotated_slices(args)
    config = SAPNetConfig(iterations=args.iterations, beta=args.beta).check()
    bar, update = loss_bar("training SAP-Net", config.iterations)
    with bar:
        trained, prepared, slices = train_sapnet_canonical(predictor, volume, args.axis, annotations, args.window,
                                                           config, update)
    name = args.name or f"label_{args.label}"
    artefact_id = save_sapnet(trained, name, prepared, trained.frame.axis, slices, predictor)
    print(f"{artefact_id}: SAP-Net for {name}, {len(annotations)} slice(s), {trained.seconds:.0f} s, "
          f"loss {trained.losses[0]:.3f} -> {trained.losses[-1]:.3f}")


def _train_auto(args: argparse.Namespace) -> None:
    from ..adapted.data import AnnotatedVolume, choose_slices, parse_classes
    from ..adapted.jobs import run_training_job
    from ..adapted.store import DEFAULT_LEARNING_RATES
    from ..adapted.training import AutoTrainingConfig
    from ..engine.geometry import load_labels
    from ..engine.volume import load_volume

    if len(args.images) != len(args.labels):
        raise InputError(f"{len(args.images)} image(s) but {len(args.labels)} labelmap(s)", "give one labelmap per image")
    if args.mode == "decoder_only" and args.rank is not None:
        raise InputError("--rank sets the LoRA/FacT rank; the decoder-only model has no adapters")
    classes = parse_classes(args.classes, args.label_names, [p.name for p in args.labels])
    volumes = []
    for image_path, labels_path in zip(args.images, args.labels):
        volume = load_volume(image_path)
        labels = load_labels(labels_path, volume, f"labels of {image_path.name}")
        count = volume.num_slices(args.axis)
        if args.slices is not None and not all(0 <= k < count for k in args.slices):
            raise InputError(f"--slices must lie in 0..{count - 1} for {image_path.name}")
        slices = args.slices if args.slices is not None else choose_slices(labels, classes, args.axis, args.fraction or 0.1)
        volumes.append(AnnotatedVolume(volume, labels, tuple(sorted(set(slices)))))
    learning_rate = args.lr if args.lr is not None else DEFAULT_LEARNING_RATES[args.mode]
    config = AutoTrainingConfig(iterations=args.iterations, minutes=args.minutes, learning_rate=learning_rate,
                                batch_size=args.batch_size, seed=args.seed, augment=args.augment)
    predictor = make_predictor(args)
    feature_bar, feature_update = progress_bar("features", "slice")
    bar, show_loss = loss_bar(f"training {args.mode}", args.iterations)

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
