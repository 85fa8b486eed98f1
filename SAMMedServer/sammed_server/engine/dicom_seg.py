"""DICOM Segmentation objects (SEG): written from segments on a DICOM series, read back onto a volume's grid.

Both directions go through highdicom. Writing needs the source series (one pydicom dataset per slice, in the
volume's K order): the SEG references it instance by instance, shares its frame of reference and patient/study,
and is a BINARY segmentation with one segment per organ, coded in SNOMED-CT (``organ_codes``) and coloured as in
the ``.seg.nrrd``. Reading maps the SEG's frames onto a reference volume by geometry (highdicom's
``match_geometry``: axis permutations, flips, crops and pads, never resampling), so a SEG covering part of a
series, or stored in another slice order, lands on the right voxels.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pydicom

from .. import __version__
from ..errors import InputError, VolumeReadError
from .organ_codes import organ_code
from .segmentation_file import Segment, default_color
from .volume import Volume

MANUFACTURER = "SAMMed"


def read_series(files: Sequence[str | Path]) -> list[pydicom.Dataset]:
    """The datasets of a series' files, in the given order, without pixel data (enough for referencing); an empty
    Specific Character Set (allowed, meaning the default repertoire, but refused by highdicom) is dropped."""
    datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    for dataset in datasets:
        if "SpecificCharacterSet" in dataset and not dataset.SpecificCharacterSet:
            del dataset.SpecificCharacterSet
    return datasets


def build_dicom_seg(
    volume: Volume,
    segments: Sequence[Segment],
    source: Sequence[pydicom.Dataset],
    algorithm: str = "SAMMed",
    series_description: str = "SAMMed segmentation",
    series_number: int = 300,
):
    """A highdicom ``Segmentation`` of ``segments`` (on ``volume``'s grid) referencing ``source``, the series
    ``volume`` was read from, one dataset per K slice in order."""
    import highdicom as hd

    if not segments:
        raise InputError("a DICOM SEG needs at least one segment")
    k, rows, cols = volume.array.shape
    if len(source) != k or any((int(ds.Rows), int(ds.Columns)) != (rows, cols) for ds in source):
        raise InputError(f"the DICOM series ({len(source)} instance(s)) does not match the volume's {k} slice(s) "
                         f"of {rows}×{cols}")
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm, family=pydicom.sr.codedict.codes.cid7162.ArtificialIntelligence, version=__version__)
    descriptions = [_description(number, segment, algorithm_id) for number, segment in enumerate(segments, start=1)]
    pixels = np.stack([np.asarray(s.mask, dtype=np.uint8) for s in segments], axis=-1)  # (K, rows, cols, S)
    with warnings.catch_warnings():  # highdicom warns about the source's single-component patient names
        warnings.simplefilter("ignore", UserWarning)
        seg = _segmentation(hd, source, pixels, descriptions, algorithm, series_description, series_number)
    seg.SeriesDescription = series_description[:64]
    return seg


def _segmentation(hd, source, pixels, descriptions, algorithm, series_description, series_number):
    return hd.seg.Segmentation(
        source_images=list(source),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm[:64],
        software_versions=__version__,
        device_serial_number="0",
        content_label="SAMMED",
        content_description=series_description[:64],
        omit_empty_frames=False,  # every source slice keeps a frame: readers need no gap handling
    )


def write_dicom_seg(volume: Volume, segments: Sequence[Segment], source: Sequence[pydicom.Dataset],
                    path: str | Path, **options) -> Path:
    """Build the SEG (see :func:`build_dicom_seg`) and save it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_dicom_seg(volume, segments, source, **options).save_as(str(path))
    return path


def read_dicom_seg(seg: str | Path | pydicom.Dataset, reference: Optional[Volume] = None) -> tuple[Volume, list[Segment]]:
    """The segments of a SEG file (or dataset) as ``(K, J, I)`` masks on ``reference``'s grid (the volume of the
    series it segments), or on the SEG's own grid when no reference is given; returns that grid and the segments."""
    import highdicom as hd
    import SimpleITK as sitk

    from .volume import volume_from_array

    try:
        dataset = seg if isinstance(seg, pydicom.Dataset) else pydicom.dcmread(str(seg))
        segmentation = hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except Exception as exc:  # pydicom/highdicom raise many kinds for a file that is not a SEG
        raise VolumeReadError(f"cannot read {getattr(seg, 'name', 'the dataset')} as a DICOM SEG: {exc}") from None
    numbers = [int(item.SegmentNumber) for item in segmentation.SegmentSequence]
    seg_volume = segmentation.get_volume(segment_numbers=numbers, combine_segments=False, dtype=np.uint8)
    if reference is not None:
        target = hd.Volume.from_simpleitk(reference.to_sitk(np.zeros(reference.array.shape, np.uint8)))
        try:
            seg_volume = seg_volume.match_geometry(target)
        except RuntimeError as exc:
            raise InputError(f"the SEG does not lie on the reference volume's grid: {exc}") from None
    else:  # highdicom's (slices, rows, columns) → SimpleITK's I = columns, J = rows, K = slices
        seg_volume = seg_volume.permute_spatial_axes([2, 1, 0])
    channels = [seg_volume.get_channel(ReferencedSegmentNumber=n).squeeze_channel().to_simpleitk() for n in numbers]
    grid = reference if reference is not None else volume_from_array(
        sitk.GetArrayFromImage(channels[0]), channels[0].GetSpacing(), channels[0].GetOrigin(),
        channels[0].GetDirection())
    segments = [Segment(str(item.SegmentLabel), sitk.GetArrayFromImage(image) > 0, _segment_color(item, index))
                for index, (item, image) in enumerate(zip(segmentation.SegmentSequence, channels))]
    return grid, segments


def _description(number: int, segment: Segment, algorithm_id):
    import highdicom as hd

    code = organ_code(segment.name)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.name[:64],
        segmented_property_category=code.category,
        segmented_property_type=code.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_id,
        display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in segment.color)),
    )
    if code.laterality is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(code.laterality.value, code.laterality.scheme_designator, code.laterality.meaning)]
    return description


def _segment_color(item: pydicom.Dataset, index: int) -> tuple[float, float, float]:
    import highdicom as hd

    if "RecommendedDisplayCIELabValue" not in item:
        return default_color(index)
    rgb = hd.color.CIELabColor.from_dicom_value(list(item.RecommendedDisplayCIELabValue)).to_rgb()
    return tuple(round(c / 255, 4) for c in rgb)
