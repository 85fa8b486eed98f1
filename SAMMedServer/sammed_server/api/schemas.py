"""Request and response bodies of the ``/v1`` API (pydantic models; the OpenAPI schema is built from them)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, NonNegativeInt, conint

from ..engine.volume import MAX_EXTENT

Axis = Literal[0, 1, 2]
Vector3 = tuple[float, float, float]
Extent = conint(ge=1, le=MAX_EXTENT)  # one dimension of an uploaded volume
ArtefactId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="an artefact id (not a path)")]


def _check_window(window: Optional[str]) -> Optional[str]:
    """A ``LEVEL,WIDTH`` window must be two finite numbers with WIDTH > 0 (names are checked by the engine)."""
    if window is not None and "," in window:
        try:
            level, width = (float(part) for part in window.split(","))
        except ValueError:
            raise ValueError("a LEVEL,WIDTH window needs two numbers, e.g. 40,400") from None
        if not (math.isfinite(level) and math.isfinite(width) and width > 0):
            raise ValueError("a LEVEL,WIDTH window needs finite numbers and WIDTH > 0")
    return window


Window = Annotated[
    Optional[str],
    Field(max_length=64, description="intensity window: auto, abdomen, lung, bone, brain, mr or 'LEVEL,WIDTH'"),
    AfterValidator(_check_window),
]


class Strict(BaseModel):
    """Unknown fields are an error (a typo must not be silently ignored); so are NaN and infinite numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable identifier, e.g. invalid_input, unknown_volume")
    message: str
    hint: str = ""
    field: Optional[str] = Field(None, description="the request field at fault, for validation errors")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer has this body."""

    error: ErrorBody


class EncodedArray(Strict):
    """An array on the wire: ``bool`` = np.packbits (big-endian bits, C order) + zlib + base64;
    ``float16``/``float32`` = little-endian raw bytes + zlib + base64."""

    shape: list[NonNegativeInt] = Field(max_length=4)
    dtype: Literal["bool", "float16", "float32"]
    data: str


class Health(BaseModel):
    service: str
    version: str
    protocol: int
    device: str
    default_model: str
    models_loaded: list[str]
    auth: bool = Field(description="whether requests must carry a token")
    max_request_bytes: int
    max_upload_bytes: int = Field(description="largest (compressed) volume upload body")


class ModelInfo(BaseModel):
    id: str
    description: str
    input_size: int
    box_only: bool = Field(
        description="trained with boxes only: points are answered by the training-free click search (docs/clicks.md)"
    )
    default: bool
    loaded: bool
    checkpoint_present: bool


class VolumeUpload(Strict):
    """Geometry of an uploaded voxel array, sent as JSON in the ``X-SAMMed-Volume`` header."""

    shape: tuple[Extent, Extent, Extent] = Field(description="(K, J, I): slices, rows, columns of the C-order array")
    dtype: str = Field(description="numpy dtype name, little-endian: uint8, int16, float32, ...")
    spacing: Vector3 = Field(description="(I, J, K) in mm")
    origin: Vector3 = (0.0, 0.0, 0.0)
    direction: tuple[float, float, float, float, float, float, float, float, float] = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    compression: Literal["zlib", "none"] = "zlib"


class VolumeFromPath(Strict):
    path: str = Field(min_length=1, max_length=8192,
                      description="a NIfTI/NRRD/MHA file or DICOM folder under one of the worker's data roots")


class VolumeInfo(BaseModel):
    id: str = Field(description="content hash of voxels + spacing")
    shape_ijk: tuple[int, int, int]
    dtype: str
    spacing: Vector3
    origin: Vector3
    direction: tuple[float, ...]
    source: str = Field(description="'upload' or the path it was read from")
    created: bool = Field(description="False when the server already held this volume (nothing was recomputed)")


MAX_STROKE_POINTS = 1024  # vertices of a lasso, points of one scribble
MAX_SCRIBBLES = 32


class Scribble(Strict):
    """An open polyline in slice pixels; it becomes a few points evenly spaced along it (docs/api.md)."""

    points: list[tuple[float, float]] = Field(max_length=MAX_STROKE_POINTS, description="[[x, y], ...], at least one")
    label: Literal[0, 1] = Field(1, description="1 foreground, 0 background")


class PredictRequest(Strict):
    """Prompts on one slice, in slice pixel coordinates (x = column, y = row; see engine.volume)."""

    axis: Axis = 2
    index: int = Field(ge=0, description="slice index along axis")
    points: list[tuple[float, float]] = Field(default_factory=list, max_length=256)
    labels: list[Literal[0, 1]] = Field(default_factory=list, max_length=256, description="1 foreground, 0 background")
    box: Optional[tuple[float, float, float, float]] = Field(None, description="x0, y0, x1, y1")
    lasso: Optional[list[tuple[float, float]]] = Field(
        None, max_length=MAX_STROKE_POINTS,
        description="closed polygon [[x, y], ...], at least 3 vertices on the slice: its bounding box is the box "
                    "(not with box) and the masks are kept inside it",
    )
    scribbles: list[Scribble] = Field(default_factory=list, max_length=MAX_SCRIBBLES,
                                      description="open polylines, each adding points along it with its label")
    mask_input: Optional[EncodedArray] = Field(None, description="low-resolution logits (e.g. 256×256) of an earlier decode")
    use_previous_mask: bool = Field(
        False, description="use as mask input the low-res logits of this session's last predict on the same slice"
    )
    session: str = Field("default", max_length=128, description="names the stored low-res logits (one per viewer)")
    context_mask: Optional[EncodedArray] = Field(
        None, description="(rows, cols) bool: the segment on a neighbouring slice; guides clicks on box-trained models"
    )
    multimask: bool = False
    model: Optional[str] = Field(None, max_length=64, description="model id; default: the server's")
    window: Window = None
    prompt_encoder: Optional[ArtefactId] = Field(
        None, description="id of a learned (SAM-assist) prompt encoder to use instead of the model's own"
    )


class PredictResponse(BaseModel):
    volume_id: str
    axis: int
    index: int
    model: str
    masks: EncodedArray = Field(description="(M, rows, cols) bool: M = 1, or 3 with multimask")
    scores: list[float] = Field(description="predicted IoU of each mask")
    best: int = Field(description="index of the highest-scoring mask")
    box: Optional[tuple[float, float, float, float]] = Field(
        None, description="x0, y0, x1, y1: the box the clicks were resolved to (box-trained models), else null"
    )
    lasso_dice: Optional[list[float]] = Field(
        None, description="with a lasso: each mask's Dice with the lasso's rasterised polygon, else null"
    )
    cached: bool = Field(description="whether the slice embedding was cached before this request")
    timing_ms: dict[str, float]


class EmbedRequest(Strict):
    axis: Axis = 2
    slices: Optional[list[int]] = Field(None, max_length=MAX_EXTENT, description="which slices (default: all, outwards from focus or the middle)")
    focus: Optional[int] = Field(None, ge=0, description="slice to embed first (the one on screen)")
    model: Optional[str] = Field(None, max_length=64)
    window: Window = None


class AnnotatedSlices(Strict):
    """Masks the user drew on some slices along one axis: ``masks`` is ``(n, rows, cols)`` bool, one per index."""

    axis: Axis = 2
    indices: list[NonNegativeInt] = Field(min_length=1, max_length=4096)
    masks: EncodedArray


class TrainRequest(Strict):
    """Learn a target from annotated slices: a SAM-assist prompt encoder or a SAP-Net (SAM-auto)."""

    kind: Literal["prompt_encoder", "sapnet"]
    annotations: AnnotatedSlices
    name: str = Field("target", min_length=1, max_length=80, description="target name stored with the artefact")
    prompt_type: Literal["point", "box", "composite"] = Field("point", description="prompt encoder only")
    iterations: Optional[int] = Field(None, ge=1, le=5000, description="default: the method's")
    model: Optional[str] = Field(None, max_length=64)
    window: Window = None


class PropagateRequest(Strict):
    """Carry an accepted mask from slice ``index`` to its neighbours, slice by slice."""

    axis: Axis = 2
    index: NonNegativeInt
    mask: EncodedArray = Field(description="(rows, cols) bool: the accepted mask on slice index")
    direction: Literal["up", "down", "both"] = Field("both", description="up = increasing slice index")
    prompt_encoder: Optional[ArtefactId] = None
    max_slices: Optional[int] = Field(None, ge=1)
    model: Optional[str] = Field(None, max_length=64)
    window: Window = None


class AutoSegmentRequest(Strict):
    """Segment a whole volume without prompts from a trained SAP-Net (+ optional learned prompt encoder) or an
    H-SAM / MA-SAM model."""

    artefact: ArtefactId = Field(description="id of a SAP-Net or an automatic (H-SAM / MA-SAM) model")
    prompt_encoder: Optional[ArtefactId] = Field(None, description="SAP-Net only: learned prompt encoder for its prompts")
    annotations: Optional[AnnotatedSlices] = Field(None, description="SAP-Net only: slices kept as the user drew them")
    axis: Axis = 2
    model: Optional[str] = Field(None, max_length=64)
    window: Window = None


class ArtefactInfo(BaseModel):
    id: str
    kind: str = Field(description="prompt_encoders, sapnets or auto_models")
    name: str
    base_model: str
    created: str
    manifest: dict[str, Any] = Field(description="the stored manifest (training record, preprocessing, labels)")


class FocusRequest(Strict):
    index: int = Field(ge=0)


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobStatus(BaseModel):
    id: str
    kind: str
    state: JobState
    progress: float = Field(ge=0, le=1)
    message: str = ""
    log: list[str] = Field(description="the last lines of the job's log")
    result: Optional[dict[str, Any]] = None
    error: Optional[ErrorBody] = None
    metrics: dict[str, list[float]] = Field(default_factory=dict, description="curves while running, e.g. loss")
    created: float
    started: Optional[float] = None
    finished: Optional[float] = None
