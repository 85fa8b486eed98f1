"""How arrays travel to and from the worker (its ``EncodedArray``: packbits/raw + zlib + base64) and the id it
gives an uploaded volume. Standard library + numpy only, like the client."""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Sequence

import numpy as np

UPLOAD_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


def decode_array(encoded: dict) -> np.ndarray:
    """A server ``EncodedArray``: bool = packbits + zlib + base64, floats = little-endian raw + zlib + base64."""
    shape = tuple(encoded["shape"])
    raw = zlib.decompress(base64.b64decode(encoded["data"]))
    if encoded["dtype"] == "bool":
        count = int(np.prod(shape))
        return np.unpackbits(np.frombuffer(raw, np.uint8), count=count).astype(bool).reshape(shape)
    return np.frombuffer(raw, np.dtype(encoded["dtype"]).newbyteorder("<")).reshape(shape)


def encode_mask(mask: np.ndarray) -> dict:
    """A bool array → the server's ``EncodedArray`` (packbits, big-endian bits, C order + zlib + base64)."""
    bits = np.packbits(np.ascontiguousarray(mask, dtype=bool).ravel())
    return {"shape": list(np.shape(mask)), "dtype": "bool", "data": base64.b64encode(zlib.compress(bits.tobytes())).decode()}


def encode_float(array: np.ndarray, dtype: str = "float16") -> dict:
    raw = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return {"shape": list(np.shape(array)), "dtype": dtype, "data": base64.b64encode(zlib.compress(raw)).decode()}


def content_id(array: np.ndarray, spacing: Sequence[float]) -> str:
    """The id the server gives this voxel array (the engine's content hash), for an array as uploaded."""
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}|{array.shape}|{tuple(round(float(s), 6) for s in spacing)}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:32]


def upload_array(array: np.ndarray) -> np.ndarray:
    """``array`` as it travels: C-order, little-endian, one of ``UPLOAD_DTYPES`` (others become float32)."""
    array = np.asarray(array)
    dtype = array.dtype.name if array.dtype.name in UPLOAD_DTYPES else "float32"
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))


def encode_annotations(annotations: dict, axis: int) -> dict:
    """Annotated slices ``{index: mask}`` along ``axis`` → the server's ``AnnotatedSlices``."""
    indices = sorted(int(i) for i in annotations)
    masks = np.stack([np.asarray(annotations[i], bool) for i in indices])
    return {"axis": int(axis), "indices": indices, "masks": encode_mask(masks)}
