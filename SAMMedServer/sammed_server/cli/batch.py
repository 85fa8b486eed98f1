"""`batch`: auto-segment a cohort (files, folders, CSV lists, DICOMweb series) on Ray into a resumable run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `batch` command."""
    batch = commands.add_parser(
        "batch", help="auto-segment many volumes with a stored model, on Ray (resumable; see docs/batch.md)",
        description="Segment every case with one stored model. Re-running the same command skips finished cases "
                    "and retries failed ones. Exit status 1 when a case failed.")
    batch.add_argument("inputs", nargs="*", type=Path,
                       help="volume files, folders (searched recursively; one case per DICOM series) or .csv lists")
    batch.add_argument("--auto", required=True, metavar="MODEL_ID",
                       help="stored automatic model (`train hsam|masam|decoder`) or SAP-Net (`train sapnet`)")
    batch.add_argument("--prompt-encoder", "--prompts", default=None, metavar="ID",
                       help="learned prompt encoder refining the SAP-Net's prompts (`train prompt-encoder`)")
    batch.add_argument("-o", "--output", type=Path, required=True, help="run folder (manifest, cases, reports)")
    web = batch.add_argument_group("DICOMweb (QIDO-RS / WADO-RS in, STOW-RS of the SEG back)")
    web.add_argument("--dicomweb", metavar="URL", help="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    web.add_argument("--study", action="append", default=[], metavar="UID", help="study instance UID (repeatable)")
    web.add_argument("--series", action="append", default=[], metavar="UID", help="only this series (repeatable)")
    web.add_argument("--query", action="append", default=[], metavar="KEY=VALUE",
                     help="QIDO series filter, e.g. Modality=CT (repeatable; used without --study too)")
    outputs = batch.add_argument_group("outputs")
    outputs.add_argument("--nifti", action="store_true", help="also write a NIfTI labelmap per case")
    outputs.add_argument("--no-dicom-seg", action="store_true", help="no DICOM SEG for DICOM inputs")
    ray = batch.add_argument_group("Ray")
    ray.add_argument("--address", default=None, help="existing Ray cluster (default: start Ray on this machine)")
    ray.add_argument("--workers", type=int, default=1, help="segmenting workers, each holding the model (default 1)")
    ray.add_argument("--num-cpus", type=int, default=None, help="CPUs a local Ray may use (default: all)")
    ray.add_argument("--cpus-per-worker", type=float, default=1.0)
    ray.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 with a CUDA --device, else 0")
    ray.add_argument("--object-store-mb", type=int, default=512, help="local Ray object store size (default 512)")
    batch.add_argument("--axis", type=int, default=2, choices=(0, 1, 2))
    batch.add_argument("--window", default=None, help="SAP-Net models: abdomen|lung|bone|brain|mr|LEVEL,WIDTH")
    batch.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    batch.set_defaults(run=_batch)


def _batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..batch.cases import discover_cases
    from ..batch.model import resolve_model
    from ..batch.runner import BatchOptions, import_ray, local_cpus, run_batch

    import_ray()  # before any work: without Ray, say how to get it
    if args.workers < 1:
        raise InputError("--workers must be at least 1")
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (
        1.0 if (args.device or "").startswith("cuda") else 0.0)
    options = BatchOptions(args.output, args.workers, args.address, args.num_cpus, args.object_store_mb,
                           args.cpus_per_worker, gpus, not args.no_dicom_seg, args.nifti)
    if not args.address:
        local_cpus(options)  # a --num-cpus too small for the workers is a usage error, before any work
    cases = _cases(args, discover_cases)
    spec = resolve_model(args.auto, args.prompt_encoder, args.device, args.axis, args.window)
    bar = tqdm(total=len(cases), desc="cases", unit="case", dynamic_ncols=True)
    counts = {"done": 0, "failed": 0}

    def skipped(count: int) -> None:
        bar.update(count)
        bar.set_postfix(already_done=count)

    def progress(case, record: dict) -> None:
        counts[record["status"]] += 1
        if record["status"] == "failed":
            tqdm.write(f"failed: {case.case_id}: {record['error']}", file=sys.stderr)
        bar.update(1)
        bar.set_postfix(done=counts["done"], failed=counts["failed"])

    with bar:
        report = run_batch(cases, spec, options, skipped, progress)
    rate = f", {report['cases_per_minute']} cases/min" if report["cases_per_minute"] else ""
    print(f"{report['done']} done, {report['failed']} failed of {report['cases']} case(s); "
          f"{report['ran_this_time']} run now in {report['wall_seconds']:.1f} s{rate} -> {args.output / 'report.json'}")
    return 1 if report["failed"] else 0


def _cases(args: argparse.Namespace, discover_cases):
    cases = discover_cases(args.inputs) if args.inputs else []
    if args.dicomweb:
        from ..batch.cases import unique_ids
        from ..batch.dicomweb import dicomweb_cases

        query = dict(_pair(text) for text in args.query)
        cases = unique_ids(cases + dicomweb_cases(args.dicomweb, args.study, args.series, query))
    elif args.study or args.series or args.query:
        raise InputError("--study, --series and --query need --dicomweb URL")
    if not cases:
        raise InputError("nothing to segment", "give volume files, folders, a CSV, or --dicomweb URL --study UID")
    return cases


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InputError(f"--query takes KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()
