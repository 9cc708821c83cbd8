"""Benchmark clients: observation conventions on synthetic simulator observations, and a real server round trip."""

import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "eval"))
sys.path.insert(0, str(REPO_ROOT / "deploy"))
from clients import (CalvinClient, LiberoClient, SimplerEnvClient, center_crop_resize, format_instruction,  # noqa: E402
                     quaternion_to_axis_angle)


class RecordingPolicy:
    def __init__(self, dims=7, length=30):
        self.observations = []
        self.dims, self.length = dims, length

    def infer(self, observation):
        self.observations.append(observation)
        k = len(self.observations)
        return {"actions": np.tile(np.arange(self.length, dtype=np.float32)[:, None] + 100 * k, (1, self.dims)) - 50}


def libero_obs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "agentview_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "robot0_eye_in_hand_image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "robot0_eef_pos": np.array([0.1, 0.2, 0.3]),
        "robot0_eef_quat": np.array([0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)]),  # 90 degrees about z
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
    }


def test_quaternion_to_axis_angle():
    assert np.allclose(quaternion_to_axis_angle([0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)]), [0, 0, np.pi / 2])
    assert np.allclose(quaternion_to_axis_angle([0, 0, 0, 1]), 0)
    assert np.allclose(np.abs(quaternion_to_axis_angle([-1, 0, 0, 0])), [np.pi, 0, 0])  # 180 degrees about x (either sign)
    assert np.allclose(quaternion_to_axis_angle([0, 0, -np.sin(np.pi / 4), -np.cos(np.pi / 4)]), [0, 0, np.pi / 2])


def test_libero_conventions():
    policy = RecordingPolicy()
    client = LiberoClient(policy)
    obs = libero_obs()
    actions = [client.act(obs, "put the bowl on the plate") for _ in range(25)]
    assert len(policy.observations) == 3, "a chunk every 10 steps"
    sent = policy.observations[0]
    assert np.array_equal(sent["images"]["base"], obs["agentview_image"][::-1, ::-1])
    assert np.array_equal(sent["images"]["wrist"], obs["robot0_eye_in_hand_image"][::-1, ::-1])
    assert np.allclose(sent["state"], [0.1, 0.2, 0.3, 0, 0, np.pi / 2, 0.04, -0.04])
    assert sent["instruction"] == "Put the bowl on the plate." and sent["robot_type"] == "libero_all"
    assert actions[0][0] == 50 and actions[9][0] == 59 and actions[10][0] == 150, "first 10 steps of each chunk"
    assert sent["seed"] == policy.observations[1]["seed"], "same observation, same seed"
    client.reset()
    client.act(libero_obs(seed=1), "put the bowl on the plate")
    assert policy.observations[-1]["seed"] != sent["seed"]
    assert format_instruction("open the drawer.") == "Open the drawer."


def test_calvin_conventions():
    policy = RecordingPolicy()
    client = CalvinClient(policy, robot_type="calvin_abcd_orig")
    rng = np.random.default_rng(0)
    obs = {"rgb_obs": {"rgb_static": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                       "rgb_gripper": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)},
           "robot_obs": np.arange(15, dtype=np.float64)}
    first = client.act(obs, "open the drawer")
    sent = policy.observations[0]
    assert sent["images"]["base"].shape == (200, 200, 3) and sent["images"]["wrist"].shape == (84, 84, 3)
    assert np.array_equal(sent["images"]["base"], center_crop_resize(obs["rgb_obs"]["rgb_static"], 0.95))
    assert sent["state"].tolist() == list(range(7)) and sent["robot_type"] == "calvin_abcd_orig"
    assert first[6] == 1.0 and first[0] == 50.0
    policy.infer = lambda observation: {"actions": -np.ones((30, 7), np.float32)}
    client.reset()
    assert client.act(obs, "open the drawer")[6] == -1.0
    with pytest.raises(ValueError, match="CALVIN robot_type"):
        CalvinClient(policy, robot_type="libero_all")


def test_center_crop_resize_zooms_in():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:2] = 255  # a border stripe that the 0.95 crop removes
    assert center_crop_resize(image).shape == (100, 100, 3)
    assert center_crop_resize(image)[:1].max() < 255


@pytest.mark.parametrize("robot_type, view, size", [("bridge_delta", "base", (256, 256)), ("fractal_delta", "ego", (256, 320))])
def test_simplerenv_conventions(robot_type, view, size):
    policy = RecordingPolicy()
    client = SimplerEnvClient(policy, robot_type)
    obs = {"image": np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8), "state": np.ones(8)}
    for _ in range(5):
        client.act(obs, "put the spoon on the towel")
    assert len(policy.observations) == 2, "a chunk every 4 steps"
    sent = policy.observations[0]
    assert list(sent["images"]) == [view] and sent["images"][view].shape == (*size, 3)


def test_libero_client_against_the_real_server():
    from client import XR0Client
    from server import PolicyServer, load_policy

    server = PolicyServer(load_policy(str(REPO_ROOT / "fixtures" / "tiny-xr0"), "cpu", torch.float32), port=0).start_in_thread()
    try:
        with XR0Client("127.0.0.1", server.port) as policy:
            client = LiberoClient(policy)
            actions = [client.act(libero_obs(), "pick up the black bowl") for _ in range(12)]
    finally:
        server.stop()
    assert all(a.shape == (7,) and np.isfinite(a).all() for a in actions)
