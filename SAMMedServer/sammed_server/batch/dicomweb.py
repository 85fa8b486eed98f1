"""DICOMweb (QIDO-RS / WADO-RS / STOW-RS) for cohort runs, through the ``dicomweb-client`` package: which image
series a study or a query names, fetching a series into a folder, storing a SEG back."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..errors import InputError, SAMMedError
from .cases import Case, case_slug

#: Series that are results, not images to segment.
NON_IMAGE_MODALITIES = ("SEG", "RTSTRUCT", "SR", "PR", "KO")


class DICOMwebError(SAMMedError):
    code = "dicomweb_error"


def client(url: str):
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError:  # pragma: no cover - a dependency of the cluster extra
        raise InputError("--dicomweb needs the dicomweb-client package",
                         'pip install "sammed-server[cluster]"') from None
    return DICOMwebClient(url.rstrip("/"), timeout=120)


def dicomweb_cases(url: str, studies: Sequence[str] = (), series: Sequence[str] = (),
                   query: Optional[dict[str, str]] = None) -> list[Case]:
    """One case per image series: of each study in ``studies`` (all its image series, or only those in ``series``),
    or matching a QIDO ``query`` (e.g. ``{"Modality": "CT"}``) when no study is given."""
    web = client(url)
    found: list[dict] = []
    try:
        if studies:
            for study in studies:
                found += web.search_for_series(study, search_filters=query or None, get_remaining=True)
        else:
            found += web.search_for_series(search_filters=query or None, get_remaining=True)
    except Exception as exc:  # requests/HTTP errors: one line
        raise DICOMwebError(f"QIDO search on {url} failed: {_first_line(exc)}") from None
    cases = []
    for item in found:
        study_uid, series_uid = _value(item, "0020000D"), _value(item, "0020000E")
        if series and series_uid not in series or _value(item, "00080060") in NON_IMAGE_MODALITIES:
            continue
        count = int(_value(item, "00201209") or 0)
        cases.append(Case(case_slug(f"{study_uid[-12:]}_{series_uid[-12:]}"), "dicomweb", url,
                          study_uid=study_uid, series_uid=series_uid, instances=count))
    missing = set(series) - {c.series_uid for c in cases}
    if missing:
        raise InputError(f"series not found on {url}: {', '.join(sorted(missing))}")
    return cases


def fetch_series(case: Case, folder: Path) -> list[str]:
    """WADO-RS: the case's series saved as one file per instance in ``folder``; returns the file paths in slice
    order (as GDCM sorts a series)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    try:
        datasets = client(case.source).retrieve_series(case.study_uid, case.series_uid)
    except Exception as exc:
        raise DICOMwebError(f"WADO-RS retrieval of series {case.series_uid} failed: {_first_line(exc)}") from None
    files = []
    for dataset in datasets:
        path = folder / f"{dataset.SOPInstanceUID}.dcm"
        dataset.save_as(str(path), enforce_file_format=True)
        files.append(str(path))
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), case.series_uid)) or files


def store(url: str, dataset) -> str:
    """STOW-RS one dataset; returns its WADO-RS series URL (what the manifest records)."""
    try:
        client(url).store_instances([dataset])
    except Exception as exc:
        raise DICOMwebError(f"STOW-RS to {url} failed: {_first_line(exc)}") from None
    return f"{url.rstrip('/')}/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value", [])
    return str(values[0]) if values else ""


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
