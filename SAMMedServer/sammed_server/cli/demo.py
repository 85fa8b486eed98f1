"""`demo` and `bench`: the sample run and the speed tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .common import AUTO_MODES, make_predictor, model_options, names, progress_bar


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `demo` and `bench` command(s)."""
    demo = commands.add_parser("demo", help="embed a CT, segment organs from boxes, write .seg.nrrd + PNG, print Dice")
    demo.add_argument("volume", type=Path, nargs="?", help="default: the sample CT (data directory or download)")
    demo.add_argument("--reference", type=Path, help="labelmap to simulate boxes from and score against")
    demo.add_argument("-o", "--output-dir", type=Path, default=Path("out/demo"))
    model_options(demo)
    demo.set_defaults(run=_demo)

    bench = commands.add_parser("bench", help="print encoder/decoder speed, cache and memory numbers")
    bench.add_argument("volume", type=Path, nargs="?", help="default: the sample CT")
    bench.add_argument("--slices", type=int, default=5)
    bench.add_argument("--decodes", type=int, default=100)
    bench.add_argument("--http", action="store_true", help="also measure predict round trips over loopback HTTP")
    bench.add_argument("--reference", type=Path, default=None,
                       help="labelmap for the prompt-encoder training row (default: the sample's)")
    bench.add_argument("--auto", type=names, default=None,
                       help="also time automatic models, e.g. hsam,masam,decoder (needs the labelmap)")
    bench.add_argument("--auto-steps", type=int, default=3, help="timed training steps per automatic model")
    bench.add_argument("--batch", action="store_true",
                       help="also time `batch` on Ray: cases/minute for 1 and 2 workers, read/infer/write split")
    bench.add_argument("--runtimes", type=names, default=None,
                       help="only the runtime table: e.g. onnxruntime,openvino against torch, interleaved in one run")
    model_options(bench)
    bench.set_defaults(run=_bench)


def _demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo
    from ..sample_data import find_sample

    sample = find_sample(args.volume, args.reference)
    print(f"volume: {sample.volume} ({sample.origin})")
    predictor = make_predictor(args)
    bar, update = progress_bar("embedding", "slice")
    with bar:
        results, seg_path, png_path = run_demo(predictor, sample.volume, sample.reference, args.output_dir, progress=update)
    print(f"\n{'organ':<16}{'slices':>7}{'volume Dice':>13}{'largest-slice Dice':>20}")
    for r in results:
        print(f"{r.name:<16}{r.slices:>7}{r.volume_dice:>13.3f}{r.largest_slice_dice:>20.3f}")
    print(f"\nsegmentation: {seg_path}\noverlay:      {png_path}")


def _bench(args: argparse.Namespace) -> None:
    from ..bench import print_table, run_bench
    from ..sample_data import find_sample

    sample = find_sample(args.volume, args.reference)
    volume = sample.volume
    if args.runtimes:
        from ..runtime_bench import compare_runtimes, print_runtime_table

        header, table = compare_runtimes(volume, sample.reference, args.runtimes, args.model, args.slices,
                                         args.decodes, args.http)
        print_runtime_table(header, table, f"sammed-server bench --runtimes ({args.model}, CPU): {volume.name}")
        return
    rows = run_bench(volume, args.model, args.checkpoint, args.device, args.slices, args.decodes)
    if sample.reference is not None:
        from ..bench import prompt_training_bench

        rows += prompt_training_bench(volume, sample.reference, args.model, args.checkpoint, args.device)
    print_table(rows, f"sammed-server bench: {volume.name}")
    if args.auto:
        from ..bench import auto_model_bench

        if sample.reference is None:
            raise InputError("--auto needs a labelmap to train on", "pass --reference LABELS")
        modes = [AUTO_MODES.get(command, command) for command in args.auto]
        print_table(auto_model_bench(volume, sample.reference, modes, args.auto_steps, args.model, args.checkpoint,
                                     args.device), f"automatic models (LiteMedSAM backbone unless --model): {volume.name}")
    if args.batch:
        from ..batch.bench import batch_bench

        if sample.reference is None:
            raise InputError("--batch trains its model on a labelmap", "pass --reference LABELS")
        print_table(batch_bench(volume, sample.reference, device=args.device), f"cohort runs on Ray: {volume.name}")
    if args.http:
        from ..api.bench_http import http_roundtrip_bench

        print_table(http_roundtrip_bench(volume, n=args.decodes, model=args.model, device=args.device), "HTTP round trip (loopback)")
