"""The errors every :class:`.client.SAMMedClient` call may raise: one class per kind of failure, each with the
server's error model (``code``, ``message``, ``hint``, ``field``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .client_results import JobStatus


class SAMMedClientError(Exception):
    """An error from the server's error model, or from talking to it. ``status`` is the HTTP status (0: none)."""

    def __init__(self, code: str, message: str, hint: str = "", status: int = 0, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.status = status
        self.field = field

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConnectionFailedError(SAMMedClientError):
    """The server cannot be reached (not running, wrong URL, connection dropped)."""


class RequestTimeoutError(SAMMedClientError):
    """No answer within the timeout (the server may still be working on it)."""


class ProtocolMismatchError(SAMMedClientError):
    """The server speaks another protocol version, or is not a SAMMed server at all."""


class AuthenticationError(SAMMedClientError):
    """401: missing or wrong API token."""


class NotFoundError(SAMMedClientError):
    """404: unknown volume, job, model or route."""


class InvalidRequestError(SAMMedClientError):
    """400/422: the request was refused (``field`` names the offending field when known)."""


class PayloadTooLargeError(SAMMedClientError):
    """413: the body is over the server's limit."""


class ServerError(SAMMedClientError):
    """5xx: the server failed (missing checkpoint, internal error)."""


class JobFailedError(SAMMedClientError):
    """A job ended failed or cancelled; ``status`` here is the final :class:`JobStatus`."""

    def __init__(self, job: "JobStatus") -> None:
        error = job.error or {}
        super().__init__(error.get("code", job.state), error.get("message", f"job {job.id} {job.state}"), error.get("hint", ""))
        self.job = job


def error_class(status: int) -> type:
    """The exception class for an HTTP status the server answered with."""
    if status == 401:
        return AuthenticationError
    if status == 404:
        return NotFoundError
    if status == 413:
        return PayloadTooLargeError
    if status >= 500:
        return ServerError
    return InvalidRequestError


# The errors that mean "no worker answers there" (as opposed to a worker that answered with an error).
UNREACHABLE = (ConnectionFailedError, RequestTimeoutError)
