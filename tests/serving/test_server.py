"""The policy server on real sockets on 127.0.0.1: the policy's replies and refusals, authentication, limits,
hostile input, openpi's observation form and client."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from served import TINY, observation
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from xr0.deploy.policy import RequestError, checkpoint_identity, parse_request
from xr0.deploy.server import PolicyServer
from xr0_client import (
    ConnectionRejected,
    ServerError,
    XR0Client,
    pack,
    unpack,
)


def test_openpi_client_drives_the_server(server, policy):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy("127.0.0.1", server.port)
    metadata = client.get_server_metadata()
    assert metadata["robot_types"]["libero_all"] == {
        "views": ["base", "wrist_left"],
        "active_action_dims": 7,
        "chunk_length": 10,
    }
    reply = client.infer(observation(seed=3))
    assert reply["actions"].shape == (10, 7) and reply["actions"].dtype == np.float32
    assert reply["server_timing"]["infer_ms"] > 0
    expected = policy(parse_request(observation(seed=3), policy.processor))
    assert np.array_equal(reply["actions"], expected)
    with pytest.raises(RuntimeError, match='"field": "robot_type"'):
        client.infer(observation(robot_type="ur5"))
    assert client.infer(observation(seed=4))["actions"].shape == (10, 7), "the connection survives an error"


def test_action_prefix_is_returned_unchanged(server):
    with XR0Client("127.0.0.1", server.port) as client:
        first = client.infer(observation(seed=1))["actions"]
        prefix = first[3:7]  # 4 committed steps of LIBERO's 10
        second = client.infer(observation(seed=2, action_prefix=prefix))["actions"]
    assert np.allclose(second[:4], prefix, atol=1e-6)
    assert not np.allclose(second[4:7], first[7:10])


def test_prefix_modes_over_the_server(server):
    """Per request: guided inpainting of a 6-step overlap with 2 committed steps returns those 2 as sent and
    equals the in-process policy; "trained" with a delay uses exactly the committed steps as its prefix. The
    metadata names the modes and this checkpoint's default."""
    with XR0Client("127.0.0.1", server.port) as client:
        metadata = client.metadata
        first = client.infer(observation(seed=1))["actions"]
        overlap = first[4:10]
        guided_request = observation(seed=2, action_prefix=overlap, prefix_mode="guided", inference_delay=2)
        guided = client.infer(guided_request)["actions"]
        trained = client.infer(
            observation(seed=2, action_prefix=overlap, prefix_mode="trained", inference_delay=2)
        )
        committed_only = client.infer(observation(seed=2, action_prefix=overlap[:2], prefix_mode="trained"))
    assert metadata["prefix_modes"] == ["trained", "guided"]
    assert metadata["default_prefix_mode"] == "guided"  # the tiny checkpoint never trained with prefixes
    assert metadata["guidance"] == {"jacobian": "vjp", "max_weight": 5.0, "mask_schedule": "exp"}
    assert np.allclose(guided[:2], overlap[:2], atol=1e-6)
    # the request's delay, not the whole overlap, is committed: the rest is steered toward, not copied
    assert not np.allclose(guided[2:6], overlap[2:6], atol=1e-3)
    assert np.allclose(guided, server.policy.infer(guided_request)["actions"], atol=1e-5)
    plain = server.policy.infer(observation(seed=2))["actions"]
    assert not np.allclose(guided[2:6], plain[2:6], atol=1e-3)  # steered toward the overlap
    assert np.array_equal(trained["actions"], committed_only["actions"])


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({"images": {"base": np.zeros((224, 224, 3), np.uint8)}}, "images", "views"),
        (
            {
                "images": {
                    "base": np.zeros((224, 224, 3), np.float32),
                    "wrist_left": np.zeros((224, 224, 3), np.uint8),
                }
            },
            "images.base",
            "uint8",
        ),
        (
            {
                "images": {
                    "base": np.zeros((224, 224), np.uint8),
                    "wrist_left": np.zeros((224, 224, 3), np.uint8),
                }
            },
            "images.base",
            "uint8",
        ),
        (
            {
                "images": {
                    "base": np.zeros((8, 8, 3), np.uint8),
                    "wrist_left": np.zeros((224, 224, 3), np.uint8),
                }
            },
            "images.base",
            "sides",
        ),
        ({"state": np.zeros(33, np.float32)}, "state", "1 to 32 values"),
        ({"state": np.array([np.nan], np.float32)}, "state", "NaN"),
        ({"state": "0.1 0.2"}, "state", "numeric array"),
        ({"instruction": ""}, "instruction", "non-empty"),
        ({"instruction": "x" * 3000}, "instruction", "at most"),
        ({"seed": -1}, "seed", "int in"),
        ({"seed": 1.5}, "seed", "int in"),
        ({"action_prefix": np.zeros((3, 6), np.float32)}, "action_prefix", r"\(p, 7\)"),
        (
            {"action_prefix": np.zeros((10, 7), np.float32)},
            "action_prefix",
            r"p < 10 \(the chunk length of 'libero_all'\)",
        ),
        ({"action_prefix": np.zeros((3, 7), np.float32), "prefix_mode": "inpaint"}, "prefix_mode", "one of"),
        ({"prefix_mode": "guided"}, "prefix_mode", "describes an action_prefix"),
        ({"inference_delay": 2}, "inference_delay", "describes an action_prefix"),
        (
            {"action_prefix": np.zeros((3, 7), np.float32), "inference_delay": 4},
            "inference_delay",
            r"int in \[1, 3\]",
        ),
        (
            {"action_prefix": np.zeros((3, 7), np.float32), "inference_delay": True},
            "inference_delay",
            "int in",
        ),
        ({"extra": 1}, "extra", "unknown fields"),
        (
            {"robot_type": "bridge_delta"},
            "robot_type",
            "serves",
        ),  # known type, but no statistics in this checkpoint
    ],
)
def test_bad_fields_get_named_errors(server, overrides, field, message):
    with XR0Client("127.0.0.1", server.port) as client:
        with pytest.raises(ServerError, match=message) as error:
            client.infer({**observation(), **overrides})
        assert error.value.field == field


def test_fuzzed_messages_all_get_error_replies(server, policy):
    rng = np.random.default_rng(0)
    valid = observation(seed=5)
    junk = [
        None,
        7,
        -3.5,
        "text",
        b"bytes",
        [1, 2],
        {"a": 1},
        np.zeros(3, np.int8),
        np.zeros((2, 2), np.float64),
        True,
    ]
    with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
        ws.recv()  # metadata
        for i in range(200):
            kind = i % 4
            if kind == 0:
                frame = rng.bytes(int(rng.integers(1, 300)))
            elif kind == 1:
                frame = msgpack.packb(
                    {str(rng.integers(0, 9)): junk[int(rng.integers(0, 7))] for _ in range(3)}
                )
            elif kind == 2:
                message = dict(valid)
                field = list(valid)[int(rng.integers(0, len(valid)))]
                message[field] = junk[int(rng.integers(0, len(junk)))]
                frame = pack(message)
            else:
                frame = "a text frame"
            ws.send(frame)
            reply = ws.recv(timeout=30)
            if kind == 2 and is_valid(message, policy):  # a mutation can stay valid (e.g. seed=7)
                assert unpack(reply)["actions"].shape == (10, 7)
                continue
            assert isinstance(reply, str), f"message {i} was accepted"
            assert "error" in json.loads(reply)
        ws.send(pack(valid))
        assert unpack(ws.recv(timeout=30))["actions"].shape == (10, 7)


def is_valid(message, policy):
    try:
        parse_request(unpack(pack(message)), policy.processor)
        return True
    except ValueError:
        return False


def test_oversized_message_closes_only_that_connection(server):
    with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
        ws.recv()
        ws.send(pack(observation(size=1024)))  # 2 x 3 MB > the 2 MB limit of this server
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd.code == 1009
    with XR0Client("127.0.0.1", server.port) as client:
        assert client.infer(observation())["actions"].shape == (10, 7)


def test_concurrent_clients_get_their_own_replies(server, policy):
    seeds = [11, 12, 13, 14]
    expected = {s: policy(parse_request(observation(seed=s), policy.processor)) for s in seeds}
    results, errors = {}, []

    def worker(seed):
        try:
            with XR0Client("127.0.0.1", server.port) as client:
                results[seed] = [client.infer(observation(seed=seed))["actions"] for _ in range(3)]
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    for seed in seeds:
        for actions in results[seed]:
            assert np.array_equal(actions, expected[seed])


def test_token_authentication_and_health_check(policy):
    server = PolicyServer(policy, port=0, token="s3cret").start_in_thread()
    try:
        # A refused handshake is an OSError that says what to do, not websockets' InvalidStatus traceback.
        with pytest.raises(ConnectionRejected, match="HTTP 401: the server wants a token") as refused:
            XR0Client("127.0.0.1", server.port)
        assert refused.value.status == 401 and isinstance(refused.value, OSError)
        with pytest.raises(ConnectionRejected, match="HTTP 401: the token was not accepted"):
            XR0Client("127.0.0.1", server.port, token="wrong")
        with XR0Client("127.0.0.1", server.port, token="s3cret") as client:
            assert client.infer(observation())["actions"].shape == (10, 7)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as response:
            assert response.status == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    "presented",
    [
        "Api-Key s3cret-and-more",  # contains the token
        "Api-Key xs3cret",
        "Bearer s3cret",
        "s3cret",
        "Api-Key s3cre",  # a prefix of the token
        "Api-Key s",
        "Api-Key ",  # an empty token
        "",
    ],
)
def test_only_the_exact_token_is_accepted(policy, presented):
    """The Authorization header must equal `Api-Key <token>`: a header that merely contains the token, a
    prefix of it, or an empty token gets 401, while the exact header on the same raw connection is served (so
    the refusal is the token check's, not the test's plumbing)."""
    server = PolicyServer(policy, port=0, token="s3cret").start_in_thread()
    try:
        uri = f"ws://127.0.0.1:{server.port}"
        with pytest.raises(InvalidStatus) as refused:
            connect(uri, additional_headers={"Authorization": presented}, open_timeout=10)
        assert refused.value.response.status_code == 401
        with connect(
            uri, additional_headers={"Authorization": "Api-Key s3cret"}, open_timeout=10
        ) as accepted:
            assert unpack(accepted.recv(timeout=10))["server"] == "xr0"
        if presented.startswith("Api-Key ") and presented != "Api-Key ":
            with pytest.raises(ConnectionRejected, match="HTTP 401: the token was not accepted"):
                XR0Client("127.0.0.1", server.port, token=presented[len("Api-Key ") :])
    finally:
        server.stop()


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({"state": np.full(8, 3.4e38, np.float32)}, "state", "within"),
        ({"state": np.full(8, 1e300)}, "state", "within"),  # float64 that float32 cannot hold
        (
            {
                "images": {
                    "base": np.zeros((20, 4000, 3), np.uint8),
                    "wrist_left": np.zeros((224, 224, 3), np.uint8),
                }
            },
            "images.base",
            "sides must be in",
        ),
        ({"action_prefix": np.full((3, 7), 1.7e37, np.float32)}, "action_prefix", "standard deviations"),
    ],
)
def test_finite_but_absurd_inputs_are_refused_by_name(server, overrides, field, message):
    with XR0Client("127.0.0.1", server.port) as client:
        with pytest.raises(ServerError, match=message) as error:
            client.infer({**observation(), **overrides})
        assert error.value.field == field
        assert client.infer(observation())["actions"].shape == (10, 7)


def test_a_non_finite_chunk_is_an_error_never_actions(policy):
    from types import SimpleNamespace

    class NaNModel:
        device, dtype = torch.device("cpu"), torch.float32
        config = policy.model.config  # the policy reads its default prefix mode from it

        def eval(self):
            return self

        def __call__(self, **inputs):
            return SimpleNamespace(actions=torch.full(inputs["action_mask"].shape, float("nan")))

    nan_policy = type(policy)(NaNModel(), policy.processor)
    with pytest.raises(ValueError, match="non-finite") as error:
        nan_policy.infer(observation())
    assert error.value.field == "actions"


def test_echoed_input_is_bounded_and_escaped(server, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="xr0.server"), XR0Client("127.0.0.1", server.port) as client:
        with pytest.raises(ServerError) as long_type:
            client.infer(observation(robot_type="x" * 1_000_000))
        with pytest.raises(ServerError) as forged:
            client.infer({**observation(), "\n[FAKE] admin logged in \x1b[31m": 1})
    assert len(str(long_type.value)) < 600
    assert "\n" not in str(forged.value) and "\x1b" not in str(forged.value)
    lines = [record.getMessage() for record in caplog.records if "refused" in record.getMessage()]
    assert lines and all("\n" not in line and "\x1b" not in line and len(line) < 1500 for line in lines)


def test_connections_beyond_the_cap_are_refused_politely(policy):
    capped = PolicyServer(policy, port=0, max_connections=2).start_in_thread()
    try:
        first = connect(f"ws://127.0.0.1:{capped.port}")
        second = connect(f"ws://127.0.0.1:{capped.port}")
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{capped.port}")
        assert refused.value.response.status_code == 503
        first.close()
        second.close()
        deadline = time.monotonic() + 5
        while capped.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        with connect(f"ws://127.0.0.1:{capped.port}") as again:
            assert unpack(again.recv(timeout=10))["server"] == "xr0"
    finally:
        capped.stop()


def test_two_authorization_headers_get_400(policy):
    import socket

    guarded = PolicyServer(policy, port=0, token="secret").start_in_thread()
    try:
        request = (
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            "Authorization: Api-Key secret\r\nAuthorization: Api-Key other\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
            sock.sendall(request.encode())
            status = sock.recv(200).split(b"\r\n")[0]
        assert b" 400 " in status, status
    finally:
        guarded.stop()


def test_idle_and_trickling_clients_are_disconnected(policy):
    quick = PolicyServer(policy, port=0, idle_timeout=1.0).start_in_thread()
    try:
        with connect(f"ws://127.0.0.1:{quick.port}") as idle:
            idle.recv(timeout=10)  # metadata
            with pytest.raises(ConnectionClosed):
                idle.recv(timeout=10)  # nothing sent: closed after the idle timeout

        def trickle():
            for _ in range(40):  # a message in 1-byte fragments, one every 0.1 s: never complete in time
                time.sleep(0.1)
                yield b"\x00"

        with connect(f"ws://127.0.0.1:{quick.port}") as slow:
            slow.recv(timeout=10)
            with pytest.raises(ConnectionClosed):
                slow.send(trickle())
                slow.recv(timeout=10)
    finally:
        quick.stop()


def test_a_public_host_needs_a_token_or_an_explicit_opt_out(monkeypatch, capsys):
    from xr0.deploy import server as server_module

    monkeypatch.delenv("XR0_SERVER_TOKEN", raising=False)
    monkeypatch.setattr(server_module, "load_policy", lambda *a: pytest.fail("the model must not load"))
    with pytest.raises(SystemExit):
        server_module.main(["--model", str(TINY), "--host", "0.0.0.0"])
    assert "XR0_SERVER_TOKEN" in capsys.readouterr().err


def test_repeated_log_records_are_rate_limited():
    import logging

    from xr0.deploy.server import _RateLimitedLog

    limiter = _RateLimitedLog("Too many open files", interval=60)
    records = [
        logging.LogRecord("asyncio", logging.ERROR, "", 0, "accept failed: Too many open files", None, None)
        for _ in range(1000)
    ]
    passed = [record for record in records if limiter.filter(record)]
    assert len(passed) == 1 and limiter.suppressed == 999
    other = logging.LogRecord("asyncio", logging.ERROR, "", 0, "something else", None, None)
    assert limiter.filter(other)


def test_a_hostile_frame_gets_an_error_reply_and_the_connection_stays_usable(server):
    def with_dtype(dtype):  # an array frame with an unchecked dtype string (client/tests/test_protocol.py)
        return msgpack.packb(
            {"state": {b"__ndarray__": True, b"data": b"\x00" * 4, b"dtype": dtype, b"shape": [1]}}
        )

    hostile = with_dtype("(" + "1," * 500_000 + ")u1")
    with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
        ws.recv()  # metadata
        for frame in (
            hostile,
            msgpack.packb([[]] * 200_000),
            with_dtype("(1,2"),
        ):
            ws.send(frame)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str) and len(reply) < 1000
        ws.send(pack(observation()))
        assert unpack(ws.recv(timeout=30))["actions"].shape == (10, 7)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as response:
        assert response.status == 200


def test_allowed_origins_refuse_other_browsers(policy):
    strict = PolicyServer(policy, port=0, allowed_origins=["https://robot.example"]).start_in_thread()
    try:
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{strict.port}", origin="https://evil.example")
        assert refused.value.response.status_code == 403
        with connect(f"ws://127.0.0.1:{strict.port}", origin="https://robot.example") as ok:
            assert unpack(ok.recv(timeout=10))["server"] == "xr0"
        with XR0Client("127.0.0.1", strict.port) as robot:  # no Origin header: not a browser
            assert robot.metadata["server"] == "xr0"
    finally:
        strict.stop()


def openpi_observation(sample=0, size=224, **overrides):
    """What openpi's LIBERO example (examples/libero/main.py) sends, key for key: 224² uint8 views, the 8-D
    state (eef position, axis-angle, gripper qpos) as float64, the task text as LIBERO writes it."""
    rng = np.random.default_rng(sample)
    obs = {
        "observation/image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8),
        "prompt": "put the bowl on the plate",
    }
    obs.update(overrides)
    return obs


def test_openpi_libero_example_observation_is_served_unchanged(server, policy):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy("127.0.0.1", server.port)
    assert client.get_server_metadata()["openpi_keys"]["libero_all"] == {
        "observation/image": "images.base",
        "observation/wrist_image": "images.wrist_left",
        "observation/state": "state",
        "prompt": "instruction",
    }
    sent = openpi_observation(sample=5)
    reply = client.infer(sent)
    assert reply["actions"].shape == (10, 7) and reply["actions"].dtype == np.float32
    assert reply["robot_type"] == "libero_all"  # the server's only robot type: openpi sends none
    # The same observation in our form, with the instruction the official XR0 client writes for that task and the
    # same seed, gives the same actions: the mapping is exact.
    ours = {
        "images": {"base": sent["observation/image"], "wrist_left": sent["observation/wrist_image"]},
        "instruction": "Put the bowl on the plate.",
        "state": sent["observation/state"],
        "seed": 11,
    }
    seeded = client.infer({**sent, "seed": 11})["actions"]
    assert np.array_equal(seeded, policy(parse_request(ours, policy.processor)))


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({"observation/image": np.zeros((224, 224), np.uint8)}, "observation/image", "uint8"),
        ({"observation/image": np.zeros((224, 224, 3), np.float32)}, "observation/image", "uint8"),
        ({"observation/wrist_image": np.zeros((8, 8, 3), np.uint8)}, "observation/wrist_image", "sides"),
        ({"observation/wrist_image": None}, "observation/wrist_image", "uint8"),
        ({"observation/state": np.full(8, np.nan)}, "observation/state", "NaN"),
        ({"observation/state": np.zeros(40)}, "observation/state", "1 to 32 values"),
        ({"observation/state": "0 0 0"}, "observation/state", "numeric array"),
        ({"prompt": ""}, "prompt", "non-empty"),
        ({"prompt": 3}, "prompt", "non-empty string"),
        ({"prompt": "x" * 3000}, "prompt", "at most"),
        ({"images": {}}, "images", "unknown fields"),
        ({"observation/depth": np.zeros(3)}, "observation/depth", "unknown fields"),
        ({"robot_type": "bridge_delta"}, "robot_type", "serves"),
        ({"seed": -3}, "seed", "int in"),
    ],
)
def test_openpi_observation_errors_name_the_openpi_field(server, overrides, field, message):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy("127.0.0.1", server.port)
    with pytest.raises(RuntimeError) as error:
        client.infer(openpi_observation(**overrides))
    reply = json.loads(str(error.value).split("\n", 1)[1])["error"]
    assert reply["field"] == field and re.search(message, reply["message"]), reply
    missing = openpi_observation()
    del missing["observation/wrist_image"]
    with pytest.raises(RuntimeError, match='"field": "observation/wrist_image".*missing'):
        client.infer(missing)
    assert client.infer(openpi_observation())["actions"].shape == (10, 7), (
        "the connection survives the errors"
    )


def test_robot_type_is_needed_only_when_the_server_serves_several(policy, policy30):
    no_type = {key: value for key, value in observation().items() if key != "robot_type"}
    assert parse_request(no_type, policy.processor).robot_type == "libero_all"
    for message in (no_type, openpi_observation()):  # policy30 serves libero_all and arm30
        with pytest.raises(
            RequestError, match=r"missing robot_type: this server serves \['arm30', 'libero_all'\]"
        ):
            parse_request(message, policy30.processor)
    assert parse_request(openpi_observation(robot_type="arm30"), policy30.processor).robot_type == "arm30"
    # arm30 is a registered robot type: its prompt is used as sent, not rewritten as a published one's.
    assert parse_request(openpi_observation(robot_type="arm30"), policy30.processor).instruction == (
        "put the bowl on the plate"
    )


def test_the_metadata_names_the_checkpoint_and_its_revision(server, tmp_path):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    identity = checkpoint_identity(TINY)
    assert identity["name"] == "tiny-xr0" and identity["source"] == "git"
    assert re.fullmatch(r"[0-9a-f]{40}", identity["revision"]) and identity["modified"] in (True, False)
    # load_policy names the checkpoint; the server only passes the policy's metadata on.
    assert server.policy.checkpoint == identity
    assert WebsocketClientPolicy("127.0.0.1", server.port).get_server_metadata()["checkpoint"] == identity

    converted = tmp_path / "libero"
    converted.mkdir()
    (converted / "conversion.json").write_text(
        json.dumps(
            {"source": "XiaomiRobotics/Xiaomi-Robotics-0-LIBERO", "revision": "fc04bbd", "variant": "libero"}
        )
    )
    assert checkpoint_identity(converted) == {
        "name": "libero",
        "source": "XiaomiRobotics/Xiaomi-Robotics-0-LIBERO",
        "revision": "fc04bbd",
        "variant": "libero",
    }
    snapshot = tmp_path / "models--XiaomiRobotics--Xiaomi-Robotics-0-LIBERO" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    assert checkpoint_identity(snapshot)["source"] == "XiaomiRobotics/Xiaomi-Robotics-0-LIBERO"
    assert checkpoint_identity(snapshot)["revision"] == "a" * 40


def test_the_policy_answers_refuses_and_counts_without_a_transport(policy, monkeypatch):
    """What a second transport would reuse: a decoded message in, a reply or a refusal out, counted."""
    before = (policy.served, policy.refused, policy.failed)
    answer = policy.answer(policy.parse(observation()))
    assert answer["actions"].shape == (10, 7) and answer["robot_type"] == "libero_all"
    with pytest.raises(RequestError) as refused:
        policy.parse(observation(state="up"))
    assert refused.value.field == "state"
    assert policy.refusal(RequestError("state", "x" * 5000)) == {
        "error": {"field": "state", "message": "x" * 1000}
    }

    def failing_forward(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(policy.model, "forward", failing_forward)
    assert policy.answer(policy.parse(observation())) == {
        "error": {"field": None, "message": "internal error during inference (logged on the server)"}
    }
    after = (policy.served, policy.refused, policy.failed)
    assert tuple(a - b for a, b in zip(after, before, strict=True)) == (1, 1, 1)
    assert policy.metadata()["robot_types"]["libero_all"] == {
        "views": ["base", "wrist_left"],
        "active_action_dims": 7,
        "chunk_length": 10,
    }


# ---- defaults: the checkpoint's prefix mode, the token from the environment ------------------------------------


@pytest.fixture(scope="module")
def trained_server():
    """The tiny checkpoint served as if its training had drawn prefixes (`action_prefix_probability` > 0): its
    default prefix mode is then "trained"."""
    from xr0.deploy.policy import XR0Policy, load_policy

    loaded = load_policy(str(TINY), "cpu", torch.float32)
    loaded.model.config.action_prefix_probability = 0.5
    server = PolicyServer(XR0Policy(loaded.model, loaded.processor), port=0).start_in_thread()
    yield server
    server.stop()


@pytest.mark.parametrize("served, default", [("server", "guided"), ("trained_server", "trained")])
def test_a_prefix_without_prefix_mode_is_served_in_the_checkpoints_advertised_default(
    served, default, request
):
    """A request with an action_prefix and no prefix_mode gets exactly the chunk of the mode the metadata
    advertises as `default_prefix_mode` (the checkpoint's: guided for one trained without prefixes, trained for one
    trained with them), not the other mode's."""
    port = request.getfixturevalue(served).port
    other = {"guided": "trained", "trained": "guided"}[default]
    with XR0Client("127.0.0.1", port) as client:
        prefix = client.infer(observation(seed=1))["actions"][4:8]
        unnamed = client.infer(observation(seed=2, action_prefix=prefix))["actions"]
        named = client.infer(observation(seed=2, action_prefix=prefix, prefix_mode=default))["actions"]
        other_mode = client.infer(observation(seed=2, action_prefix=prefix, prefix_mode=other))["actions"]
        assert client.metadata["default_prefix_mode"] == default
    assert np.array_equal(unnamed, named)
    assert not np.allclose(unnamed[4:], other_mode[4:], atol=1e-3), "the two modes differ after the prefix"


def serve_command(*arguments) -> list:
    return [str(Path(sys.executable).with_name("xr0-serve")), "--model", str(TINY), *arguments]


@pytest.mark.slow
def test_the_token_in_the_environment_guards_a_server_started_without_token():
    """`XR0_SERVER_TOKEN=... xr0-serve` (no --token), as the docs tell users to start it: the server says it
    requires a token, refuses a client without it (401) and serves one with it; the guidance options of the
    command line reach the metadata. Ctrl-C ends it with status 130."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "XR0_SERVER_TOKEN": "s3cret"}
    command = serve_command("--port", "0", "--mask_schedule", "linear", "--max_guidance_weight", "2")
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment
    )
    seen = []
    listens = threading.Event()

    def read() -> None:  # every line of stderr, until the process ends
        for line in process.stderr:
            seen.append(line)
            if "serving tiny-xr0 on ws://" in line:
                listens.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        listens.wait(timeout=120)
        listening = re.search(
            r"serving tiny-xr0 on ws://127\.0\.0\.1:(\d+)( \(token required\))?", "".join(seen)
        )
        assert listening, "".join(seen)[-3000:]
        assert listening.group(2), "the server does not say it requires a token"
        port = int(listening.group(1))
        with pytest.raises(ConnectionRejected, match="HTTP 401: the server wants a token"):
            XR0Client("127.0.0.1", port)
        with XR0Client("127.0.0.1", port, token="s3cret") as client:
            assert client.metadata["guidance"] == {
                "jacobian": "vjp",
                "max_weight": 2.0,
                "mask_schedule": "linear",
            }
            assert client.infer(observation())["actions"].shape == (10, 7)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        process.kill()
        process.wait()
        reader.join(timeout=10)
    assert process.returncode == 130, "".join(seen)[-3000:]
    assert "Traceback" not in "".join(seen), "".join(seen)[-3000:]


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_a_public_host_accepts_the_token_from_the_environment(token):
    """`--host 0.0.0.0` needs a token: with none, xr0-serve exits 2 naming XR0_SERVER_TOKEN; with the token in the
    environment only, it goes past that check to the next one (here --cuda_graphs on the CPU, which also exits 2,
    before anything binds or loads)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    environment.pop("XR0_SERVER_TOKEN", None)
    if token is not None:
        environment["XR0_SERVER_TOKEN"] = token
    finished = subprocess.run(
        serve_command("--host", "0.0.0.0", "--device", "cpu", "--cuda_graphs"),
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert finished.returncode == 2 and "Traceback" not in finished.stderr, finished.stderr[-3000:]
    if token is None:
        assert "--host 0.0.0.0 is reachable from other machines: set XR0_SERVER_TOKEN" in finished.stderr
    else:
        assert "reachable from other machines" not in finished.stderr
        assert "--cuda_graphs needs a CUDA device; the policy would run on cpu" in finished.stderr
