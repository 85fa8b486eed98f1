"""A cohort run on Ray: the cases still to do stream through Ray Data — read tasks, a pool of segmenting actors
(each loads the model once), write tasks — so reading and writing overlap inference; the driver records each
finished case in the manifest as it arrives and writes the reports at the end.

Ray starts in-process on this machine unless an ``address`` names an existing cluster (then the cluster's nodes
need ``sammed-server`` installed and the weights and stored models at the same paths; ``SAMMED_*`` settings are
passed on to the workers).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..errors import InputError
from .cases import Case
from .manifest import RunManifest
from .model import ModelSpec
from .report import write_reports
from .stages import ReadStep, Row, WriteStep, new_row, record_fields, segment_step

ProgressFn = Callable[[Case, dict[str, Any]], None]


@dataclass
class BatchOptions:
    """How to run: ``workers`` segmenting actors (each ``cpus_per_worker`` CPUs, ``gpus_per_worker`` GPUs); a
    local Ray gets ``num_cpus`` (default: all) and an object store of ``object_store_mb``."""

    run_folder: Path
    workers: int = 1
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    object_store_mb: int = 512
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    dicom_seg: bool = True
    nifti: bool = False


def import_ray():
    """Ray (with Ray Data), or one clear error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError("`sammed-server batch` runs on Ray, which is not installed",
                         'install it with: pip install "sammed-server[cluster]"') from None
    return ray


def run_batch(cases: list[Case], spec: ModelSpec, options: BatchOptions,
              skipped: Optional[Callable[[int], None]] = None, progress: Optional[ProgressFn] = None) -> dict[str, Any]:
    """Segment the ``cases`` not yet finished in ``options.run_folder`` and write the reports; returns the report.
    ``skipped(n)`` is told how many were already done, ``progress(case, record)`` each case as it finishes."""
    folder = Path(options.run_folder)
    manifest = RunManifest(folder, spec.fingerprint())
    remove_partial_files(folder)
    todo = manifest.plan(cases)
    if skipped:
        skipped(len(cases) - len(todo))
    by_id = {case.case_id: case for case in todo}
    started = time.perf_counter()
    if todo:
        for row in _stream(todo, spec, options):
            case = Case.from_json(row["case"])
            record = manifest.finish(case.case_id, record_fields(row))
            if progress:
                progress(by_id[case.case_id], vars(record))
    wall = time.perf_counter() - started
    return write_reports(folder, manifest.selected(cases), wall, len(todo), manifest.model, options.workers)


def remove_partial_files(folder: Path) -> None:
    """Temporary files and fetched DICOMweb series left by a run that was killed."""
    for partial in folder.glob("cases/*/.tmp-*"):
        partial.unlink(missing_ok=True)
    shutil.rmtree(folder / ".dicomweb", ignore_errors=True)


def _stream(todo: list[Case], spec: ModelSpec, options: BatchOptions) -> Iterator[Row]:
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        _init(ray, options)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        run_folder = str(Path(options.run_folder).resolve())
        io_cpus = min(0.5, options.cpus_per_worker / 2)  # unlike the actors' CPUs: Ray Data then keeps the steps
        dataset = (                                      # apart (no fusion), so reads and writes overlap inference
            ray.data.from_items([new_row(case) for case in todo], override_num_blocks=len(todo))
            .map(ReadStep(run_folder), num_cpus=io_cpus)
            .map(segment_step(spec), compute=ray.data.ActorPoolStrategy(size=options.workers),
                 num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker or None)
            .map(WriteStep(run_folder, options.dicom_seg, options.nifti), num_cpus=io_cpus)
        )
        yield from dataset.iter_rows()
    finally:
        if started_here:
            ray.shutdown()


def _init(ray, options: BatchOptions) -> None:
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # Ray's C++ notices; failures still raise in Python
    common = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    if options.address:
        settings = {k: v for k, v in os.environ.items() if k.startswith("SAMMED_")}
        ray.init(address=options.address, runtime_env={"env_vars": settings}, **common)
    else:
        ray.init(num_cpus=local_cpus(options), object_store_memory=options.object_store_mb * 2**20,
                 include_dashboard=False, **common)


def local_cpus(options: BatchOptions) -> int:
    """CPUs for a local Ray: ``num_cpus`` (default: all cores), but at least the workers' share plus one for
    reading and writing — with less, Ray Data would wait forever for a CPU to read the next case on."""
    needed = math.ceil(options.workers * options.cpus_per_worker + 1)
    if options.num_cpus is None:
        return max(os.cpu_count() or 1, needed)
    if options.num_cpus < needed:
        raise InputError(f"--num-cpus {options.num_cpus} leaves no CPU to read and write cases on",
                         f"give at least {needed} for {options.workers} worker(s) of {options.cpus_per_worker} CPU")
    return options.num_cpus
