"""Writes a small LeRobot v3.0 dataset with LeRobot's own `LeRobotDataset.create`, in the feature layout of
LeRobot's Meta-World environment (`observation.image`, a 4-D `observation.state`, 4-D actions), so that a policy
trained on it runs in `lerobot-eval --env.type=metaworld`.

    python lerobot_data.py OUTPUT_DIR [--episodes 2] [--frames 24] [--side 64]
"""

import argparse

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

TASKS = ("push the puck to the goal", "reach the red target")


def write_dataset(root, episodes: int = 2, frames: int = 24, side: int = 64, seed: int = 0) -> LeRobotDataset:
    rng = np.random.default_rng(seed)
    features = {
        "observation.image": {
            "dtype": "image",
            "shape": (side, side, 3),
            "names": ["height", "width", "channels"],
        },
        "observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]},
        "action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "grip"]},
    }
    dataset = LeRobotDataset.create(
        repo_id="local/xr0_plugin_test", fps=80, features=features, root=root, robot_type="sawyer"
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
    args = parser.parse_args()
    write_dataset(args.output, args.episodes, args.frames, args.side)
