"""The wire format of the XR0 policy server: openpi's websocket protocol (msgpack frames; numpy arrays as maps
with bytes keys `__ndarray__`, `data`, `dtype`, `shape`), decoded defensively. Nothing here unpickles: only
bool/int/uint/float arrays of an exactly matching byte size are rebuilt, everything else is refused.
"""

import json
from typing import Any, Optional

import msgpack
import numpy as np

ALLOWED_DTYPE_KINDS = "biuf"  # bool, signed, unsigned, floating
MAX_DIMS = 8


class ProtocolError(ValueError):
    """A frame that is not a well-formed message of this protocol."""


def _pack_numpy(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in ALLOWED_DTYPE_KINDS:
        raise TypeError(f"cannot send numpy dtype {obj.dtype}: only bool, integer and float arrays")
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        return {
            b"__ndarray__": True,
            b"data": array.tobytes(),
            b"dtype": array.dtype.str,
            b"shape": list(array.shape),
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send an object of type {type(obj).__name__}")


def _checked_dtype(value: Any) -> np.dtype:
    if not isinstance(value, (str, bytes)):
        raise ProtocolError(f"array dtype must be a string, got {type(value).__name__}")
    try:
        dtype = np.dtype(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(f"unknown array dtype {value!r}") from error
    if dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.itemsize > 8 or dtype.fields is not None:
        raise ProtocolError(f"array dtype {dtype} is not allowed: only bool, integer and float")
    return dtype


def _unpack_numpy(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = _checked_dtype(obj.get(b"dtype"))
        shape, data = obj.get(b"shape"), obj.get(b"data")
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) > MAX_DIMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise ProtocolError(
                f"array shape must be a list of at most {MAX_DIMS} non-negative ints, got {shape!r}"
            )
        if not isinstance(data, bytes):
            raise ProtocolError("array data must be bytes")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
        if expected != len(data):
            raise ProtocolError(
                f"array of shape {list(shape)} and dtype {dtype} needs {expected} bytes, got {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype = _checked_dtype(obj.get(b"dtype"))
        value = obj.get(b"data")
        if not isinstance(value, (bool, int, float)):
            raise ProtocolError(f"numpy scalar data must be a number, got {type(value).__name__}")
        try:
            return dtype.type(value)
        except (OverflowError, ValueError) as error:
            raise ProtocolError(f"numpy scalar {value!r} does not fit {dtype}") from error
    return obj


def pack(message: Any) -> bytes:
    return msgpack.packb(message, default=_pack_numpy, use_bin_type=True)


def unpack(frame: bytes, max_bytes: Optional[int] = None) -> Any:
    if not isinstance(frame, (bytes, bytearray)):
        raise ProtocolError("expected a binary msgpack frame")
    if max_bytes is not None and len(frame) > max_bytes:
        raise ProtocolError(f"message of {len(frame)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(bytes(frame), object_hook=_unpack_numpy, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData) as error:
        raise ProtocolError(f"not a valid msgpack message: {error}") from error


def error_text(field: Optional[str], message: str) -> str:
    """An error reply: a TEXT frame (openpi clients raise on text), holding JSON for clients that parse it."""
    return json.dumps({"error": {"field": field, "message": message}})
