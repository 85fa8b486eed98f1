"""`evaluate`: SAM^Med prompt protocols per organ."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from .common import ints, make_predictor, model_options, names, organ_table


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `evaluate` command(s)."""
    evaluate = commands.add_parser("evaluate", help="SAM^Med prompt protocols per organ: Markdown table + CSV")
    evaluate.add_argument("volume", type=Path)
    evaluate.add_argument("labels", type=Path, help="reference labelmap on the volume's grid")
    evaluate.add_argument("--organs", type=names, default=None, help="e.g. liver,spleen (default: every named label)")
    evaluate.add_argument("--label-names", type=Path, default=None,
                          help="labels.json: {value: name} or {labelmap file name: {value: name}} (default: beside LABELS)")
    evaluate.add_argument("--train-slices", type=ints, default=[2, 5], help="slice counts for learned encoders")
    evaluate.add_argument("--out", type=Path, default=None, help="CSV path (default: out/eval/VOLUME.csv)")
    evaluate.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--max-slices", type=int, default=None, help="evaluate at most N evenly spaced slices per organ")
    evaluate.add_argument("--iterations", type=int, default=40, help="prompt encoder training iterations")
    evaluate.add_argument("--no-sapnet", action="store_true", help="skip the SAP-Net / SAM-auto rows")
    evaluate.add_argument("--quick", action="store_true",
                          help="for tests: 1-point prompts, ≤ 3 slices, 1 click, learned point encoder only, no SAP-Net")
    evaluate.add_argument("--clicks", type=int, default=None, metavar="N",
                          help="run the click protocol instead (clicks alone, box, box + clicks; N clicks) on "
                               "each organ's --click-slices largest slices")
    evaluate.add_argument("--click-slices", type=int, default=3, help="largest slices per organ for --clicks")
    model_options(evaluate)
    evaluate.set_defaults(run=_evaluate)


def _evaluate_clicks(args: argparse.Namespace) -> None:
    import csv
    import time

    from ..engine.volume import load_volume
    from ..evaluation.clicks import evaluate_clicks, markdown_summary, summary_rows

    volume = load_volume(args.volume)
    labels = load_volume(args.labels).array
    organs = organ_table(args, labels)
    predictor = make_predictor(args)
    prepared = predictor.prepare(volume, args.window)
    started = time.perf_counter()
    with tqdm(desc="clicks", unit="slice", dynamic_ncols=True) as bar:
        def update(done: int, total: int, what: str) -> None:
            bar.total, bar.n = total, done
            bar.set_postfix_str(what)

        results = evaluate_clicks(predictor, prepared, args.axis, labels, organs, args.clicks, args.click_slices, update)
    out = args.out or Path("out/eval") / f"{args.volume.name.split('.')[0]}_clicks.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["organ", "slice", "box", "clicks", "box_clicks", "seconds_per_click"])
        for r in results:
            writer.writerow([r.organ, r.index, round(r.box, 4), " ".join(f"{d:.4f}" for d in r.clicks),
                             " ".join(f"{d:.4f}" for d in r.box_clicks), round(r.seconds_per_click, 3)])
    print(f"\n{markdown_summary(summary_rows(results))}\n\n{len(results)} slices -> {out} "
          f"({time.perf_counter() - started:.0f} s)")


def _evaluate(args: argparse.Namespace) -> None:
    import time
    from dataclasses import replace

    from ..engine.geometry import load_labels
    from ..engine.volume import load_volume
    from ..evaluation.protocols import EvaluationConfig, evaluate
    from ..evaluation.report import markdown_table, write_csv
    from ..sammed.learned_prompts import PromptTrainingConfig

    if args.clicks is not None:
        return _evaluate_clicks(args)
    volume = load_volume(args.volume)
    labels = load_labels(args.labels, volume, "reference labelmap")
    organs = organ_table(args, labels)
    config = EvaluationConfig(train_slices=tuple(args.train_slices), sapnet=not args.no_sapnet, seed=args.seed,
                              max_eval_slices=args.max_slices, training=PromptTrainingConfig(iterations=args.iterations))
    if args.quick:  # the settings test_learned_prompts shows to learn a point target from 2 slices
        config = replace(config, point_counts=(1,), clicks=1, max_eval_slices=3, learned_types=("point",), sapnet=False,
                         training=replace(config.training, prompts_per_slice=2, learning_rate=3e-3))
    predictor = make_predictor(args)
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
