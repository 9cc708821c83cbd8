"""Robot datasets for fine-tuning XR0: readers, action-chunk samples, statistics and the batch collator.

Two on-disk formats are read, offline:

* LeRobot dataset v3.0 directories (`meta/info.json`, `meta/tasks.parquet`, `meta/episodes/...`,
  `data/chunk-XXX/file-XXX.parquet`, and `videos/<camera>/chunk-XXX/file-XXX.mp4` when cameras are videos).
  Cameras stored as images in the parquet files are decoded with PIL; video cameras need PyAV (`pip install av`).
* A simple JSONL format: a directory holding `frames.jsonl`, one JSON object per frame,

      {"episode_index": 0, "frame_index": 0, "instruction": "pick up the cup",
       "state": [..floats..], "action": [..floats..], "images": {"front": "images/ep0/000.png", ...}}

  with image paths relative to the directory. Frames of an episode must be consecutive, in order.

Each sample is one frame: its camera images `{camera: uint8 (H, W, 3)}`, the instruction, the raw state (D_s,),
the next T actions (T, D_a) from this frame on, padded with the episode's last action, and `action_is_pad` (T,).

Vision-language co-training reads `conversations.jsonl` (one {"images": [paths], "prompt": str, "answer": str}
per line) and `MixedDataset` interleaves it with the robot frames (report: 1 VL sample per 6 robot samples).
"""

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

LEROBOT_IMAGE_PREFIX = "observation.images."
VIDEO_SEGMENTS_CACHED = 16  # decoded episodes kept per dataset: random access without decoding whole files


class RobotDataset(Dataset):
    """Frames with action chunks. Subclasses provide `_frame_images(index)` and fill the arrays below."""

    def __init__(self, action_length: int):
        self.action_length = action_length
        self.states: np.ndarray  # (N, D_s) float32
        self.actions: np.ndarray  # (N, D_a) float32
        self.episodes: np.ndarray  # (N,) int
        self.instructions: list  # (N,) str
        self.cameras: list  # camera names

    def _finish(self) -> None:
        """Precompute where each frame's episode ends, after the subclass filled the arrays."""
        if len(self.actions) == 0:
            raise ValueError("the dataset holds no frames")
        if self.actions.shape[1] > 32 or self.states.shape[1] > 32:
            raise ValueError(
                f"actions ({self.actions.shape[1]}) and states ({self.states.shape[1]}) must be at most 32 wide"
            )
        boundaries = np.flatnonzero(np.diff(self.episodes)) + 1
        ends = np.append(boundaries, len(self.episodes))
        starts = np.insert(boundaries, 0, 0)
        if len(np.unique(self.episodes[starts])) != len(starts):
            raise ValueError("frames of each episode must be consecutive")
        self.episode_end = np.repeat(ends, ends - starts)  # (N,) exclusive end of each frame's episode

    def __len__(self) -> int:
        return len(self.actions)

    def __getitem__(self, index: int) -> dict:
        steps = index + np.arange(self.action_length)
        is_pad = steps >= self.episode_end[index]
        chunk = self.actions[np.minimum(steps, self.episode_end[index] - 1)]
        return {
            "images": self._frame_images(index),
            "instruction": self.instructions[index],
            "state": self.states[index],
            "actions": chunk,  # (T, D_a)
            "action_is_pad": is_pad,  # (T,)
        }

    def _frame_images(self, index: int) -> dict:
        raise NotImplementedError


class JsonlRobotDataset(RobotDataset):
    def __init__(self, root, action_length: int):
        super().__init__(action_length)
        self.root = Path(root)
        path = self.root / "frames.jsonl"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found (JSONL datasets hold one frame per line in frames.jsonl)"
            )
        frames = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for i, frame in enumerate(frames):
            missing = {"episode_index", "instruction", "state", "action", "images"} - set(frame)
            if missing:
                raise ValueError(f"{path}:{i + 1}: missing fields {sorted(missing)}")
        self.states = np.asarray([f["state"] for f in frames], dtype=np.float32)
        self.actions = np.asarray([f["action"] for f in frames], dtype=np.float32)
        self.episodes = np.asarray([f["episode_index"] for f in frames])
        self.instructions = [f["instruction"] for f in frames]
        self.image_paths = [f["images"] for f in frames]
        self.cameras = list(frames[0]["images"])
        self._finish()

    def _frame_images(self, index: int) -> dict:
        return {camera: _load_image(self.root / path) for camera, path in self.image_paths[index].items()}


class LeRobotDataset(RobotDataset):
    """A LeRobot v3.0 dataset directory, read with pyarrow (the lerobot package is not needed)."""

    def __init__(self, root, action_length: int):
        import pyarrow.parquet as pq

        super().__init__(action_length)
        self.root = Path(root)
        info = json.loads((self.root / "meta" / "info.json").read_text())
        if not str(info.get("codebase_version", "")).startswith("v3"):
            raise ValueError(
                f"{self.root}: LeRobot codebase_version {info.get('codebase_version')!r}; v3.x is supported"
            )
        self.info = info
        self.fps = info["fps"]
        features = info["features"]
        self.cameras = [
            k[len(LEROBOT_IMAGE_PREFIX) :] for k in features if k.startswith(LEROBOT_IMAGE_PREFIX)
        ]
        self.video_cameras = {
            c for c in self.cameras if features[LEROBOT_IMAGE_PREFIX + c]["dtype"] == "video"
        }

        data_files = sorted((self.root / "data").glob("chunk-*/file-*.parquet"))
        if not data_files:
            raise FileNotFoundError(f"{self.root}/data holds no chunk-*/file-*.parquet files")
        table = (
            pq.read_table(data_files[0])
            if len(data_files) == 1
            else _concat([pq.read_table(f) for f in data_files])
        )
        table = table.sort_by([("index", "ascending")])
        self.states = np.asarray(table.column("observation.state").to_pylist(), dtype=np.float32)
        self.actions = np.asarray(table.column("action").to_pylist(), dtype=np.float32)
        self.episodes = np.asarray(table.column("episode_index").to_pylist())
        self.timestamps = np.asarray(table.column("timestamp").to_pylist(), dtype=np.float64)
        tasks = pq.read_table(self.root / "meta" / "tasks.parquet").to_pandas()
        task_of_index = {int(row.task_index): str(name) for name, row in tasks.iterrows()}
        if "task" in tasks.columns:  # some writers keep the string in a column instead of the index
            task_of_index = {int(row.task_index): str(row.task) for _, row in tasks.iterrows()}
        self.instructions = [task_of_index[int(i)] for i in table.column("task_index").to_pylist()]
        self.image_columns = {
            c: table.column(LEROBOT_IMAGE_PREFIX + c).to_pylist()
            for c in self.cameras
            if c not in self.video_cameras
        }
        self.episode_meta = {}
        if self.video_cameras:
            episodes = _concat(
                [
                    pq.read_table(f)
                    for f in sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
                ]
            )
            for row in episodes.to_pylist():
                self.episode_meta[int(row["episode_index"])] = row
        self._video_frames = {}  # (video file, episode) -> decoded frames, least recently used first
        self._finish()

    def _frame_images(self, index: int) -> dict:
        images = {}
        for camera in self.cameras:
            if camera in self.video_cameras:
                images[camera] = self._video_frame(camera, index)
            else:
                cell = self.image_columns[camera][index]
                data = cell["bytes"] if isinstance(cell, dict) and cell.get("bytes") else None
                images[camera] = _load_image(io.BytesIO(data) if data else self.root / cell["path"])
        return images

    def _video_frame(self, camera: str, index: int) -> np.ndarray:
        episode = int(self.episodes[index])
        meta = self.episode_meta[episode]
        key = f"videos/{LEROBOT_IMAGE_PREFIX}{camera}"
        path = self.root / self.info["video_path"].format(
            video_key=LEROBOT_IMAGE_PREFIX + camera,
            chunk_index=meta[f"{key}/chunk_index"],
            file_index=meta[f"{key}/file_index"],
        )
        segment = (path, episode)
        frames = self._video_frames.pop(segment, None)
        if frames is None:
            frames = _decode_segment(
                path, meta[f"{key}/from_timestamp"], meta[f"{key}/to_timestamp"], self.fps
            )
        self._video_frames[segment] = frames  # most recently used last
        while len(self._video_frames) > VIDEO_SEGMENTS_CACHED:
            self._video_frames.pop(next(iter(self._video_frames)))
        position = int(round(self.timestamps[index] * self.fps))
        return frames[min(position, len(frames) - 1)]


def _concat(tables):
    import pyarrow as pa

    return pa.concat_tables(tables)


def _decode_segment(path: Path, start: float, end: float, fps: float) -> list:
    """The frames of one episode in a video holding many: seek near `start`, decode until `end` (seconds)."""
    try:
        import av
    except ImportError as error:
        raise ImportError(f"{path}: decoding LeRobot video cameras needs PyAV (`pip install av`)") from error
    half_frame = 0.5 / fps
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(int(max(start - 1.0, 0.0) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time is None or frame.time < start - half_frame:
                continue
            if frame.time >= end - half_frame:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError(f"{path}: no frames between {start:.3f} s and {end:.3f} s")
    return frames


def _load_image(source) -> np.ndarray:
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))


def open_dataset(path, action_length: int, dataset_format: str = "auto") -> RobotDataset:
    """A LeRobot v3 directory or a JSONL directory (`dataset_format` "auto" tells them apart)."""
    path = Path(path)
    if dataset_format == "auto":
        dataset_format = "lerobot" if (path / "meta" / "info.json").is_file() else "jsonl"
    if dataset_format == "lerobot":
        return LeRobotDataset(path, action_length)
    if dataset_format == "jsonl":
        return JsonlRobotDataset(path, action_length)
    raise ValueError(f"dataset_format must be 'auto', 'lerobot' or 'jsonl', got {dataset_format!r}")


class VisionLanguageDataset(Dataset):
    """`<dir>/conversations.jsonl`: {"images": ["rel/path.png", ...], "prompt": str, "answer": str} per line."""

    def __init__(self, root):
        self.root = Path(root)
        path = self.root / "conversations.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (vision-language samples, one JSON object per line)")
        self.samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for i, sample in enumerate(self.samples):
            if not isinstance(sample.get("answer"), str) or not isinstance(sample.get("prompt"), str):
                raise ValueError(f"{path}:{i + 1}: needs string `prompt` and `answer`")
        if not self.samples:
            raise ValueError(f"{path} holds no samples")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        images = [_load_image(self.root / image) for image in sample.get("images", [])]
        return {"images": images, "prompt": sample["prompt"], "answer": sample["answer"]}


class MixedDataset(Dataset):
    """Robot frames with one vision-language sample after every `robot_per_vl` of them (the VL samples cycle)."""

    def __init__(self, robot: Dataset, language: Dataset, robot_per_vl: int = 6):
        if robot_per_vl < 1:
            raise ValueError(f"robot_per_vl must be >= 1, got {robot_per_vl}")
        self.robot, self.language, self.robot_per_vl = robot, language, robot_per_vl

    def __len__(self) -> int:
        return len(self.robot) + len(self.robot) // self.robot_per_vl

    def __getitem__(self, index: int) -> dict:
        block, position = divmod(index, self.robot_per_vl + 1)
        if position == self.robot_per_vl:
            return self.language[block % len(self.language)]
        return self.robot[block * self.robot_per_vl + position]


@dataclass
class Statistics:
    action_mean: np.ndarray  # (D_a,)
    action_std: np.ndarray
    state_mean: np.ndarray  # (D_s,)
    state_std: np.ndarray


def compute_statistics(dataset: RobotDataset) -> Statistics:
    """Per-dim mean/std of actions and states over every frame (float64 accumulation)."""
    actions, states = dataset.actions.astype(np.float64), dataset.states.astype(np.float64)
    return Statistics(actions.mean(0), actions.std(0), states.mean(0), states.std(0))


def register_dataset_robot(
    processor,
    robot_type: str,
    dataset: RobotDataset,
    camera_map: Optional[dict] = None,
    normalize_state: bool = False,
) -> dict:
    """Register (or update) `robot_type` in the processor from a dataset: its action statistics, active dims and,
    for a new robot type, camera views named after the dataset's cameras. Returns {view_key: dataset camera}."""
    stats = compute_statistics(dataset)
    known = processor.robot_types.get(robot_type)
    known_views = [list(view) for view in known.views] if known is not None and known.views else None
    if camera_map is None:
        if known_views and len(known_views) == len(dataset.cameras):
            camera_map = {key: camera for (key, _), camera in zip(known_views, dataset.cameras, strict=True)}
        else:
            camera_map = {camera: camera for camera in dataset.cameras}
    unknown = set(camera_map.values()) - set(dataset.cameras)
    if unknown:
        raise ValueError(
            f"camera_map names cameras {sorted(unknown)} the dataset does not have ({dataset.cameras})"
        )
    views = known_views or [[key, key.replace("_", " ").title().replace(" ", "-")] for key in camera_map]
    if sorted(camera_map) != sorted(key for key, _ in views):
        raise ValueError(
            f"camera_map keys {sorted(camera_map)} must be the views of {robot_type!r}: {[k for k, _ in views]}"
        )
    state_stats = {"state_mean": stats.state_mean, "state_std": stats.state_std} if normalize_state else {}
    processor.register_robot_type(
        robot_type,
        views=views,
        active_action_dims=dataset.actions.shape[1],
        chunk_length=dataset.action_length,
        action_mean=stats.action_mean,
        action_std=stats.action_std,
        **state_stats,
    )
    return camera_map


class XR0Collator:
    """Samples -> a training batch for `XR0ForActionGeneration.forward`: the processor's inputs plus `actions`
    (B, T, 32) normalized with the robot type's statistics and `action_is_pad` (B, T); vision-language samples
    (those with an `answer`) go into `language_batch`."""

    def __init__(self, processor, robot_type: str, camera_map: dict):
        self.processor = processor
        self.robot_type = robot_type
        self.camera_map = camera_map

    def __call__(self, samples: list) -> dict:
        conversations = [sample for sample in samples if "answer" in sample]
        frames = [sample for sample in samples if "answer" not in sample]
        batch = self._robot_batch(frames) if frames else {}
        if conversations:
            batch["language_batch"] = dict(
                self.processor.encode_conversations(
                    [sample["images"] for sample in conversations],
                    [sample["prompt"] for sample in conversations],
                    [sample["answer"] for sample in conversations],
                )
            )
        return batch

    def _robot_batch(self, samples: list) -> dict:
        images = [
            {view: sample["images"][camera] for view, camera in self.camera_map.items()} for sample in samples
        ]
        inputs = self.processor(
            images=images,
            instruction=[sample["instruction"] for sample in samples],
            state=np.stack([sample["state"] for sample in samples]),
            robot_type=self.robot_type,
        )
        actions = np.stack([sample["actions"] for sample in samples])
        inputs["actions"] = torch.from_numpy(self.processor.normalize_action(actions, self.robot_type))
        inputs["action_is_pad"] = torch.from_numpy(np.stack([sample["action_is_pad"] for sample in samples]))
        return dict(inputs)
