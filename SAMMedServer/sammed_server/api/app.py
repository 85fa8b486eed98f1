"""The FastAPI application: routes under ``/v1``, the guards of :mod:`.guards` and one error model."""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Iterable, Optional

from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..artefacts import UnknownArtefactError
from ..errors import CancelledError, CheckpointError, DownloadError, InputError, SAMMedError, UnknownModelError
from .jobs import UnknownJobError
from . import workflows
from .guards import BodyLimit, ContentTypeCheck, HostCheck, TokenCheck, error_response
from .protocol import API_PREFIX, VOLUME_HEADER
from .schemas import (
    ArtefactInfo, AutoSegmentRequest, EmbedRequest, ErrorResponse, FocusRequest, Health, JobStatus,
    ModelInfo, PredictRequest, PredictResponse, PropagateRequest, TrainRequest, VolumeFromPath, VolumeInfo,
    VolumeUpload,
)
from .service import Service
from .state import TooLargeError, UnknownVolumeError

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 2**20  # any JSON request
MAX_UPLOAD_BYTES = 2 * 2**30  # a compressed volume upload

STATUS_OF_ERROR: dict[type, int] = {
    TooLargeError: 413,
    InputError: 400,
    UnknownModelError: 404,
    UnknownVolumeError: 404,
    UnknownJobError: 404,
    UnknownArtefactError: 404,
    CancelledError: 409,
    CheckpointError: 503,
    DownloadError: 503,
}
CODE_OF_STATUS = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
    413: "payload_too_large", 415: "unsupported_media_type",
}
ERROR_RESPONSES: dict[str, dict[str, Any]] = {"4XX": {"model": ErrorResponse}, "5XX": {"model": ErrorResponse}}


def create_app(
    service: Service,
    token: Optional[str] = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    allowed_hosts: Iterable[str] = (),
    any_ip: bool = False,
) -> FastAPI:
    """The worker's ASGI app around ``service``; with ``token`` every request needs ``Authorization: Bearer <token>``.

    ``Host`` must be a loopback name or address, one of ``allowed_hosts`` (``*``: any), or with ``any_ip`` any IP
    literal (see :mod:`.guards`)."""
    app = FastAPI(
        title="SAMMed worker", version=__version__, responses=ERROR_RESPONSES,
        description="Segment Anything for CT/MR annotation: volumes in once, prompts in, bit-packed masks out.",
    )
    health = functools.partial(service.health, token is not None, max_request_bytes, max_upload_bytes)
    app.include_router(_routes(service, health), prefix=API_PREFIX)
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, default_limit=max_request_bytes, upload_limit=max_upload_bytes)
    app.add_middleware(ContentTypeCheck)
    if token is not None:
        app.add_middleware(TokenCheck, token=token)
    app.add_middleware(HostCheck, allowed_hosts=allowed_hosts, any_ip=any_ip)  # added last = runs first
    return app


def _routes(service: Service, health_fn: Callable[[], Health]) -> APIRouter:
    router = APIRouter()

    @router.get("/health", response_model=Health)
    def health() -> Health:
        """Service name, version, protocol version, device, loaded models and limits."""
        return health_fn()

    @router.get("/models", response_model=list[ModelInfo])
    def models() -> list[ModelInfo]:
        return service.models()

    @router.post(
        "/volumes", response_model=VolumeInfo,
        openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def upload_volume(request: Request, geometry: str = Header(alias=VOLUME_HEADER)) -> VolumeInfo:
        """Upload voxels as an octet-stream body (C-order ``(K, J, I)``, zlib by default), geometry as JSON in the header."""
        try:
            meta = VolumeUpload.model_validate_json(geometry)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("header", VOLUME_HEADER, *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None
        return await service.upload(request.stream(), meta)

    @router.post("/volumes/from-path", response_model=VolumeInfo)
    async def volume_from_path(request: VolumeFromPath) -> VolumeInfo:
        """Read a volume from the worker's disk: a file or DICOM folder under one of its data roots."""
        return await service.from_path(request.path)

    @router.get("/volumes", response_model=list[VolumeInfo])
    def volumes() -> list[VolumeInfo]:
        return service.list_volumes()

    @router.get("/volumes/{volume_id}", response_model=VolumeInfo)
    def volume(volume_id: str) -> VolumeInfo:
        return service.volume_info(volume_id)

    @router.delete("/volumes/{volume_id}", status_code=204)
    def delete_volume(volume_id: str) -> None:
        service.delete_volume(volume_id)

    @router.post("/volumes/{volume_id}/predict", response_model=PredictResponse)
    def predict(volume_id: str, request: PredictRequest) -> PredictResponse:
        return service.predict(volume_id, request)

    @router.post("/volumes/{volume_id}/embed", response_model=JobStatus, status_code=202)
    def embed(volume_id: str, request: EmbedRequest) -> JobStatus:
        """Start embedding a volume along an axis (a running identical job is returned instead of a new one)."""
        return service.embed(volume_id, request).status()

    @router.post("/volumes/{volume_id}/train", response_model=JobStatus, status_code=202)
    def train(volume_id: str, request: TrainRequest) -> JobStatus:
        """Learn a target from annotated slices (SAM-assist prompt encoder or SAP-Net); the job's ``loss`` metric
        is the training curve and its result names the stored artefact."""
        return workflows.train(service, volume_id, request).status()

    @router.post("/volumes/{volume_id}/propagate", response_model=JobStatus, status_code=202)
    def propagate(volume_id: str, request: PropagateRequest) -> JobStatus:
        """Carry an accepted slice mask to the next slices (up, down or both) until a stop criterion holds."""
        return workflows.propagate(service, volume_id, request).status()

    @router.post("/volumes/{volume_id}/auto-segment", response_model=JobStatus, status_code=202)
    def auto_segment(volume_id: str, request: AutoSegmentRequest) -> JobStatus:
        """Segment the whole volume with a SAP-Net (+ learned prompts) or an H-SAM / MA-SAM model."""
        return workflows.auto_segment(service, volume_id, request).status()

    @router.get("/artefacts", response_model=list[ArtefactInfo])
    def artefacts(kind: Optional[str] = None) -> list[ArtefactInfo]:
        """Stored prompt encoders, SAP-Nets and automatic models (newest first), with their manifests."""
        return workflows.artefacts(kind)

    @router.get("/jobs", response_model=list[JobStatus])
    def jobs() -> list[JobStatus]:
        return [job.status() for job in service.jobs.list()]

    @router.get("/jobs/{job_id}", response_model=JobStatus)
    def job(job_id: str) -> JobStatus:
        return service.jobs.get(job_id).status()

    @router.post("/jobs/{job_id}/cancel", response_model=JobStatus)
    def cancel_job(job_id: str) -> JobStatus:
        return service.jobs.cancel(job_id).status()

    @router.post("/jobs/{job_id}/focus", response_model=JobStatus)
    def focus_job(job_id: str, request: FocusRequest) -> JobStatus:
        """Make slice ``index`` the next one the job works on (the slice the user is looking at)."""
        return service.jobs.focus(job_id, request.index).status()

    return router


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SAMMedError)
    async def sammed_error(_: Request, exc: SAMMedError) -> JSONResponse:
        status = next((STATUS_OF_ERROR[t] for t in type(exc).__mro__ if t in STATUS_OF_ERROR), 500)
        return error_response(status, exc.code, exc.message, exc.hint)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"][1:]) or str(first["loc"][0])
        if first["type"] == "json_invalid":
            where = "the request body" if first["loc"][0] == "body" else field
            detail = first.get("ctx", {}).get("error", "")
            return error_response(400, "invalid_json", f"{where} is not valid JSON ({detail})", "send a JSON object")
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        return error_response(422, "validation_error", f"{field}: {first['msg']}{more}", field=field)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, CODE_OF_STATUS.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
        return error_response(400, "client_disconnected", "the client hung up before sending the whole request")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}", "see the server log")
