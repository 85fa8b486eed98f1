"""SNOMED-CT codes for the organs SAMMed's data and models name, as DICOM SEG segment properties.

DICOM SEG describes each segment by a *category* (CID 7150; here always "Anatomical Structure") and a *type*
(CID 7166 and the anatomic-region groups it includes, e.g. CID 4031), plus an optional modifier for laterality
(CID 244: Right / Left). The code values come from pydicom's copy of the DICOM Part 16 SNOMED-CT table
(``pydicom.sr.codedict.codes.SCT``); this module only says which of them each organ name means. Names are
matched case-insensitively with ``_``/``-``/space folded; a "left"/"right" word (``kidney_left``, ``right
parotid``) becomes the laterality modifier and a series number (``rib_left_7``, ``vertebrae_L2``) is dropped,
unless the whole name is an organ ("right ventricle"). Organs not in the table get the generic
"Anatomical Structure" type with their own name as the segment label, so nothing is mislabelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

CATEGORY = codes.SCT.AnatomicalStructure  # 91723000

#: organ name (folded) → keyword in pydicom's SNOMED-CT table. The organs of ../shared/data (TotalSegmentator CT
#: and MR labels, OpenKBP head-and-neck OARs, ACDC cardiac MR, dcmqi liver/spine) that have a code there.
ORGAN_KEYWORDS = {
    "liver": "Liver",
    "spleen": "Spleen",
    "kidney": "Kidney",
    "gallbladder": "Gallbladder",
    "stomach": "Stomach",
    "pancreas": "Pancreas",
    "adrenal gland": "AdrenalGland",
    "lung": "Lung",
    "middle lobe of right lung": "MiddleLobeOfRightLung",
    "lung middle lobe": "MiddleLobeOfRightLung",
    "small bowel": "SmallIntestine",
    "small intestine": "SmallIntestine",
    "duodenum": "Duodenum",
    "colon": "Colon",
    "aorta": "Aorta",
    "inferior vena cava": "InferiorVenaCava",
    "portal vein": "PortalVein",
    "portal vein and splenic vein": "PortalVein",
    "spinal cord": "SpinalCord",
    "esophagus": "Esophagus",
    "oesophagus": "Esophagus",
    "trachea": "Trachea",
    "larynx": "Larynx",
    "mandible": "Mandible",
    "parotid": "ParotidGland",
    "parotid gland": "ParotidGland",
    "heart": "Heart",
    "right ventricle cavity": "RightVentricle",
    "right ventricle": "RightVentricle",
    "left ventricle cavity": "LeftVentricle",
    "left ventricle": "LeftVentricle",
    "left ventricle myocardium": "LeftVentricleMyocardium",
    "myocardium": "LeftVentricleMyocardium",
    "thoracic spine": "ThoracicSpine",
    "vertebrae": "Vertebra",
    "vertebra": "Vertebra",
    "rib": "Rib",
    "costal cartilages": "CostalCartilage",
    "costal cartilage": "CostalCartilage",
    "autochthon": "ErectorSpinaeMuscle",
}
_SIDES = {"left": codes.SCT.Left, "right": codes.SCT.Right}
_NUMBER = re.compile(r"^[a-z]?\d+$")  # "vertebrae l2", "rib left 7": the number names one of a series

@dataclass(frozen=True)
class OrganCode:
    """What a DICOM SEG segment says about an organ: category, type and (optional) laterality modifier."""

    category: Code
    type: Code
    laterality: Optional[Code] = None


def fold(name: str) -> str:
    """Lower case, ``_``/``-`` as spaces, single spaces: "Kidney_Left" → "kidney left"."""
    return " ".join(re.sub(r"[_\-]+", " ", name.lower()).split())


def organ_code(name: str) -> OrganCode:
    """The SNOMED-CT description of organ ``name`` (generic "Anatomical Structure" when unknown)."""
    folded = fold(name)
    if folded in ORGAN_KEYWORDS:  # whole names first: "right ventricle" is an organ, not a side
        return OrganCode(CATEGORY, getattr(codes.SCT, ORGAN_KEYWORDS[folded]))
    words = folded.split()
    sides = [w for w in words if w in _SIDES]
    organ = " ".join(w for w in words if w not in _SIDES and not _NUMBER.match(w))
    if organ in ORGAN_KEYWORDS:
        laterality = _SIDES[sides[0]] if len(set(sides)) == 1 else None
        return OrganCode(CATEGORY, getattr(codes.SCT, ORGAN_KEYWORDS[organ]), laterality)
    return OrganCode(CATEGORY, CATEGORY)
