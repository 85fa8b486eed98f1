"""Finding the demo volume: a given path, the data directory setting, else a verified download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .engine.checkpoints import download, sha256_file
from .errors import DownloadError, InputError
from .settings import data_dir, home_dir

TOTALSEG_URL = "https://github.com/wasserth/TotalSegmentator/raw/master/tests/reference_files/"
# TotalSegmentator test reference files (Apache-2.0): file name → sha256.
SAMPLE_FILES = {
    "example_ct_sm.nii.gz": "e50c00b2914e2cac0aaee8e7f3b5f57d44d9f21bfd5c0577271c54c0cb49e9fb",
    "example_seg.nii.gz": "8be652475a4aaae83103a66bfb3345314b1fc06742807a06cf5005f7a7913a2d",
}
# Label values of example_seg.nii.gz (TotalSegmentator "total" task).
SAMPLE_ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6, "gallbladder": 4}


@dataclass(frozen=True)
class Sample:
    volume: Path
    reference: Optional[Path]
    origin: str


def find_sample(volume: Optional[Path] = None, reference: Optional[Path] = None) -> Sample:
    """The user's volume if given; else the sample CT in the data directory; else download it (checksummed)."""
    if volume is not None:
        if not Path(volume).exists():
            raise InputError(f"no such volume: {volume}")
        return Sample(Path(volume), reference, "given")
    local = data_dir() / "totalsegmentator"
    if (local / "example_ct_sm.nii.gz").exists():
        return Sample(local / "example_ct_sm.nii.gz", reference or local / "example_seg.nii.gz", f"data directory {data_dir()}")
    target = home_dir() / "sample"
    for name, sha256 in SAMPLE_FILES.items():
        path = target / name
        if not (path.exists() and sha256_file(path) == sha256):
            try:
                download(TOTALSEG_URL + name, path, sha256)
            except DownloadError as exc:
                raise DownloadError(
                    f"no sample volume: {local} is missing and the download failed ({exc.message})",
                    "pass a volume path, or set SAMMED_DATA_DIR to a folder holding totalsegmentator/example_ct_sm.nii.gz",
                ) from None
    return Sample(target / "example_ct_sm.nii.gz", reference or target / "example_seg.nii.gz", f"downloaded to {target}")
