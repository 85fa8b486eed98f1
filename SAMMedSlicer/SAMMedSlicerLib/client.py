"""HTTP client for the SAMMed worker (``sammed-server serve``), standard library + numpy only.

It runs inside Slicer's Python, so it imports nothing else. Typical use::

    client = SAMMedClient("http://127.0.0.1:8765")
    volume = client.upload_volume(array_kji, spacing_ijk, origin, direction)   # free if already there
    result = client.predict(volume.id, axis=2, index=40, box=(30, 20, 90, 70))
    result.mask          # (rows, cols) bool, slice pixel (x, y) = (col, row)
    job_id = client.start_embedding(volume.id, axis=2, focus=40)
    client.wait_job(job_id, progress_cb=lambda status: print(status.progress))

Every call may raise a :class:`SAMMedClientError` (``code``, ``message``, ``hint``); the first call
checks the server's protocol version and raises :class:`ProtocolMismatchError` when it differs.
Each thread keeps its own keep-alive connection, so one client can be shared between threads.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse
import zlib
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .client_errors import (  # noqa: F401  (the errors and results are part of the client's interface)
    AuthenticationError, ConnectionFailedError, InvalidRequestError, JobFailedError, NotFoundError,
    PayloadTooLargeError, ProtocolMismatchError, RequestTimeoutError, SAMMedClientError, ServerError, error_class,
)
from .client_results import (  # noqa: F401
    ArtefactInfo, Health, JobStatus, ModelInfo, PredictResult, SliceMasks, VolumeInfo, VolumeMasks,
    propagation_result, volume_masks,
)
from .wire import content_id, decode_array, encode_annotations, encode_float, encode_mask, upload_array

PROTOCOL_VERSION = 1  # must equal sammed_server.api.protocol.PROTOCOL_VERSION
API_PREFIX = "/v1"
VOLUME_HEADER = "X-SAMMed-Volume"
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class SAMMedClient:
    """Typed calls to the ``/v1`` API of one SAMMed server.

    ``timeout`` bounds each request (an uncached slice on a CPU takes seconds), ``upload_timeout`` a
    volume upload. Idempotent calls are retried ``retries`` times when the connection is refused or
    reset; a keep-alive connection the server closed is always re-opened once.
    """

    def __init__(
        self,
        base_url: str,
        token: Optional[str] = None,
        timeout: float = 120.0,
        upload_timeout: float = 600.0,
        retries: int = 2,
        check_protocol: bool = True,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url.rstrip("/"))
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise SAMMedClientError("invalid_url", f"not an http(s) URL: {base_url!r}", "e.g. http://127.0.0.1:8765")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self.retries = retries
        self._parsed = parsed
        self._local = threading.local()
        self._health: Optional[Health] = None
        self._check_lock = threading.Lock()
        self._check_protocol = check_protocol

    # server ------------------------------------------------------------------------------
    def health(self) -> Health:
        """Service, version, protocol, device and loaded models; raises :class:`ProtocolMismatchError` on a mismatch."""
        try:
            body = self._call("GET", "/health", checked=False)
        except NotFoundError:
            raise self._not_sammed("it has no /v1/health") from None
        if not isinstance(body, dict) or body.get("service") != "sammed-server" or "protocol" not in body:
            raise self._not_sammed("its /v1/health answer is not a SAMMed one")
        if body["protocol"] != PROTOCOL_VERSION:
            raise ProtocolMismatchError(
                "protocol_mismatch",
                f"the SAMMed server at {self.base_url} (version {body.get('version', '?')}) speaks protocol "
                f"{body['protocol']}, but this SAMMed module speaks protocol {PROTOCOL_VERSION}",
                "install the same SAMMed release for the server and the Slicer extension (pip install -U sammed-server)",
            )
        health = Health(**{name: body.get(name) for name in Health.__dataclass_fields__})
        self._health = health
        return health

    def models(self) -> list:
        """All registry models as :class:`ModelInfo` (``loaded``, ``checkpoint_present``, ``default``)."""
        return [ModelInfo(**item) for item in self._call("GET", "/models")]

    # volumes -----------------------------------------------------------------------------
    def upload_volume(
        self,
        array: np.ndarray,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: Sequence[float] = IDENTITY,
    ) -> VolumeInfo:
        """Send a ``(K, J, I)`` voxel array with its geometry (spacing/origin in IJK order, direction 3x3 row-major).

        The server identifies volumes by content hash: when it already has this one, nothing is sent.
        """
        data = upload_array(array)
        known = self._known_volume(content_id(data, spacing))
        if known is not None:
            return known
        body = zlib.compress(data.data, 1)
        limit = self._health.max_upload_bytes if self._health else None
        if limit is not None and len(body) > limit:
            raise PayloadTooLargeError(
                "payload_too_large", f"the compressed volume is {len(body)} bytes, over the server's limit of {limit}",
                "crop or resample the volume, or raise the server's upload limit", 413,
            )
        geometry = {
            "shape": list(data.shape), "dtype": data.dtype.name, "spacing": [float(s) for s in spacing],
            "origin": [float(o) for o in origin], "direction": [float(d) for d in direction], "compression": "zlib",
        }
        headers = {VOLUME_HEADER: json.dumps(geometry), "Content-Type": "application/octet-stream"}
        return VolumeInfo(**_tuples(self._call("POST", "/volumes", body=body, headers=headers, timeout=self.upload_timeout)))

    def register_volume_path(self, path: str) -> VolumeInfo:
        """Have the server read a volume file or DICOM folder from its own file system (same machine)."""
        return VolumeInfo(**_tuples(self._call("POST", "/volumes/from-path", {"path": str(path)}, timeout=self.upload_timeout)))

    def volume(self, volume_id: str) -> VolumeInfo:
        return VolumeInfo(**_tuples(self._call("GET", f"/volumes/{_quote(volume_id)}")))

    def delete_volume(self, volume_id: str) -> None:
        self._call("DELETE", f"/volumes/{_quote(volume_id)}")

    # prediction --------------------------------------------------------------------------
    def predict(
        self,
        volume_id: str,
        axis: int,
        index: int,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] = (),
        box: Optional[Sequence[float]] = None,
        lasso: Optional[Sequence[Sequence[float]]] = None,
        scribbles: Sequence[tuple[Sequence[Sequence[float]], int]] = (),
        mask_input: Optional[np.ndarray] = None,
        use_previous_mask: bool = False,
        session: str = "default",
        multimask: bool = False,
        model: Optional[str] = None,
        window: Optional[str] = None,
        prompt_encoder: Optional[str] = None,
    ) -> PredictResult:
        """Segment slice ``index`` along IJK ``axis`` from points (x, y) with labels (1 = +, 0 = −) and/or a box.

        Strokes: ``lasso`` is a closed polygon of (x, y) vertices (instead of a box: its bounding box is the box,
        and the masks are kept inside it, see ``PredictResult.lasso_dice``); ``scribbles`` are
        ``(polyline, label)`` pairs, each becoming a few points along its polyline.

        ``use_previous_mask`` refines with the low-res logits the server kept from this ``session``'s
        last predict on the same slice (none yet: no mask input); ``mask_input`` gives such logits
        explicitly. A slice whose embedding is not cached is encoded first (seconds on a CPU).
        ``prompt_encoder`` names a learned (SAM-assist) prompt encoder from :meth:`train`.
        """
        request: dict[str, Any] = {
            "axis": int(axis), "index": int(index), "points": [[float(x), float(y)] for x, y in points],
            "labels": [int(v) for v in labels], "box": None if box is None else [float(v) for v in box],
            "use_previous_mask": bool(use_previous_mask), "session": session, "multimask": bool(multimask),
            "model": model, "window": window, "prompt_encoder": prompt_encoder,
        }
        if lasso is not None:  # strokes only when given: a worker older than them still takes every other prompt
            request["lasso"] = [[float(x), float(y)] for x, y in lasso]
        if scribbles:
            request["scribbles"] = [{"points": [[float(x), float(y)] for x, y in line], "label": int(label)}
                                    for line, label in scribbles]
        if mask_input is not None:
            request["mask_input"] = encode_float(mask_input)
        body = self._call("POST", f"/volumes/{_quote(volume_id)}/predict", request, idempotent=not use_previous_mask)
        return PredictResult(
            volume_id=body["volume_id"], axis=body["axis"], index=body["index"], model=body["model"],
            masks=decode_array(body["masks"]), scores=np.asarray(body["scores"], dtype=np.float32), best=body["best"],
            cached=body["cached"], timing_ms=body["timing_ms"],
            lasso_dice=None if body.get("lasso_dice") is None else np.asarray(body["lasso_dice"], dtype=np.float32),
        )

    # jobs --------------------------------------------------------------------------------
    def start_embedding(
        self,
        volume_id: str,
        axis: int = 2,
        focus: Optional[int] = None,
        slices: Optional[Sequence[int]] = None,
        model: Optional[str] = None,
        window: Optional[str] = None,
    ) -> str:
        """Start precomputing the embeddings of a volume along ``axis`` (``focus`` first); returns the job id.

        Asking again while the same job runs returns that job's id.
        """
        request = {
            "axis": int(axis), "focus": focus, "slices": None if slices is None else [int(s) for s in slices],
            "model": model, "window": window,
        }
        return self._call("POST", f"/volumes/{_quote(volume_id)}/embed", request)["id"]

    def train(
        self,
        volume_id: str,
        kind: str,
        annotations: dict,
        axis: int = 2,
        name: str = "target",
        prompt_type: str = "point",
        iterations: Optional[int] = None,
        model: Optional[str] = None,
        window: Optional[str] = None,
    ) -> str:
        """Start learning a target from ``annotations`` ({slice index: (rows, cols) bool}) along ``axis``:
        ``kind`` = ``prompt_encoder`` (SAM-assist) or ``sapnet`` (SAM-auto). Returns the job id; the finished
        job's result has ``artefact_id`` and its ``metrics["loss"]`` is the training curve."""
        request = {
            "kind": kind, "annotations": encode_annotations(annotations, axis), "name": name, "prompt_type": prompt_type,
            "iterations": iterations, "model": model, "window": window,
        }
        return self._call("POST", f"/volumes/{_quote(volume_id)}/train", request)["id"]

    def propagate(
        self,
        volume_id: str,
        axis: int,
        index: int,
        mask: np.ndarray,
        direction: str = "both",
        prompt_encoder: Optional[str] = None,
        max_slices: Optional[int] = None,
        model: Optional[str] = None,
        window: Optional[str] = None,
    ) -> str:
        """Start carrying ``mask`` (the accepted mask of slice ``index``) to the next slices: ``up`` (increasing
        index), ``down`` or ``both``. Returns the job id; read the result with :meth:`propagation_result`."""
        request = {
            "axis": int(axis), "index": int(index), "mask": encode_mask(mask), "direction": direction,
            "prompt_encoder": prompt_encoder, "max_slices": max_slices, "model": model, "window": window,
        }
        return self._call("POST", f"/volumes/{_quote(volume_id)}/propagate", request)["id"]

    def auto_segment(
        self,
        volume_id: str,
        artefact: str,
        prompt_encoder: Optional[str] = None,
        annotations: Optional[dict] = None,
        axis: int = 2,
        model: Optional[str] = None,
        window: Optional[str] = None,
    ) -> str:
        """Start segmenting the whole volume with a SAP-Net (+ learned prompt encoder; ``annotations`` are kept as
        drawn) or an H-SAM / MA-SAM model. Returns the job id; read the result with :meth:`volume_masks`."""
        request = {
            "artefact": artefact, "prompt_encoder": prompt_encoder, "axis": int(axis), "model": model,
            "window": window, "annotations": None if not annotations else encode_annotations(annotations, axis),
        }
        return self._call("POST", f"/volumes/{_quote(volume_id)}/auto-segment", request)["id"]

    def artefacts(self, kind: Optional[str] = None) -> list:
        """Stored prompt encoders / SAP-Nets / automatic models, newest first."""
        query = "" if kind is None else f"?kind={_quote(kind)}"
        return [ArtefactInfo(**item) for item in self._call("GET", f"/artefacts{query}")]

    def job(self, job_id: str) -> JobStatus:
        return JobStatus(**self._call("GET", f"/jobs/{_quote(job_id)}"))

    def jobs(self) -> list:
        return [JobStatus(**item) for item in self._call("GET", "/jobs")]

    def cancel_job(self, job_id: str) -> JobStatus:
        """Ask a job to stop; it ends ``cancelled`` after its current step."""
        return JobStatus(**self._call("POST", f"/jobs/{_quote(job_id)}/cancel"))

    def focus_job(self, job_id: str, index: int) -> JobStatus:
        """Make slice ``index`` the next one an embedding job computes (the slice on screen)."""
        return JobStatus(**self._call("POST", f"/jobs/{_quote(job_id)}/focus", {"index": int(index)}))

    def wait_job(
        self,
        job_id: str,
        poll: float = 0.5,
        timeout: Optional[float] = None,
        progress_cb: Optional[Callable[[JobStatus], None]] = None,
    ) -> JobStatus:
        """Poll until the job ends; returns its status if it succeeded, else raises :class:`JobFailedError`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.job(job_id)
            if progress_cb is not None:
                progress_cb(status)
            if status.done:
                if status.state != "succeeded":
                    raise JobFailedError(status)
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise RequestTimeoutError(
                    "timeout", f"job {job_id} still {status.state} after {timeout:g} s", "cancel it or wait longer"
                )
            time.sleep(poll)

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # transport ---------------------------------------------------------------------------
    def _known_volume(self, volume_id: str) -> Optional[VolumeInfo]:
        try:
            return self.volume(volume_id)
        except NotFoundError:
            return None

    def _call(
        self,
        method: str,
        path: str,
        json_body: Optional[dict] = None,
        body: Optional[bytes] = None,
        headers: Optional[dict] = None,
        timeout: Optional[float] = None,
        idempotent: bool = True,
        checked: bool = True,
    ) -> Any:
        if checked and self._check_protocol and self._health is None:
            with self._check_lock:
                if self._health is None:
                    self.health()
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif method == "POST":
            headers.setdefault("Content-Type", "application/json")  # the worker refuses POSTs without one
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        status, raw = self._send(method, API_PREFIX + path, body, headers, timeout or self.timeout, idempotent)
        payload = _json(raw)
        if status >= 400:
            error = payload.get("error") if isinstance(payload, dict) else None
            if not isinstance(error, dict):
                text = raw[:200].decode(errors="replace")
                raise error_class(status)("http_error", f"HTTP {status} from {self.base_url}{API_PREFIX}{path}: {text}", status=status)
            raise error_class(status)(
                error.get("code", "error"), error.get("message", ""), error.get("hint", ""), status, error.get("field")
            )
        return payload

    def _send(
        self, method: str, path: str, body: Optional[bytes], headers: dict, timeout: float, idempotent: bool
    ) -> tuple:
        attempt = 0
        while True:
            reused = getattr(self._local, "connection", None) is not None
            try:
                connection = self._connection(timeout)
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                raw = response.read()
                if response.will_close:
                    self.close()
                return response.status, raw
            except socket.timeout:
                self.close()
                raise RequestTimeoutError(
                    "timeout", f"{method} {path} got no answer from {self.base_url} within {timeout:g} s",
                    "the server may be busy (first use of a model or slice); try again or raise the timeout",
                ) from None
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()
                stale = reused and isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError))
                if stale and attempt == 0:  # the server closed an idle keep-alive connection: just reconnect
                    attempt += 1
                    continue
                if idempotent and attempt < self.retries and isinstance(exc, (ConnectionError, http.client.RemoteDisconnected)):
                    time.sleep(0.25 * 2**attempt)
                    attempt += 1
                    continue
                raise ConnectionFailedError(
                    "connection_failed", f"cannot talk to the SAMMed server at {self.base_url} ({type(exc).__name__}: {exc})",
                    "check that the server is running and the URL is right (start it with: sammed-server serve)",
                ) from None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        """This thread's keep-alive connection, opened (with TCP_NODELAY) if needed."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            cls = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
            connection = cls(self._parsed.hostname, self._parsed.port, timeout=timeout)
            connection.connect()
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.connection = connection
        connection.sock.settimeout(timeout)
        return connection

    def _not_sammed(self, why: str) -> ProtocolMismatchError:
        return ProtocolMismatchError(
            "not_sammed", f"{self.base_url} is not a SAMMed server ({why})", "check the server URL and port"
        )


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _tuples(body: dict) -> dict:
    """JSON lists → tuples for the geometry fields of :class:`VolumeInfo`."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in body.items()}


def _quote(segment: str) -> str:
    return urllib.parse.quote(str(segment), safe="")
