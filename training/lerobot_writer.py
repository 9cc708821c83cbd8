"""Write robot episodes as a LeRobot v3.0 dataset (the layout `xr0.training.data.LeRobotDataset` and LeRobot read).

    writer = LeRobotWriter(root, fps=30, robot_type="planar_reach", state_dim=4, action_dim=2,
                           cameras={"top": (128, 128), "wrist": (128, 128)})
    writer.add_episode(states, actions, {"top": frames, "wrist": frames}, task="reach the red circle")
    writer.finish()

Cameras are stored as PNG images inside the parquet file (feature dtype `image`, struct {bytes, path}), which
needs no video codec and is lossless; one data file and one episodes file (small datasets). `meta/stats.json`
holds mean/std/min/max of the state and action, as LeRobot writes it.
"""

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class LeRobotWriter:
    def __init__(
        self,
        root,
        fps: int,
        robot_type: str,
        state_dim: int,
        action_dim: int,
        cameras: dict,
        state_names=None,
        action_names=None,
    ):
        """cameras: {name: (height, width)}; each becomes the feature `observation.images.<name>`."""
        self.root = Path(root)
        if (self.root / "meta" / "info.json").exists():
            raise FileExistsError(f"{self.root} already holds a LeRobot dataset")
        self.fps, self.robot_type = fps, robot_type
        self.state_dim, self.action_dim, self.cameras = state_dim, action_dim, dict(cameras)
        self.state_names, self.action_names = state_names, action_names
        self.tasks: dict = {}  # task -> task_index
        self.rows = {"states": [], "actions": [], "episode": [], "frame": [], "task": []}
        self.images = {camera: [] for camera in self.cameras}
        self.episode_tasks, self.episode_lengths = [], []

    def add_episode(self, states, actions, images: dict, task: str) -> None:
        """states (L, state_dim), actions (L, action_dim), images {camera: L arrays (H, W, 3) uint8}."""
        states = np.asarray(states, dtype=np.float32)
        actions = np.asarray(actions, dtype=np.float32)
        length = len(states)
        if length == 0:
            raise ValueError("an episode needs at least one frame")
        if states.shape != (length, self.state_dim) or actions.shape != (length, self.action_dim):
            raise ValueError(
                f"states {states.shape} and actions {actions.shape} must be ({length}, {self.state_dim}) and "
                f"({length}, {self.action_dim})"
            )
        if not (np.isfinite(states).all() and np.isfinite(actions).all()):
            raise ValueError("states and actions must be finite")
        if sorted(images) != sorted(self.cameras):
            raise ValueError(f"images must hold the cameras {sorted(self.cameras)}, got {sorted(images)}")
        for camera, frames in images.items():
            shape = (*self.cameras[camera], 3)
            if len(frames) != length or any(
                np.asarray(f).shape != shape or np.asarray(f).dtype != np.uint8 for f in frames
            ):
                raise ValueError(f"images[{camera!r}] must be {length} uint8 arrays of shape {shape}")
            self.images[camera] += [_png(np.asarray(f)) for f in frames]
        task_index = self.tasks.setdefault(task, len(self.tasks))
        episode = len(self.episode_lengths)
        self.rows["states"].append(states)
        self.rows["actions"].append(actions)
        self.rows["episode"].append(np.full(length, episode))
        self.rows["frame"].append(np.arange(length))
        self.rows["task"].append(np.full(length, task_index))
        self.episode_tasks.append(task)
        self.episode_lengths.append(length)

    def finish(self) -> Path:
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.episode_lengths:
            raise ValueError("no episodes to write")
        states, actions = np.concatenate(self.rows["states"]), np.concatenate(self.rows["actions"])
        frames = np.concatenate(self.rows["frame"])
        total = len(states)
        for folder in ("data/chunk-000", "meta/episodes/chunk-000"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        columns = {
            "observation.state": pa.array(list(states), pa.list_(pa.float32(), self.state_dim)),
            "action": pa.array(list(actions), pa.list_(pa.float32(), self.action_dim)),
            "timestamp": pa.array(frames / self.fps, pa.float32()),
            "frame_index": pa.array(frames, pa.int64()),
            "episode_index": pa.array(np.concatenate(self.rows["episode"]), pa.int64()),
            "index": pa.array(np.arange(total), pa.int64()),
            "task_index": pa.array(np.concatenate(self.rows["task"]), pa.int64()),
        }
        for camera, pngs in self.images.items():
            columns[f"observation.images.{camera}"] = pa.array(
                [{"bytes": data, "path": None} for data in pngs], image_type
            )
        pq.write_table(pa.table(columns), self.root / DATA_PATH.format(chunk_index=0, file_index=0))

        lengths = np.asarray(self.episode_lengths)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        pq.write_table(
            pa.table(
                {
                    "episode_index": np.arange(len(lengths)),
                    "tasks": [[task] for task in self.episode_tasks],
                    "length": lengths,
                    "dataset_from_index": starts,
                    "dataset_to_index": starts + lengths,
                    "data/chunk_index": np.zeros(len(lengths), np.int64),
                    "data/file_index": np.zeros(len(lengths), np.int64),
                }
            ),
            self.root / "meta" / "episodes" / "chunk-000" / "file-000.parquet",
        )
        tasks = pd.DataFrame(
            {"task_index": list(self.tasks.values())}, index=pd.Index(list(self.tasks), name="task")
        )
        pq.write_table(pa.Table.from_pandas(tasks), self.root / "meta" / "tasks.parquet")

        def stats(values):
            return {
                "mean": values.mean(0).tolist(),
                "std": values.std(0).tolist(),
                "min": values.min(0).tolist(),
                "max": values.max(0).tolist(),
                "count": [len(values)],
            }

        (self.root / "meta" / "stats.json").write_text(
            json.dumps({"observation.state": stats(states), "action": stats(actions)}, indent=2)
        )
        scalar = {"shape": [1], "names": None}
        features = {
            "observation.state": {
                "dtype": "float32",
                "shape": [self.state_dim],
                "names": self.state_names,
            },
            "action": {"dtype": "float32", "shape": [self.action_dim], "names": self.action_names},
            **{
                f"observation.images.{camera}": {
                    "dtype": "image",
                    "shape": [height, width, 3],
                    "names": ["height", "width", "channel"],
                }
                for camera, (height, width) in self.cameras.items()
            },
            "timestamp": {"dtype": "float32", **scalar},
            "frame_index": {"dtype": "int64", **scalar},
            "episode_index": {"dtype": "int64", **scalar},
            "index": {"dtype": "int64", **scalar},
            "task_index": {"dtype": "int64", **scalar},
        }
        info = {
            "codebase_version": "v3.0",
            "robot_type": self.robot_type,
            "fps": self.fps,
            "total_episodes": len(lengths),
            "total_frames": total,
            "total_tasks": len(self.tasks),
            "chunks_size": 1000,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500,
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "splits": {"train": f"0:{len(lengths)}"},
            "features": features,
        }
        (self.root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
        return self.root
