"""Policy server, protocol, client and the real-time executor, on real sockets on 127.0.0.1."""

import json
import re
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from xr0 import REPO_ROOT
from xr0.deploy.benchmark import register_one_second_arm
from xr0.deploy.policy import RequestError, checkpoint_identity, load_policy, parse_request
from xr0.deploy.server import PolicyServer
from xr0_client import (
    ConnectionRejected,
    FakeClock,
    LocalChunkSource,
    ProtocolError,
    RealtimeExecutor,
    RemoteChunkSource,
    ServerError,
    SimulatedRunner,
    ThreadedRunner,
    XR0Client,
    pack,
    unpack,
)

TINY = REPO_ROOT / "fixtures" / "tiny-xr0"


def observation(seed=0, size=224, **overrides):
    rng = np.random.default_rng(seed)
    obs = {
        "images": {
            view: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for view in ("base", "wrist_left")
        },
        "instruction": "Put the bowl on the plate.",
        "state": rng.normal(size=8).astype(np.float32),
        "robot_type": "libero_all",
        "seed": seed,
    }
    obs.update(overrides)
    return obs


@pytest.fixture(scope="module")
def policy():
    return load_policy(str(TINY), "cpu", torch.float32)


@pytest.fixture(scope="module")
def policy30():
    """The tiny checkpoint serving a robot type with 1 s chunks (T = 30, as the pre-training robot types have)."""
    policy = load_policy(str(TINY), "cpu", torch.float32)
    register_one_second_arm(policy.processor)
    return policy


@pytest.fixture(scope="module")
def server(policy):
    server = PolicyServer(policy, port=0, max_message_bytes=2 * 2**20).start_in_thread()
    yield server
    server.stop()


# ---- protocol ------------------------------------------------------------------------------------------------


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


# ---- server --------------------------------------------------------------------------------------------------


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


# ---- real-time executor --------------------------------------------------------------------------------------


def simulate(source, latency_s, ticks=150, robot_type="arm30", **kwargs):
    clock = FakeClock()
    sent = []
    executor = RealtimeExecutor(
        SimulatedRunner(source, clock, lambda k: latency_s),
        lambda: observation(robot_type=robot_type),
        sent.append,
        clock=clock,
        **kwargs,
    )
    return executor.run(ticks), np.stack(sent)


@pytest.mark.parametrize("latency_ticks", [0.5, 2, 4, 5])
def test_no_idle_tick_when_latency_fits_the_committed_steps(policy30, latency_ticks):
    metrics, sent = simulate(LocalChunkSource(policy30), latency_ticks / 30, execute_steps=10, commit_steps=5)
    assert metrics.idle_ticks == 0 and metrics.late_switches == 0
    assert metrics.chunks >= 14 and len(sent) == 150
    assert metrics.summary()["latency_ms_p99"] == pytest.approx(latency_ticks / 30 * 1e3)


def test_metrics_of_a_run_that_finished_nothing_are_standard_json():
    """Statistics of nothing (no inference finished, no seam) are null, not NaN: json.dumps would write NaN,
    which JSON parsers other than Python's refuse."""
    from xr0_client.realtime import ExecutionMetrics

    summary = ExecutionMetrics(ticks=3, idle_ticks=3).summary()
    assert json.loads(json.dumps(summary, allow_nan=False))["latency_ms_p50"] is None
    assert summary["seam_delta_mean"] is None and summary["latency_ms_max"] is None


def test_late_inference_keeps_executing_then_adapts(policy30):
    metrics, _ = simulate(LocalChunkSource(policy30), 9 / 30, execute_steps=10, commit_steps=5)
    assert metrics.idle_ticks == 0, "the current chunk covers the delay"
    assert metrics.late_switches == 1 and metrics.commit_steps_used[-1] >= 9
    slow, _ = simulate(LocalChunkSource(policy30), 40 / 30, execute_steps=10, commit_steps=5)
    assert slow.idle_ticks > 0, "a chunk of 30 cannot cover 40 ticks of inference"


def trained_phase_model(seed=0, action_prefix_probability=0.8):
    """A tiny model fitted (async recipe; sync with `action_prefix_probability` 0) to sine chunks of random phase
    that the observation does not reveal: only the previous chunk tells the phase, so only prefix-conditioned
    chunks can continue smoothly. It
    starts from the model's own initialization (not tiny_model's all-random one, from which some seeds fit the
    sines poorly: chunks jittery inside, seams no smoother than that), so the fit and the verdict below do not
    hang on the seed."""
    from tiny import action_mask, tiny_config
    from tiny import observation as tiny_observation

    from xr0.modeling_xr0 import XR0ForActionGeneration

    torch.manual_seed(seed)
    model = XR0ForActionGeneration(
        tiny_config(
            action_length=12,
            action_prefix_probability=action_prefix_probability,
            action_attention_window=4,
            noisy_action_position_offset=10,
            max_action_prefix_length=6,
        )
    )
    batch = tiny_observation(seed=seed)
    with torch.no_grad():
        encoded = model.encode_observation(
            batch["input_ids"],
            batch["attention_mask"],
            batch["pixel_values"],
            batch["image_grid_thw"],
            batch["state"],
        )
    mask = action_mask(1, model.config, active_dims=2)
    model.train()
    model.vlm.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 600)
    generator = torch.Generator().manual_seed(seed)
    steps = torch.arange(12, dtype=torch.float32)
    for _ in range(600):
        phase = torch.rand(32, 1, generator=generator) * 2 * np.pi
        chunk = torch.zeros(32, 12, 32)
        chunk[..., 0] = torch.sin(0.4 * steps + phase)
        chunk[..., 1] = torch.cos(0.4 * steps + phase)
        loss = model.compute_loss(
            encoded.repeat_interleave(32), chunk, mask.expand(32, -1, -1), generator=generator
        )["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return model, encoded, mask


def seam_summaries(seed=0, ticks=480, modes=("trained", "none"), action_prefix_probability=0.8):
    """The executor's summaries per prefix mode, driving the model of `trained_phase_model(seed)` (each chunk
    sampled with its own seed), over `ticks` ticks: 480 ticks give ~120 seams per run, so the seam means below
    are averages of many random phases, not of a few."""
    from xr0.modeling_xr0 import PrefixGuidance

    model, encoded, mask = trained_phase_model(seed, action_prefix_probability)
    calls = iter(range(seed * 100_000, (seed + 1) * 100_000))

    def source(observation, prefix):  # chunks of the 2 active dims, as a processor would decode them
        prefix_tensor, mode, guidance = None, "trained", None
        if prefix is not None:
            prefix_tensor = torch.zeros(1, len(prefix), 32)
            prefix_tensor[0, :, :2] = torch.from_numpy(np.asarray(prefix, np.float32))
            mode = observation["prefix_mode"]
            if mode == "guided":
                guidance = PrefixGuidance(inference_delay=observation["inference_delay"])
        with torch.inference_mode():
            chunk = model.sample_actions(
                encoded,
                mask,
                generator=torch.Generator().manual_seed(next(calls)),
                action_prefix=prefix_tensor,
                prefix_mode=mode,
                guidance=guidance,
            )
        return chunk[0, :, :2].numpy()

    summaries = {}
    for mode in modes:
        metrics, _ = simulate(source, 2 / 30, ticks=ticks, execute_steps=4, commit_steps=3, prefix_mode=mode)
        assert metrics.idle_ticks == 0
        summaries[mode] = metrics.summary()
    return summaries


def test_prefix_makes_seams_smoother_on_a_trained_tiny_model():
    """Conditioned on the committed prefix, a new chunk continues the executed motion: its seam is as smooth
    as a step inside a chunk and far smoother than the seam of a chunk inferred without the prefix (a random
    phase)."""
    summaries = seam_summaries(seed=0)
    smooth, jumpy = summaries["trained"], summaries["none"]
    # Seen with seeds 0-8: seams 0.33-0.37 with the prefix (inside a chunk 0.40-0.42; the true step is
    # 2 sin 0.2 = 0.40) vs 0.99-1.23 without; ratio 0.27-0.37 (seed 0: 0.36 / 1.06 = 0.34).
    assert smooth["seam_delta_mean"] < 0.6 * jumpy["seam_delta_mean"], (smooth, jumpy)
    assert smooth["seam_delta_mean"] < 1.5 * smooth["inner_delta_mean"], smooth


def test_guided_prefix_makes_seams_smoother_on_a_tiny_model_trained_without_prefixes():
    """The sync recipe never shows a prefix; guided inpainting of the current chunk's overlap (8 actions, 3 of
    them committed) still makes the next chunk continue its phase, where a chunk inferred blind jumps."""
    summaries = seam_summaries(seed=0, modes=("guided", "none"), action_prefix_probability=0.0)
    smooth, jumpy = summaries["guided"], summaries["none"]
    assert smooth["seam_delta_mean"] < 0.6 * jumpy["seam_delta_mean"], (smooth, jumpy)


def test_executor_with_the_remote_server_on_the_wall_clock(server):
    with XR0Client("127.0.0.1", server.port) as client:
        runner = ThreadedRunner(RemoteChunkSource(client))
        sent = []
        # LIBERO's chunks are 10 steps: infer after 5, commit 4.
        executor = RealtimeExecutor(
            runner, lambda: observation(), sent.append, control_hz=30, execute_steps=5, commit_steps=4
        )
        metrics = executor.run(45)
        runner.close()
    assert len(sent) == 45 and metrics.chunks >= 2
    assert all(latency > 0 for latency in metrics.latencies_s)


# ---- hostile input: the server answers, names the field, stays up -------------------------------------------


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


# ---- the executor under faults, and its timeline ------------------------------------------------------------


class ScriptedSource:
    """Chunks whose every value encodes (inference k, step j) = 1000·k + j; `faults[k]` makes inference k raise,
    return NaN or the wrong width. Records each call's prefix and the prefix fields of its observation."""

    def __init__(self, length=30, width=7, faults=None):
        self.length, self.width, self.faults = length, width, faults or {}
        self.prefixes, self.prefix_fields, self.calls = [], [], 0

    def __call__(self, observation, prefix):
        k = self.calls
        self.calls += 1
        self.prefixes.append(None if prefix is None else np.array(prefix))
        self.prefix_fields.append(
            {key: observation[key] for key in ("prefix_mode", "inference_delay") if key in observation}
        )
        fault = self.faults.get(k)
        if fault == "raise":
            raise ConnectionError("the server went away")
        chunk = np.tile(1000.0 * k + np.arange(self.length)[:, None], (1, self.width))
        if fault == "nan":
            chunk[3, 2] = np.nan
        if fault == "wide":
            chunk = np.ones((self.length, self.width + 3))
        return chunk


def run_scripted(source, ticks=120, latency_ticks=1.0, **kwargs):
    clock = FakeClock()
    sent = []
    executor = RealtimeExecutor(
        SimulatedRunner(source, clock, lambda k: latency_ticks / 30),
        lambda: {},
        sent.append,
        clock=clock,
        **kwargs,
    )
    return executor.run(ticks), sent


def test_faulty_inference_never_reaches_the_robot():
    source = ScriptedSource(faults={2: "raise", 3: "nan", 5: "wide", 6: "raise"})
    metrics, sent = run_scripted(source, ticks=150, execute_steps=10, commit_steps=5)
    assert len(sent) == 150 and metrics.stopped is None
    assert all(a.shape == (7,) and np.isfinite(a).all() for a in sent)
    assert metrics.failures == 4
    used = {int(a[0]) // 1000 for a in sent}
    assert not used & {2, 3, 5, 6}, "no action of a failed chunk was executed"


def test_when_every_retry_fails_the_safe_action_is_held_then_the_policy_stops():
    source = ScriptedSource(faults={k: "raise" for k in range(1, 100)})
    metrics, sent = run_scripted(
        source, ticks=200, execute_steps=10, commit_steps=5, max_consecutive_failures=25
    )
    assert metrics.stopped and "25 consecutive" in metrics.stopped
    chunk_end = sent[29]
    assert metrics.safe_ticks > 0 and all(np.array_equal(a, chunk_end) for a in sent[30:]), (
        "holds the last action"
    )
    zero, sent_zero = run_scripted(
        ScriptedSource(faults={k: "raise" for k in range(1, 100)}),
        ticks=60,
        execute_steps=10,
        commit_steps=5,
        safe_action="zero",
        max_consecutive_failures=None,
    )
    assert zero.stopped is None and len(sent_zero) == 60 and not sent_zero[-1].any()


def test_a_late_inference_times_out_and_is_retried():
    source = ScriptedSource()
    latencies = iter([1 / 30, 50.0] + [1 / 30] * 100)  # the second inference hangs far past the timeout
    clock = FakeClock()
    sent = []
    executor = RealtimeExecutor(
        SimulatedRunner(source, clock, lambda k: next(latencies)),
        lambda: {},
        sent.append,
        clock=clock,
        execute_steps=10,
        commit_steps=5,
        inference_timeout=0.3,
    )
    metrics = executor.run(90)
    assert metrics.failures == 1 and metrics.stopped is None and len(sent) == 90
    assert {int(a[0]) // 1000 for a in sent} >= {0, 2}, "the retried inference took over"


@pytest.mark.parametrize("prefix_mode", ["trained", "guided", "none"])
def test_the_timeline_is_pinned(prefix_mode):
    """Chunk N is requested after tick s_N - 1; the robot switches to N at tick s_N + Δc in every prefix mode. Its
    trained prefix is exactly what runs at ticks s_N .. s_N+Δc-1; its guided prefix is the rest of the chunk
    running at s_N, from that tick on, with those Δc actions committed."""
    execute, commit = 10, 5
    source = ScriptedSource()
    metrics, sent = run_scripted(
        source,
        ticks=100,
        execute_steps=execute,
        commit_steps=commit,
        prefix_mode=prefix_mode,
        adapt_commit=False,
    )
    assert metrics.late_switches == 0 and metrics.idle_ticks == 0
    chunk_of = [int(a[0]) // 1000 for a in sent]
    step_of = [int(a[0]) % 1000 for a in sent]
    switches = [t for t in range(1, len(sent)) if chunk_of[t] != chunk_of[t - 1]]
    assert len(switches) >= 5
    start = 0  # chunk 0 starts at the first tick
    for n, switch in enumerate(switches, start=1):
        s_n = start + execute  # requested after tick start + execute - 1
        assert switch == s_n + commit, (n, switch, s_n)
        assert step_of[switch] == commit, "the new chunk starts at its first uncommitted step"
        prefix, fields = source.prefixes[n], source.prefix_fields[n]
        if prefix_mode == "trained":
            assert np.array_equal(prefix, np.stack(sent[s_n : s_n + commit])), n
            assert fields == {"prefix_mode": "trained"}
        elif prefix_mode == "guided":
            assert np.array_equal(prefix[:commit], np.stack(sent[s_n : s_n + commit])), n
            assert [int(a) for a in prefix[:, 0]] == [1000 * (n - 1) + j for j in range(execute, 30)], n
            assert fields == {"prefix_mode": "guided", "inference_delay": commit}
        else:
            assert prefix is None and fields == {}
        start = s_n


def test_a_hostile_frame_gets_an_error_reply_and_the_connection_stays_usable(server):
    hostile = msgpack.packb({"state": raw_array("(" + "1," * 500_000 + ")u1")}, use_bin_type=True)
    with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
        ws.recv()  # metadata
        for frame in (
            hostile,
            msgpack.packb([[]] * 200_000),
            msgpack.packb({"state": raw_array("(1,2")}, use_bin_type=True),
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


def test_a_failing_first_inference_is_retried_once_per_tick():
    source = ScriptedSource(faults={0: "raise", 1: "raise"})
    metrics, sent = run_scripted(source, ticks=40, latency_ticks=0.0, execute_steps=10, commit_steps=5)
    assert metrics.failures == 2 and metrics.startup_ticks == 2 and len(sent) == 40
    assert int(sent[0][0]) // 1000 == 2, "the first usable chunk is the third inference"


# ---- openpi's own observation form, and robot_type when one is served ------------------------------------------


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
    served = PolicyServer(server.policy, port=0, checkpoint=identity).start_in_thread()
    try:
        assert WebsocketClientPolicy("127.0.0.1", served.port).get_server_metadata()["checkpoint"] == identity
    finally:
        served.stop()

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
