"""Writes a small LeRobot v3.0 dataset with LeRobot's own `LeRobotDataset.create`, in the feature layout of
LeRobot's Meta-World environment (`observation.image`, a 4-D `observation.state`, 4-D actions), so that a policy
trained on it runs in `lerobot-eval --env.type=metaworld`. The camera is stored as images or as a video.

    python lerobot_data.py OUTPUT_DIR [--episodes 2] [--frames 24] [--side 64] [--video]
"""

import argparse
import importlib.util

import numpy as np
from lerobot.datasets import video_utils
from lerobot.datasets.lerobot_dataset import LeRobotDataset

TASKS = ("push the puck to the goal", "reach the red target")


def decodes_video() -> bool:
    """Whether LeRobot can decode a video dataset here: with torchcodec, its own PyAV decoder (lerobot >= 0.5), or
    torchvision's VideoReader (lerobot 0.4's PyAV path, gone from torchvision 0.29)."""
    import torchvision

    return (
        importlib.util.find_spec("torchcodec") is not None
        or hasattr(video_utils, "decode_video_frames_pyav")
        or hasattr(torchvision.io, "VideoReader")
    )


def write_dataset(
    root,
    episodes: int = 2,
    frames: int = 24,
    side: int = 64,
    seed: int = 0,
    video: bool = False,
    repo_id: str = "local/xr0_plugin_test",
) -> LeRobotDataset:
    rng = np.random.default_rng(seed)
    features = {
        "observation.image": {
            "dtype": "video" if video else "image",
            "shape": (side, side, 3),
            "names": ["height", "width", "channels"],
        },
        "observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]},
        "action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "grip"]},
    }
    dataset = LeRobotDataset.create(
        repo_id=repo_id, fps=80, features=features, root=root, robot_type="sawyer", use_videos=video
    )
    for episode in range(episodes):
        state = rng.uniform(-0.5, 0.5, 4).astype(np.float32)
        for _ in range(frames):
            action = rng.uniform(-1, 1, 4).astype(np.float32)
            image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            dataset.add_frame(
                {
                    "observation.image": image,
                    "observation.state": state,
                    "action": action,
                    "task": TASKS[episode % len(TASKS)],
                }
            )
            state = (state + 0.01 * action).astype(np.float32)
        dataset.save_episode()
    dataset.finalize()
    return dataset


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--video", action="store_true")
    args = parser.parse_args()
    write_dataset(args.output, args.episodes, args.frames, args.side, video=args.video)
