"""Benchmark clients: the official clients' conventions on synthetic simulator observations, and a real server
round trip. The seeds below were computed by the official clients' own hash function on the same observations
(run outside this repository); the clients must reproduce them exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xr0 import REPO_ROOT
from xr0.processing_xr0 import PUBLISHED_ROBOT_TYPES, format_prompt
from xr0_client.benchmarks import (
    CalvinClient,
    LiberoClient,
    SimplerEnvClient,
    center_crop_resize,
    official_instruction,
    official_request_seed,
    quaternion_to_axis_angle,
    single_view_prompt,
)


class RecordingPolicy:
    def __init__(self, dims=7, length=10):
        self.observations = []
        self.dims, self.length = dims, length

    def infer(self, observation):
        self.observations.append(observation)
        k = len(self.observations)
        return {
            "actions": np.tile(np.arange(self.length, dtype=np.float32)[:, None] + 100 * k, (1, self.dims))
            - 50
        }


def libero_obs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "agentview_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "robot0_eye_in_hand_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "robot0_eef_pos": np.array([0.1, 0.2, 0.3]),
        "robot0_eef_quat": np.array([0.1, -0.7, 0.2, -0.68]),
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
    }


def calvin_obs():
    rng = np.random.default_rng(0)
    return {
        "rgb_obs": {
            "rgb_static": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
            "rgb_gripper": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8),
        },
        "robot_obs": np.arange(15, dtype=np.float64) / 10,
    }


def simpler_obs():
    eef = np.array([0.3, -0.1, 0.9, 0.5, 0.5, -0.5, 0.5, 0.8])
    eef[3:7] /= np.linalg.norm(eef[3:7])
    return {"image": np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8), "eef_pos": eef}


# ---- the official request seed -------------------------------------------------------------------------------


def test_request_seed_hashes_like_the_official_clients():
    assert (
        official_request_seed({"task_id": "x", "state": np.arange(3.0), "language": "héllo wörld"})
        == 1702613092
    )
    image = Image.fromarray(np.full((4, 5, 3), 7, np.uint8))
    assert (
        official_request_seed({"b": image, "a": {3, 1, 2}, "n": np.zeros((2, 2), np.float32)}) == 3022836265
    )
    assert official_request_seed({"task_id": "x"}, max_bytes=0) == int(
        "104307356769141497154362583301401103199744843325683543632675128172259630350482"
    )
    with pytest.raises(TypeError, match="cannot hash a object"):
        official_request_seed({"x": object()})


@pytest.mark.parametrize(
    "client, obs, instruction, seed",
    [
        (lambda: LiberoClient(None), libero_obs, "put the bowl on the PLATE", 361539884),
        (lambda: CalvinClient(None, "calvin_abcd_orig"), calvin_obs, "open the Drawer", 4192309989),
        (
            lambda: SimplerEnvClient(None, "fractal_delta"),
            simpler_obs,
            "put the spoon on the towel",
            # 640x480 -> 320x256 with PIL's default filter, as the official client resizes (the same pixels from
            # the Pillow 11.3, 12.0 and 13.0 wheels, on Python 3.11 and 3.12).
            998254299,
        ),
        (
            lambda: SimplerEnvClient(None, "bridge_delta"),
            simpler_obs,
            "put the spoon on the towel",
            3339409499,
        ),
    ],
)
def test_requests_carry_the_official_seed(client, obs, instruction, seed):
    request, _ = client().requests(obs(), instruction)
    assert official_request_seed(request) == seed


# ---- conventions ---------------------------------------------------------------------------------------------


def test_quaternion_to_axis_angle_as_robosuite():
    assert np.allclose(
        quaternion_to_axis_angle([0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)]), [0, 0, np.pi / 2]
    )
    assert np.allclose(quaternion_to_axis_angle([0, 0, 0, 1]), 0)
    # No sign flip: w < 0 gives an angle above pi, as the training data holds it.
    assert np.allclose(
        quaternion_to_axis_angle([0, 0, -np.sin(np.pi / 4), -np.cos(np.pi / 4)]), [0, 0, -1.5 * np.pi]
    )


def test_libero_conventions():
    policy = RecordingPolicy()
    client = LiberoClient(policy)
    obs = libero_obs()
    actions = [client.act(obs, "put the bowl on the PLATE") for _ in range(25)]
    assert len(policy.observations) == 3, "a chunk every 10 steps"
    sent = policy.observations[0]
    assert np.array_equal(sent["images"]["base"], obs["agentview_image"][::-1, ::-1])
    assert np.array_equal(sent["images"]["wrist_left"], obs["robot0_eye_in_hand_image"][::-1, ::-1])
    assert sent["state"].shape == (32,) and not sent["state"][8:].any()
    assert np.allclose(sent["state"][:3], [0.1, 0.2, 0.3]) and np.allclose(sent["state"][6:8], [0.04, -0.04])
    assert sent["instruction"] == "Put the bowl on the plate." and sent["robot_type"] == "libero_all"
    assert sent["seed"] == 361539884
    assert actions[0][0] == 50 and actions[9][0] == 59 and actions[10][0] == 150, "all 10 steps of each chunk"
    client.reset()
    client.act(libero_obs(seed=1), "put the bowl on the plate")
    assert policy.observations[-1]["seed"] != sent["seed"]


@pytest.mark.parametrize("length, steps_per_chunk, queries", [(6, None, 5), (6, 4, 7), (30, None, 1)])
def test_clients_execute_the_chunk_the_server_sends(length, steps_per_chunk, queries):
    """The chunk length is the server's: a client executes each chunk whole (the official clients' convention),
    whatever its T, or only its first `steps_per_chunk` actions."""
    policy = RecordingPolicy(length=length)
    client = LiberoClient(policy, steps_per_chunk=steps_per_chunk)
    actions = [client.act(libero_obs(), "pick up the bowl") for _ in range(25)]
    assert len(policy.observations) == queries
    executed = steps_per_chunk or length
    expected = [50 + i for i in range(executed)] + [150]  # chunk k holds 100·k - 50 + step
    assert [a[0] for a in actions[: executed + 1]] == expected[:25]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_clients_refuse_a_bad_steps_per_chunk(bad):
    with pytest.raises(ValueError, match="steps_per_chunk must be an int >= 1 or None"):
        LiberoClient(RecordingPolicy(), steps_per_chunk=bad)


def test_calvin_conventions():
    policy = RecordingPolicy()
    client = CalvinClient(policy, robot_type="calvin_abcd_orig")
    obs = calvin_obs()
    first = client.act(obs, "open the Drawer")
    sent = policy.observations[0]
    assert sent["images"]["base"].shape == (200, 200, 3) and sent["images"]["wrist_left"].shape == (84, 84, 3)
    expected = center_crop_resize(Image.fromarray(obs["rgb_obs"]["rgb_gripper"]), 0.95)
    assert np.array_equal(sent["images"]["wrist_left"], np.asarray(expected))
    assert np.allclose(sent["state"][:7], np.arange(7) / 10) and sent["state"].shape == (32,)
    assert sent["instruction"] == "Open the drawer." and sent["robot_type"] == "calvin_abcd_orig"
    assert first[6] == 1.0 and first[0] == 50.0
    policy.infer = lambda observation: {"actions": np.zeros((10, 7), np.float32)}
    client.reset()
    assert client.act(obs, "open the drawer")[6] == -1.0, (
        "a gripper action of exactly 0 closes (sign > 0 opens)"
    )
    with pytest.raises(ValueError, match="CALVIN robot_type"):
        CalvinClient(policy, robot_type="libero_all")


# Tasks as a caller may give them -> the instruction the official clients send (str.capitalize for
# LIBERO/CALVIN: first letter upper, the rest lowered; SimplerEnv: only the first letter upper), "." appended
# unconditionally.
CAPITALIZED = {
    "put the bowl on the plate.": "Put the bowl on the plate..",
    "open the drawer  ": "Open the drawer  .",
    "pick up the RED Cube": "Pick up the red cube.",
}
FIRST_LETTER_UPPER = {
    "put the bowl on the plate.": "Put the bowl on the plate..",
    "open the drawer  ": "Open the drawer  .",
    "pick up the RED Cube": "Pick up the RED Cube.",
}


@pytest.mark.parametrize(
    "robot_type, make_client, obs, expected",
    [
        ("libero_all", LiberoClient, libero_obs, CAPITALIZED),
        ("calvin_abcd_orig", lambda p: CalvinClient(p, "calvin_abcd_orig"), calvin_obs, CAPITALIZED),
        ("calvin_abc_orig", lambda p: CalvinClient(p, "calvin_abc_orig"), calvin_obs, CAPITALIZED),
        ("bridge_delta", lambda p: SimplerEnvClient(p, "bridge_delta"), simpler_obs, FIRST_LETTER_UPPER),
        ("fractal_delta", lambda p: SimplerEnvClient(p, "fractal_delta"), simpler_obs, FIRST_LETTER_UPPER),
    ],
    ids=["libero_all", "calvin_abcd_orig", "calvin_abc_orig", "bridge_delta", "fractal_delta"],
)
def test_instructions_are_written_as_the_official_clients_write_them(robot_type, make_client, obs, expected):
    """`official_instruction` (also what the server makes of an openpi prompt) and each benchmark client send
    the official text: a final "." is kept and another appended (".."), trailing spaces stay before the ".",
    and capitals inside are lowered for LIBERO/CALVIN only. The text the two-view clients hash into the seed
    is the same without the appended "."."""
    for task, instruction in expected.items():
        assert official_instruction(robot_type, task) == instruction, task
        policy = RecordingPolicy(length=PUBLISHED_ROBOT_TYPES[robot_type]["chunk_length"])
        client = make_client(policy)
        client.act(obs(), task)
        assert policy.observations[-1]["instruction"] == instruction, task
        if robot_type not in ("bridge_delta", "fractal_delta"):
            assert client.requests(obs(), task)[0]["language"] == instruction[:-1], task


def test_center_crop_keeps_int_of_the_scaled_side():
    image = Image.fromarray(np.arange(84 * 84 * 3, dtype=np.uint8).reshape(84, 84, 3))
    # int(84 * 0.95) = 79 pixels are kept (rounding would keep 80), offset (84 - 79) // 2 = 2.
    cropped = center_crop_resize(image)
    assert cropped.size == (84, 84)
    assert np.array_equal(
        np.asarray(cropped), np.asarray(image.crop((2, 2, 81, 81)).resize((84, 84), Image.BILINEAR))
    )


@pytest.mark.parametrize(
    "robot_type, title, size", [("bridge_delta", "Base", (256, 256)), ("fractal_delta", "Ego", (256, 320))]
)
def test_simplerenv_conventions(robot_type, title, size):
    policy = RecordingPolicy(length=4)
    client = SimplerEnvClient(policy, robot_type)
    for _ in range(5):
        client.act(simpler_obs(), "put the spoon on the towel")
    assert len(policy.observations) == 2, "a chunk every 4 steps"
    sent = policy.observations[0]
    assert list(sent["images"]) == ["base"] and sent["images"]["base"].shape == (*size, 3)
    assert sent["instruction"] == "Put the spoon on the towel." and sent["state"].shape == (8,)
    request, _ = client.requests(simpler_obs(), "put the spoon on the towel")
    assert request["language"] == format_prompt("Put the spoon on the towel.", [title])
    assert single_view_prompt(title, "x") == format_prompt("x", [title])


def test_simplerenv_action_postprocessing():
    action = np.array([0.01, -0.02, 0.03, 0.3, -0.2, 1.1, 0.7])
    bridge = SimplerEnvClient(None, "bridge_delta").postprocess(action)
    fractal = SimplerEnvClient(None, "fractal_delta").postprocess(action)

    # The same rotation as roll-pitch-yaw (static x-y-z: Rz·Ry·Rx) and as axis-angle (Rodrigues' formula).
    def rotation(axis, angle):
        c, s = np.cos(angle), np.sin(angle)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        return np.eye(3) + s * k + (1 - c) * k @ k

    roll, pitch, yaw = action[3:6]
    expected = rotation([0, 0, 1], yaw) @ rotation([0, 1, 0], pitch) @ rotation([1, 0, 0], roll)
    angle = np.linalg.norm(bridge[3:6])
    assert np.allclose(rotation(bridge[3:6] / angle, angle), expected)
    assert bridge[6] == 1.0 and fractal[6] == pytest.approx(-(2 * 0.7 - 1))


def test_libero_client_against_the_real_server():
    from xr0.deploy.policy import load_policy
    from xr0.deploy.server import PolicyServer
    from xr0_client import XR0Client

    server = PolicyServer(
        load_policy(str(REPO_ROOT / "fixtures" / "tiny-xr0"), "cpu", torch.float32), port=0
    ).start_in_thread()
    try:
        with XR0Client("127.0.0.1", server.port) as policy:
            client = LiberoClient(policy)
            actions = [client.act(libero_obs(), "pick up the black bowl") for _ in range(12)]
    finally:
        server.stop()
    assert all(a.shape == (7,) and np.isfinite(a).all() for a in actions)


def with_fake_calvin() -> dict:
    """The environment of a runner started with `--environment fake_calvin:...`: this folder on its PYTHONPATH,
    before whatever was there (so the runner imports the same xr0_client as these tests)."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def test_the_calvin_runner_scores_chain_lengths_and_resumes(tmp_path):
    """`xr0-eval-calvin` as users run it, against the tiny checkpoint's server and a scripted CALVIN whose chain i
    completes i % 6 subtasks: the results file holds each chain's length, the average and the in-a-row rates; a
    rerun resumes without running a chain twice; a run of the other split (robot type) with the same file runs
    its own chains, although they have the same task and indices as the recorded ones."""
    from xr0.deploy.policy import load_policy
    from xr0.deploy.server import PolicyServer

    policy = load_policy(str(REPO_ROOT / "fixtures" / "tiny-xr0"), "cpu", torch.float32)
    # The tiny checkpoint knows CALVIN's views and T, not its action statistics: give it some to serve it.
    std = np.tile(np.r_[np.full(7, 0.1), np.zeros(25)], (10, 1))
    for split in ("calvin_abc_orig", "calvin_abcd_orig"):
        policy.processor.register_robot_type(split, action_mean=np.zeros((10, 32)), action_std=std)
    server = PolicyServer(policy, port=0).start_in_thread()
    command = [
        str(Path(sys.executable).with_name("xr0-eval-calvin")),
        *(
            "--port",
            str(server.port),
            "--environment",
            "fake_calvin:ScriptedCalvin",
            "--dataset_path",
            tmp_path,
        ),
        *(
            "--sequences",
            "3",
            "--max_steps",
            "4",
            "--video",
            "none",
            "--results_file",
            tmp_path / "calvin.json",
        ),
    ]
    environment = with_fake_calvin()
    try:
        first = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
        second = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
        after_second = (tmp_path / "calvin.json").read_text()
        other_split = subprocess.run(
            [*command, "--robot_type", "calvin_abcd_orig"],
            capture_output=True,
            text=True,
            env=environment,
            timeout=300,
        )
    finally:
        server.stop()
    assert first.returncode == 0, first.stderr
    results = json.loads(after_second)
    assert [e["chain_length"] for e in results["episodes"]] == [0, 1, 2]
    # chain 0 fails its first subtask after 4 steps; chain 1 takes 3 + 4; chain 2 takes 3 + 3 + 4
    assert [e["steps"] for e in results["episodes"]] == [4, 7, 10]
    split = results["suites"]["calvin_abc_orig"]
    assert split["average_length"] == pytest.approx(1.0)
    assert split["completed_in_a_row"] == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0, 0.0])
    assert "calvin_abc_orig       3    1.000   66.7%   33.3%    0.0%    0.0%    0.0%" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "resuming, 3 episodes already recorded" in second.stderr
    actions = (tmp_path / "actions.jsonl").read_text().splitlines()
    assert len(actions) == 21 + 21, "the rerun ran nothing again; the other split ran all of its chains"
    assert other_split.returncode == 0, other_split.stderr
    results = json.loads((tmp_path / "calvin.json").read_text())
    assert [(e["suite"], e["episode"]) for e in results["episodes"]] == [
        (split, index) for split in ("calvin_abc_orig", "calvin_abcd_orig") for index in range(3)
    ]
    assert results["suites"]["calvin_abcd_orig"]["average_length"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("--port", "1"), "xr0-eval-calvin: --dataset_path is needed"),
        (("--port", "1", "--dataset_path", "x"), "xr0-eval-calvin: CALVIN is not installed"),
        (("--port", "1", "--environment", "fake_calvin"), "--environment must be module:callable"),
    ],
)
def test_the_calvin_runner_says_what_is_missing(arguments, message):
    finished = subprocess.run(
        [str(Path(sys.executable).with_name("xr0-eval-calvin")), *arguments],
        capture_output=True,
        text=True,
        env=with_fake_calvin(),
        timeout=120,
    )
    assert finished.returncode != 0 and message in finished.stderr


@pytest.mark.parametrize("chunk_length", ["ten", 0, None, 2.5])
def test_a_runner_refuses_a_server_whose_metadata_names_no_usable_chunk_length(tmp_path, chunk_length):
    """The chunk length comes from the server's metadata, across a process boundary: a runner checks it before
    executing anything with it."""
    import threading

    from websockets.sync.server import serve

    from xr0_common.protocol import pack

    metadata = {"robot_types": {"calvin_abc_orig": {"chunk_length": chunk_length}}}
    server = serve(lambda connection: connection.send(pack(metadata)), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        finished = subprocess.run(
            [
                str(Path(sys.executable).with_name("xr0-eval-calvin")),
                *("--port", str(server.socket.getsockname()[1]), "--video", "none"),
                *("--environment", "fake_calvin:ScriptedCalvin", "--dataset_path", str(tmp_path)),
                *("--results_file", str(tmp_path / "calvin.json")),
            ],
            capture_output=True,
            text=True,
            env=with_fake_calvin(),
            timeout=120,
        )
    finally:
        server.shutdown()
    assert finished.returncode != 0
    assert "robot_types.calvin_abc_orig.chunk_length must be an int >= 1" in finished.stderr
    assert not (tmp_path / "calvin.json").exists()
