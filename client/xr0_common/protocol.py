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
# Dtype strings a peer may send: byte order + kind + size. Nothing else reaches numpy's dtype parser, which
# evaluates tuple/struct syntax ("(1,1,...)u1") with literal_eval: a few MiB of it stall a server for seconds.
ALLOWED_DTYPES = frozenset(
    f"{order}{kind}{size}"
    for order in "<>|="
    for kind, sizes in (("b", "1"), ("i", "1248"), ("u", "1248"), ("f", "248"))
    for size in sizes
)
# Bounds on a decoded message, checked while msgpack decodes (C speed) so that a hostile frame is refused in
# milliseconds: no container longer than MAX_CONTAINER_ITEMS, no more than MAX_CONTAINERS containers in all.
MAX_CONTAINER_ITEMS = 4096
MAX_CONTAINERS = 10_000
# What an error message or a log line repeats of a peer's input, at most.
MAX_ECHO_CHARS = 200


class ProtocolError(ValueError):
    """A frame that is not a well-formed message of this protocol; `field` names where, when known."""

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.field = field


def shown(value: Any, limit: int = MAX_ECHO_CHARS) -> str:
    """A peer's value as it may appear in a reply or a log line: repr (control characters and newlines
    escaped), cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def field_name(key: str, limit: int = 60) -> str:
    """A peer's key as a field name in replies and logs: itself when short and printable, else `shown`."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= limit else shown(key, limit)


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


def _checked_dtype(value: Any, field: Optional[str]) -> np.dtype:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            value = None
    if not isinstance(value, str) or value not in ALLOWED_DTYPES:
        raise ProtocolError(
            f"array dtype {shown(value)} is not allowed: only byte order + kind + size such as '<f4', '|u1', "
            "'<i8', '|b1'",
            field,
        )
    return np.dtype(value)


def _decode_array(obj: dict, field: Optional[str]) -> Any:
    if b"__ndarray__" in obj:
        dtype = _checked_dtype(obj.get(b"dtype"), field)
        shape, data = obj.get(b"shape"), obj.get(b"data")
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) > MAX_DIMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise ProtocolError(
                f"array shape must be a list of at most {MAX_DIMS} non-negative ints, got {shown(shape)}",
                field,
            )
        if not isinstance(data, bytes):
            raise ProtocolError("array data must be bytes", field)
        count = 1
        for n in shape:  # Python ints: no overflow, however large the claimed shape
            count *= n
        expected = count * dtype.itemsize
        if expected != len(data):
            raise ProtocolError(
                f"array of shape {list(shape)} and dtype {dtype} needs {expected} bytes, got {len(data)}",
                field,
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    dtype = _checked_dtype(obj.get(b"dtype"), field)
    value = obj.get(b"data")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if not (isinstance(value, bool) and dtype.kind == "b"):
            raise ProtocolError(f"numpy scalar data must be a number, got {type(value).__name__}", field)
    try:
        return dtype.type(value)
    except (OverflowError, ValueError) as error:
        raise ProtocolError(f"numpy scalar {shown(value)} does not fit {dtype}", field) from error


def _decode_tree(obj: Any, path: Optional[str]) -> Any:
    """Rebuilds numpy arrays and scalars, naming the field (`images.base`, `state`, ...) of any error."""
    if isinstance(obj, dict):
        if b"__ndarray__" in obj or b"__npgeneric__" in obj:
            return _decode_array(obj, path)
        decoded = {}
        for key, value in obj.items():
            name = field_name(key)
            decoded[key] = _decode_tree(value, name if path is None else f"{path}.{name}")
        return decoded
    if isinstance(obj, list):
        return [_decode_tree(value, f"{path}[{i}]" if path else f"[{i}]") for i, value in enumerate(obj)]
    return obj


class _ContainerBudget:
    """msgpack hooks that count every decoded container and refuse a message with too many."""

    def __init__(self, limit: int):
        self.remaining = limit

    def _spend(self) -> None:
        self.remaining -= 1
        if self.remaining < 0:
            raise ProtocolError(f"message holds more than {MAX_CONTAINERS} arrays and maps")

    def list_hook(self, items):
        self._spend()
        return items

    def object_pairs_hook(self, pairs):
        self._spend()
        keys = [key for key, _ in pairs]
        if any(isinstance(key, (dict, list)) for key in keys):
            raise ProtocolError("map keys must be strings, bytes or numbers")
        return dict(pairs)


def pack(message: Any) -> bytes:
    return msgpack.packb(message, default=_pack_numpy, use_bin_type=True)


def unpack(frame: bytes, max_bytes: Optional[int] = None) -> Any:
    """A frame -> the message, with numpy arrays rebuilt. Any malformed frame raises ProtocolError (never
    another exception), naming the field when the fault is inside one."""
    if not isinstance(frame, (bytes, bytearray)):
        raise ProtocolError("expected a binary msgpack frame")
    if max_bytes is not None and len(frame) > max_bytes:
        raise ProtocolError(f"message of {len(frame)} bytes exceeds the limit of {max_bytes}")
    budget = _ContainerBudget(MAX_CONTAINERS)
    try:
        message = msgpack.unpackb(
            bytes(frame),
            raw=False,
            strict_map_key=False,
            list_hook=budget.list_hook,
            object_pairs_hook=budget.object_pairs_hook,
            max_array_len=MAX_CONTAINER_ITEMS,
            max_map_len=MAX_CONTAINER_ITEMS,
        )
        return _decode_tree(message, None)
    except ProtocolError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever a hostile frame makes a decoder raise is a refusal
        raise ProtocolError(
            f"not a valid msgpack message ({type(error).__name__}: {shown(str(error))})"
        ) from None


def error_text(field: Optional[str], message: str) -> str:
    """An error reply: a TEXT frame (openpi clients raise on text), holding JSON for clients that parse it."""
    return json.dumps({"error": {"field": field, "message": message}})
