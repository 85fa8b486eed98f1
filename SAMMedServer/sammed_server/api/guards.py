"""ASGI guards in front of every route: token, Host and Origin (DNS rebinding, cross-site pages), content type,
body size.

A web page the user visits can make the browser talk to ``127.0.0.1``; three rules keep it out:

- ``Host`` must name this worker: ``localhost``, a loopback address, any IP literal when the worker listens on
  a non-loopback address, or a name given with ``--allow-host``. A page that rebinds its own name to 127.0.0.1
  still sends that name, so it gets 403.
- ``Origin``, when a browser sends one, must be this worker's own origin (same host and port as ``Host``).
- Every ``POST`` needs a non-"simple" content type (``application/json``; the volume upload
  ``application/octet-stream``), so no cross-site request reaches a handler without a CORS preflight, which this
  worker never grants.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Iterable, Optional
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .protocol import API_PREFIX
from .schemas import ErrorBody, ErrorResponse

LOOPBACK_NAMES = ("localhost",)
UPLOAD_PATH = f"{API_PREFIX}/volumes"
DRAIN_BYTES = 16 * 2**20  # of a refused request's body, read and dropped so the client sees the answer, not a reset


def error_response(status: int, code: str, message: str, hint: str = "", field: Optional[str] = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, hint=hint, field=field))
    return JSONResponse(body.model_dump(), status_code=status)


async def refuse(response: JSONResponse, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``response`` after reading (at most ``DRAIN_BYTES`` of) the unread body: closing a connection with
    unread data makes the client's send fail before it can read the answer."""
    drained = 0
    while drained <= DRAIN_BYTES:
        message = await receive()
        drained += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    await response(scope, receive, send)


class HostCheck:
    """403 for a ``Host`` this worker does not answer to, or an ``Origin`` other than its own."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = (), any_ip: bool = False) -> None:
        self.app = app
        self.allowed = {host.strip().lower().strip("[]") for host in (*LOOPBACK_NAMES, *allowed_hosts) if host.strip()}
        self.any_ip = any_ip

    def allows(self, host: str) -> bool:
        name = host_name(host)
        if "*" in self.allowed or name in self.allowed:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.any_ip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            host = headers.get(b"host", b"").decode("latin-1")
            origin = headers.get(b"origin")
            refusal = None
            if host and not self.allows(host):
                refusal = ("forbidden_host", f"this worker does not answer to host {host!r}",
                           "use http://127.0.0.1:<port>, or start the worker with --allow-host NAME")
            elif origin is not None and not self._same_origin(origin.decode("latin-1"), host):
                refusal = ("forbidden_origin", "cross-origin requests are refused",
                           "call the worker from a program, not from a web page")
            if refusal:
                await refuse(error_response(403, *refusal), scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _same_origin(self, origin: str, host: str) -> bool:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.lower() and self.allows(host)


def host_name(host: str) -> str:
    """``Host`` header value without its port, lower case, IPv6 brackets removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class ContentTypeCheck:
    """415 for a ``POST`` without ``application/json`` (``application/octet-stream`` for the volume upload)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            expected = "application/octet-stream" if scope["path"].rstrip("/") == UPLOAD_PATH else "application/json"
            given = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if given != expected:
                message = f"POST {scope['path']} needs Content-Type: {expected}" + (f", got {given!r}" if given else "")
                await refuse(error_response(415, "unsupported_media_type", message, f"send Content-Type: {expected}"),
                             scope, receive, send)
                return
        await self.app(scope, receive, send)


class TokenCheck:
    """Refuses (401) any request whose ``Authorization: Bearer`` token differs (constant-time compare)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                reason = "a wrong API token" if given else "no API token"
                response = error_response(401, "unauthorized", f"request with {reason}", "send Authorization: Bearer <token>")
                await refuse(response, scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for bodies over the limit: at once from Content-Length, else while the body streams in."""

    def __init__(self, app: ASGIApp, default_limit: int, upload_limit: int) -> None:
        self.app = app
        self.default_limit = default_limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH
        limit = self.upload_limit if is_upload else self.default_limit
        message = f"the request body is larger than this server accepts ({limit} bytes)"
        hint = "raise the server's upload limit or send a smaller volume" if is_upload else "send a smaller request"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await error_response(413, "payload_too_large", message, hint)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            incoming = await receive()
            received += len(incoming.get("body", b""))
            if received > limit:
                raise HTTPException(413, message)
            return incoming

        await self.app(scope, counting_receive, send)
