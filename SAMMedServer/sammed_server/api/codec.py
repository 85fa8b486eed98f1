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
from typing import Sequence

import numpy as np

from ..errors import InputError
from .schemas import EncodedArray

FLOAT_DTYPES = ("float16", "float32")
VOLUME_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
MAX_ARRAY_ELEMENTS = 2**28  # a mask or logits array in a JSON request


def encode_mask(mask: np.ndarray) -> EncodedArray:
    """A boolean array of any shape → bit-packed, zlib-compressed, base64 ``EncodedArray``."""
    bits = np.packbits(np.ascontiguousarray(mask, dtype=bool).ravel())
    return EncodedArray(shape=list(mask.shape), dtype="bool", data=base64.b64encode(zlib.compress(bits.tobytes())).decode())


def encode_float(array: np.ndarray, dtype: str = "float16") -> EncodedArray:
    raw = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return EncodedArray(shape=list(array.shape), dtype=dtype, data=base64.b64encode(zlib.compress(raw)).decode())


def decode_array(encoded: EncodedArray, field: str = "array") -> np.ndarray:
    """The inverse of :func:`encode_mask` / :func:`encode_float`; errors name ``field``."""
    count = math.prod(encoded.shape)
    if count > MAX_ARRAY_ELEMENTS:
        raise InputError(f"{field}: shape {encoded.shape} is too large")
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
    return np.frombuffer(raw, np.dtype(encoded.dtype).newbyteorder("<")).astype(np.float32).reshape(encoded.shape)


def decode_volume(body: bytes, shape: Sequence[int], dtype: str, compression: str) -> np.ndarray:
    """An uploaded ``(K, J, I)`` voxel array from its (optionally zlib-compressed) raw bytes."""
    if dtype not in VOLUME_DTYPES:
        raise InputError(f"volume dtype must be one of {', '.join(VOLUME_DTYPES)}, got {dtype!r}")
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    raw = inflate(body, expected, "volume body") if compression == "zlib" else body
    if len(raw) != expected:
        raise InputError(
            f"volume body holds {len(raw)} bytes but shape {list(shape)} of {dtype} needs {expected}",
            "send the array in C order, (K, J, I) = (slices, rows, columns)",
        )
    return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).reshape(tuple(shape))


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
