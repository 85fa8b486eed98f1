"""Arrays on the wire.

A mask travels as ``np.packbits`` of its C-order flattened bits (big-endian bit order), zlib,
then base64 in JSON, with its shape: a 512×512 slice mask is 32 KiB before and usually well under
1 KiB after compression. Float arrays (mask-input logits) travel as little-endian raw bytes,
zlib, base64. Uploaded volumes are zlib-compressed raw C-order bytes in an octet-stream body.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from .schemas import EncodedArray

FLOAT_DTYPES = ("float16", "float32")
VOLUME_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
MAX_ARRAY_ELEMENTS = 2**28  # a mask or logits array in a JSON request
INFLATE_PIECE = 4 * 2**20  # bytes inflated at a time from an upload


def encode_mask(mask: np.ndarray) -> EncodedArray:
    """A boolean array of any shape → bit-packed, zlib-compressed, base64 ``EncodedArray``."""
    bits = np.packbits(np.ascontiguousarray(mask, dtype=bool).ravel())
    return EncodedArray(shape=list(mask.shape), dtype="bool", data=base64.b64encode(zlib.compress(bits.tobytes())).decode())


def encode_float(array: np.ndarray, dtype: str = "float16") -> EncodedArray:
    raw = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return EncodedArray(shape=list(array.shape), dtype=dtype, data=base64.b64encode(zlib.compress(raw)).decode())


def decode_array(
    encoded: EncodedArray, field: str = "array", shape: Optional[Sequence[Optional[int]]] = None,
    max_elements: int = MAX_ARRAY_ELEMENTS,
) -> np.ndarray:
    """The inverse of :func:`encode_mask` / :func:`encode_float`; errors name ``field``.

    The declared shape is checked against ``shape`` (None = any extent on that axis) and ``max_elements``
    before anything is inflated, and inflating stops at the declared size: a small request cannot become a
    large allocation."""
    if shape is not None and (
        len(encoded.shape) != len(shape) or any(want is not None and got != want for got, want in zip(encoded.shape, shape))
    ):
        wanted = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
        raise InputError(f"{field} must have shape {wanted}, got {tuple(encoded.shape)}")
    count = math.prod(encoded.shape)
    if count > max_elements:
        raise InputError(f"{field}: shape {encoded.shape} is too large ({count} elements, at most {max_elements})")
    if encoded.dtype == "bool":
        expected = (count + 7) // 8
    elif encoded.dtype in FLOAT_DTYPES:
        expected = count * np.dtype(encoded.dtype).itemsize
    else:
        raise InputError(f"{field}: dtype must be bool, float16 or float32, got {encoded.dtype!r}")
    raw = inflate(_b64(encoded.data, field), expected, field)
    if len(raw) != expected:
        raise InputError(f"{field}: {len(raw)} bytes do not fit shape {encoded.shape} of {encoded.dtype}")
    if encoded.dtype == "bool":
        return np.unpackbits(np.frombuffer(raw, np.uint8), count=count).astype(bool).reshape(encoded.shape)
    array = np.frombuffer(raw, np.dtype(encoded.dtype).newbyteorder("<")).astype(np.float32).reshape(encoded.shape)
    if not np.isfinite(array).all():
        raise InputError(f"{field} contains NaN or infinite values")
    return array


def volume_bytes(shape: Sequence[int], dtype: str) -> int:
    """Bytes of an uploaded ``(K, J, I)`` array once inflated (the dtype is checked here)."""
    if dtype not in VOLUME_DTYPES:
        raise InputError(f"volume dtype must be one of {', '.join(VOLUME_DTYPES)}, got {dtype!r}")
    return math.prod(shape) * np.dtype(dtype).itemsize


class VolumeInflater:
    """Inflates an upload body chunk by chunk into one buffer of exactly the declared size.

    Nothing beyond the declared size is ever inflated or kept, and the compressed body is never held whole,
    so an aborted or hostile upload costs at most the declared (budget-checked) size."""

    def __init__(self, shape: Sequence[int], dtype: str, compression: str) -> None:
        self.shape, self.dtype = tuple(shape), dtype
        self.expected = volume_bytes(shape, dtype)
        self._buffer = np.empty(self.expected, np.uint8)  # pages are only touched as data arrives
        self._filled = 0
        self._inflater = zlib.decompressobj() if compression == "zlib" else None

    def feed(self, chunk: bytes) -> None:
        if self._inflater is None:
            self._write(chunk)
            return
        if self._inflater.eof:
            if chunk:
                raise InputError("volume body: data after the end of the zlib stream")
            return
        try:
            while chunk:  # in pieces of at most INFLATE_PIECE: a bomb chunk never becomes one big bytes object
                self._write(self._inflater.decompress(chunk, min(self.expected - self._filled + 1, INFLATE_PIECE)))
                chunk = self._inflater.unconsumed_tail
        except zlib.error as exc:
            raise InputError(f"volume body: not valid zlib data ({exc})") from None
        if self._inflater.unused_data:
            raise InputError("volume body: data after the end of the zlib stream")

    def array(self) -> np.ndarray:
        """The ``(K, J, I)`` array, once the whole body has been fed."""
        if self._inflater is not None and not self._inflater.eof:
            raise InputError("volume body: the zlib stream is truncated")
        if self._filled != self.expected:
            raise self._size_error(self._filled)
        return self._buffer.view(np.dtype(self.dtype).newbyteorder("<")).reshape(self.shape)

    def _write(self, data: bytes) -> None:
        end = self._filled + len(data)
        if end > self.expected:
            raise self._size_error(f"more than {self.expected}")
        self._buffer[self._filled:end] = np.frombuffer(data, np.uint8)
        self._filled = end

    def _size_error(self, got: object) -> InputError:
        return InputError(
            f"volume body holds {got} bytes but shape {list(self.shape)} of {self.dtype} needs {self.expected}",
            "send the array in C order, (K, J, I) = (slices, rows, columns)",
        )


def decode_volume(body: bytes, shape: Sequence[int], dtype: str, compression: str) -> np.ndarray:
    """An uploaded ``(K, J, I)`` voxel array from its (optionally zlib-compressed) raw bytes, in one piece."""
    inflater = VolumeInflater(shape, dtype, compression)
    inflater.feed(body)
    return inflater.array()


def inflate(data: bytes, expected: int, field: str) -> bytes:
    """zlib-decompress at most ``expected + 1`` bytes (a compression bomb cannot blow up memory)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, expected + 1)
    except zlib.error as exc:
        raise InputError(f"{field}: not valid zlib data ({exc})") from None
    if not inflater.eof and len(raw) <= expected:
        raise InputError(f"{field}: the zlib stream is truncated")
    return raw


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{field}: data is not valid base64") from None
