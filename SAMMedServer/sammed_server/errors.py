"""User-facing errors: one clear message (and an optional hint), never a stack trace."""

from __future__ import annotations


class SAMMedError(Exception):
    """Base of every error the worker reports to a user.

    ``code`` is a stable machine-readable identifier (used by the HTTP error model),
    ``hint`` says what the user can do about it.
    """

    code = "error"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(SAMMedError):
    """The caller's data or arguments are unusable (bad volume, prompt outside the image, ...)."""

    code = "invalid_input"


class VolumeReadError(InputError):
    """A volume file or DICOM folder cannot be read."""

    code = "volume_unreadable"


class UnknownModelError(SAMMedError):
    """A model id that the registry does not know."""

    code = "unknown_model"


class CheckpointError(SAMMedError):
    """A model checkpoint is missing, corrupt or does not fit the model."""

    code = "checkpoint_error"


class DownloadError(SAMMedError):
    """Fetching weights failed (offline, HTTP error, checksum mismatch)."""

    code = "download_failed"


class CancelledError(SAMMedError):
    """A background job was cancelled by the user."""

    code = "cancelled"
