"""The wire format: msgpack with numpy arrays, without pickle; hostile frames are refused before numpy parses
anything, and errors name the field."""

import msgpack
import numpy as np
import pytest

from xr0_client import (
    ProtocolError,
    pack,
    unpack,
)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]
)
def test_arrays_round_trip(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    decoded = unpack(pack({"x": array, "s": np.float32(1.5), "n": [1, "a"]}))
    assert decoded["x"].dtype == array.dtype and np.array_equal(decoded["x"], array)
    assert decoded["s"] == np.float32(1.5) and decoded["n"] == [1, "a"]


def test_unsafe_or_inconsistent_arrays_are_refused():
    with pytest.raises(TypeError):
        pack({"x": np.array([object()])})
    good = {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "<f4", b"shape": [2]}
    for change, message in [
        ({b"dtype": "|O"}, "not allowed"),
        ({b"dtype": "<c16"}, "not allowed"),
        ({b"dtype": "|V8"}, "not allowed"),
        ({b"dtype": "nonsense"}, "not allowed"),
        ({b"shape": [3]}, "needs 12 bytes"),
        ({b"shape": [-1, -2]}, "non-negative"),
        ({b"data": "text"}, "must be bytes"),
        ({b"shape": [1] * 9}, "at most 8"),
    ]:
        frame = msgpack.packb({**good, **change}, use_bin_type=True)
        with pytest.raises(ProtocolError, match=message):
            unpack(frame)
    with pytest.raises(ProtocolError, match="valid msgpack"):
        unpack(b"\xc1\xff\x00")


def raw_array(dtype, data=b"\x00" * 4, shape=(1,)):
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": list(shape)}


@pytest.mark.parametrize(
    "hostile",
    [
        "(" + "1," * 200_000 + ")u1",  # numpy's parser would literal_eval this for seconds
        "(1,2",  # numpy: SyntaxError
        "089bV",
        "(1e999,)f4",
        "<f4" + "\x00",
        "|S4",
    ],
)
def test_hostile_dtype_strings_are_refused_without_reaching_numpy(hostile):
    frame = msgpack.packb({"state": raw_array(hostile)}, use_bin_type=True)
    with pytest.raises(ProtocolError, match="not allowed") as error:
        unpack(frame)
    assert error.value.field == "state" and len(str(error.value)) < 400


@pytest.mark.parametrize(
    "structure, message",
    [
        ([[]] * 100_000, "msgpack"),  # one very long array
        ([[[]] * 4000] * 40, "more than"),  # many small containers
        ({str(i): {} for i in range(4000)} | {"x": [[[]] * 3000] * 4}, "more than"),
    ],
)
def test_container_bombs_are_refused(structure, message):
    with pytest.raises(ProtocolError, match=message):
        unpack(msgpack.packb(structure))


def test_malformed_arrays_name_their_field():
    frame = pack({"images": {"base": np.zeros(1, np.uint8)}})
    broken = msgpack.packb(
        {"images": {"base": raw_array("<f4", data=b"\x00" * 3)}, "state": [1.0]}, use_bin_type=True
    )
    assert unpack(frame)["images"]["base"].shape == (1,)
    with pytest.raises(ProtocolError, match="needs 4 bytes") as error:
        unpack(broken)
    assert error.value.field == "images.base"
