"""Datasets written by LeRobot itself (an image and a video camera) and a policy lerobot-train saved, shared by the
plugin's tests. Run in a venv with lerobot installed (see lerobot_plugin/test.sh)."""

import pytest
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot_data import decodes_video, write_dataset
from support import CHUNK, EXECUTED, TINY, run_script, train_arguments


def chunked(written) -> LeRobotDataset:
    """The dataset as lerobot-train reads it: each frame with its chunk of T actions and their padding flags."""
    steps = [i / written.fps for i in range(CHUNK)]
    return LeRobotDataset(written.repo_id, root=written.root, delta_timestamps={"action": steps})


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    return chunked(write_dataset(tmp_path_factory.mktemp("data") / "images", episodes=2, frames=24, side=64))


@pytest.fixture(scope="session")
def video_dataset(tmp_path_factory):
    if not decodes_video():
        pytest.skip(
            "this LeRobot cannot decode videos here (lerobot 0.4 decodes through torchcodec or torchvision's "
            "VideoReader; neither exists beside torch 2.14)"
        )
    root = tmp_path_factory.mktemp("data") / "video"
    return chunked(write_dataset(root, episodes=2, frames=24, side=64, video=True, repo_id="local/xr0_video"))


@pytest.fixture(scope="session")
def trained(dataset, tmp_path_factory):
    """lerobot-train --policy.type=xr0 from the tiny XR0 checkpoint, two steps: the run directory."""
    output = tmp_path_factory.mktemp("train") / "run"
    log = run_script(
        "lerobot-train",
        "--policy.type=xr0",
        f"--policy.checkpoint={TINY}",
        f"--policy.chunk_size={CHUNK}",
        f"--policy.n_action_steps={EXECUTED}",
        *train_arguments(dataset, output, steps=2),
    )
    assert "step:2" in log and "loss:" in log, log[-3000:]
    return output
