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
import logging
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

logger = logging.getLogger("xr0.training")

LEROBOT_IMAGE_PREFIX = "observation.images."
# The placeholders LeRobot v3.0 documents for `data_path` / `video_path`, and the format specs they take.
PATH_TEMPLATE_FIELDS = {"video_key", "chunk_index", "file_index", "episode_chunk", "episode_index"}
_PATH_FORMAT_SPEC = re.compile(r"0?\d{0,3}d?")


# ---- inputs from disk: every path stays inside the dataset, every number is finite ---------------------------


def fill_path_template(template: str, **fields) -> str:
    """A LeRobot path template with only its documented placeholders filled (`{chunk_index:03d}`): no attribute
    or item access, no conversions, nothing else a crafted info.json could make str.format evaluate."""
    if not isinstance(template, str):
        raise ValueError(f"path template must be a string, got {type(template).__name__}")
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if (
            name not in PATH_TEMPLATE_FIELDS
            or conversion is not None
            or not _PATH_FORMAT_SPEC.fullmatch(spec or "")
        ):
            raise ValueError(
                f"path template {template[:200]!r}: placeholder {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not one of {sorted(PATH_TEMPLATE_FIELDS)} with an integer format"
            )
    return template.format(**fields)


def inside(root: Path, relative, what: str) -> Path:
    """`root / relative`, refused when it is absolute or leaves `root` (through "..", or a link)."""
    relative = str(relative)
    if not relative or Path(relative).is_absolute():
        raise ValueError(f"{what}: path {relative[:200]!r} must be relative to the dataset root {root}")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{what}: path {relative[:200]!r} leaves the dataset root {root}")
    return path


def numeric_rows(rows, what: str, where) -> np.ndarray:
    """Per-frame vectors -> (N, D) float32, refusing null, ragged, non-numeric and non-finite rows with the
    frame named (`where(i)` describes row i)."""
    if isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.dtype.kind in "iuf":
        array = rows.astype(np.float64)
        finite = np.isfinite(array).all(axis=1)
        if not finite.all():
            raise ValueError(f"{where(int(np.argmin(finite)))}: `{what}` holds NaN or infinite values")
        if array.size and np.abs(array).max() > np.finfo(np.float32).max:
            raise ValueError(
                f"{where(int(np.argmax(np.abs(array).max(axis=1))))}: `{what}` overflows float32"
            )
        return array.astype(np.float32)
    width = None
    for i, row in enumerate(rows):
        if row is None or not isinstance(row, (list, tuple, np.ndarray)):
            raise ValueError(f"{where(i)}: `{what}` is {type(row).__name__}, expected a list of numbers")
        if width is None:
            width = len(row)
        if len(row) != width or width == 0:
            raise ValueError(f"{where(i)}: `{what}` has {len(row)} values, other frames {width}")
    try:
        array = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        bad = next(i for i, row in enumerate(rows) if not all(_is_number(x) for x in row))
        raise ValueError(f"{where(bad)}: `{what}` holds something that is not a number") from None
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise ValueError(f"{where(int(np.argmin(finite)))}: `{what}` holds NaN or infinite values")
    if np.abs(array).max() > np.finfo(np.float32).max:
        raise ValueError(f"{where(int(np.argmax(np.abs(array).max(axis=1))))}: `{what}` overflows float32")
    return array.astype(np.float32)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


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
            raise ValueError(f"{getattr(self, 'root', 'the dataset')}: holds no frames")
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
        frames, lines = [], []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                frame = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: not a JSON object ({error})") from None
            if not isinstance(frame, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            missing = {"episode_index", "instruction", "state", "action", "images"} - set(frame)
            if missing:
                raise ValueError(f"{path}:{number}: missing fields {sorted(missing)}")
            frames.append(frame)
            lines.append(number)
        if not frames:
            raise ValueError(f"{path} holds no frames")

        def where(i):
            frame = frames[i]
            return f"{path}:{lines[i]} (episode {frame.get('episode_index')}, frame {frame.get('frame_index', '?')})"

        self.states = numeric_rows([f["state"] for f in frames], "state", where)
        self.actions = numeric_rows([f["action"] for f in frames], "action", where)
        episodes = [f["episode_index"] for f in frames]
        if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in episodes):
            bad = next(i for i, e in enumerate(episodes) if not (isinstance(e, int) and e >= 0))
            raise ValueError(f"{where(bad)}: `episode_index` must be an int >= 0")
        self.episodes = np.asarray(episodes)
        for i, frame in enumerate(frames):
            if not isinstance(frame["instruction"], str) or not frame["instruction"].strip():
                raise ValueError(f"{where(i)}: `instruction` must be a non-empty string")
            if "frame_index" in frame and i > 0 and episodes[i] == episodes[i - 1]:
                if frame["frame_index"] != frames[i - 1].get("frame_index", -2) + 1:
                    raise ValueError(
                        f"{where(i)}: frames of an episode must be in order: frame_index "
                        f"{frames[i - 1].get('frame_index')} is followed by {frame['frame_index']}"
                    )
        self.instructions = [f["instruction"] for f in frames]
        self.cameras = list(frames[0]["images"]) if isinstance(frames[0]["images"], dict) else []
        for i, frame in enumerate(frames):
            if not isinstance(frame["images"], dict) or sorted(frame["images"]) != sorted(self.cameras):
                got = (
                    sorted(frame["images"])
                    if isinstance(frame["images"], dict)
                    else type(frame["images"]).__name__
                )
                raise ValueError(f"{where(i)}: cameras {got}, the first frame has {sorted(self.cameras)}")
        self.image_paths = [
            {camera: inside(self.root, p, where(i)) for camera, p in frame["images"].items()}
            for i, frame in enumerate(frames)
        ]
        self._finish()

    def _frame_images(self, index: int) -> dict:
        return {camera: _load_image(path) for camera, path in self.image_paths[index].items()}


class LeRobotDataset(RobotDataset):
    """A LeRobot v3.0 dataset directory, read with pyarrow (the lerobot package is not needed).

    Files are found through `meta/info.json` (`data_path`, `video_path` templates and `meta/episodes`); cameras are
    the features of dtype `image` or `video`, whatever their name; the state and action columns are chosen by key.
    Columns are read as arrays; images stay on disk until `__getitem__` (one parquet row group or one video frame
    at a time). `meta/stats.json`, when present, provides the statistics instead of a pass over the data.
    """

    def __init__(
        self, root, action_length: int, state_key: str = "observation.state", action_key: str = "action"
    ):
        import pyarrow.parquet as pq

        super().__init__(action_length)
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        info = json.loads(info_path.read_text())
        if not str(info.get("codebase_version", "")).startswith("v3"):
            raise ValueError(
                f"{self.root}: LeRobot codebase_version {info.get('codebase_version')!r}; v3.x is supported"
            )
        self.info, self.fps = info, float(info["fps"])
        features = info.get("features", {})
        for key in (state_key, action_key):
            if key not in features:
                raise ValueError(f"{info_path}: no feature {key!r}; features are {sorted(features)}")
        self.state_key, self.action_key = state_key, action_key
        camera_features = [
            k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") in ("image", "video")
        ]
        self.camera_keys = {_camera_name(k): k for k in camera_features}
        self.cameras = list(self.camera_keys)
        self.video_cameras = {name for name, k in self.camera_keys.items() if features[k]["dtype"] == "video"}

        self.episode_meta = self._read_episodes()
        data_files = self._data_files()
        columns = [state_key, action_key, "episode_index", "index", "timestamp", "task_index"]
        tables, locations = [], []  # per row: (file, row group, row within the group)
        for file in data_files:
            parquet = pq.ParquetFile(file)
            missing = [c for c in columns if c not in parquet.schema_arrow.names]
            if missing:
                raise ValueError(f"{file}: missing columns {missing}")
            extra = ["frame_index"] if "frame_index" in parquet.schema_arrow.names else []
            tables.append(parquet.read(columns=columns + extra))
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                locations += [(file, group, r) for r in range(rows)]
        table = _concat(tables)
        order = np.argsort(table.column("index").to_numpy(), kind="stable")
        indices = table.column("index").to_numpy()[order]
        episodes = table.column("episode_index").to_numpy()[order]
        self._image_locations = [locations[i] for i in order]

        frames = (
            table.column("frame_index").to_numpy()[order] if "frame_index" in table.column_names else None
        )

        def where(i):
            frame = "" if frames is None else f", frame {frames[i]}"
            return f"{self.root}/data (index {indices[i]}: episode {episodes[i]}{frame})"

        duplicates = indices[1:][np.diff(indices) == 0]
        if len(duplicates):
            raise ValueError(f"{self.root}/data: frame `index` {int(duplicates[0])} appears more than once")
        if "total_frames" in info and int(info["total_frames"]) != len(indices):
            raise ValueError(
                f"{info_path} says total_frames {info['total_frames']}, the data holds {len(indices)}"
            )
        self.states = _vector_column(table.column(state_key), order, state_key, where)
        self.actions = _vector_column(table.column(action_key), order, action_key, where)
        self.episodes = episodes
        self.timestamps = table.column("timestamp").to_numpy()[order].astype(np.float64)
        tasks = pq.read_table(self.root / "meta" / "tasks.parquet").to_pandas()
        if "task" in tasks.columns:  # some writers keep the string in a column instead of the index
            task_of_index = {int(row.task_index): str(row.task) for _, row in tasks.iterrows()}
        else:
            task_of_index = {int(row.task_index): str(name) for name, row in tasks.iterrows()}
        task_indices = table.column("task_index").to_numpy()[order]
        unknown = sorted(set(np.unique(task_indices).tolist()) - set(task_of_index))
        if unknown:
            raise ValueError(f"{self.root}/meta/tasks.parquet has no task_index {unknown[:5]}")
        self.instructions = [task_of_index[int(i)] for i in task_indices]
        self._check_episode_lengths()
        self.stats = self._read_stats()
        self._row_groups = {}  # (file, group, column) -> decoded column, least recently used first
        self._videos = {}  # video file -> open PyAV container, least recently used first
        self._finish()

    # ---- metadata ----

    def _read_episodes(self) -> dict:
        import pyarrow.parquet as pq

        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            return {}
        return {
            int(row["episode_index"]): row for row in _concat([pq.read_table(f) for f in files]).to_pylist()
        }

    def _data_files(self) -> list:
        """The data files named by `data_path` for the episodes' (chunk, file) pairs; a glob without metadata."""
        template = self.info.get("data_path")
        pairs = sorted(
            {
                (int(m["data/chunk_index"]), int(m["data/file_index"]))
                for m in self.episode_meta.values()
                if "data/chunk_index" in m and "data/file_index" in m
            }
        )
        if template and pairs:
            files = [
                inside(
                    self.root,
                    fill_path_template(template, chunk_index=c, file_index=f),
                    "meta/info.json data_path",
                )
                for c, f in pairs
            ]
        else:
            files = sorted((self.root / "data").glob("chunk-*/file-*.parquet"))
        if not files:
            raise FileNotFoundError(f"{self.root}/data holds no chunk-*/file-*.parquet files")
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{file} (named by meta/info.json data_path) does not exist")
        return files

    def _check_episode_lengths(self) -> None:
        """The episodes' metadata must agree with the frames the data holds."""
        counted = dict(zip(*np.unique(self.episodes, return_counts=True), strict=True))
        for episode, row in self.episode_meta.items():
            length = row.get("length")
            if length is not None and int(length) == 0:
                raise ValueError(f"{self.root}/meta/episodes: episode {episode} is empty")
            if length is not None and int(length) != counted.get(episode, 0):
                raise ValueError(
                    f"{self.root}/meta/episodes: episode {episode} has length {length}, the data holds "
                    f"{counted.get(episode, 0)} frames of it"
                )

    def _read_stats(self):
        """`meta/stats.json` -> Statistics when it has mean and std of the state and action keys."""
        path = self.root / "meta" / "stats.json"
        if not path.is_file():
            return None
        stats = json.loads(path.read_text())
        try:
            values = [
                np.asarray(stats[key][moment], dtype=np.float64).reshape(-1)
                for key in (self.action_key, self.state_key)
                for moment in ("mean", "std")
            ]
        except (KeyError, TypeError, ValueError):
            return None
        widths = (self.actions.shape[1],) * 2 + (self.states.shape[1],) * 2
        if any(v.shape != (w,) or not np.isfinite(v).all() for v, w in zip(values, widths, strict=True)):
            raise ValueError(
                f"{path}: mean/std of {self.action_key}/{self.state_key} do not match the data's widths"
            )
        return Statistics(*values)

    # ---- images, read when asked for ----

    def _frame_images(self, index: int) -> dict:
        images = {}
        for camera, key in self.camera_keys.items():
            if camera in self.video_cameras:
                images[camera] = self._video_frame(camera, index)
                continue
            file, group, row = self._image_locations[index]
            cell = self._row_group_column(file, group, key)[row]
            data = cell.get("bytes") if isinstance(cell, dict) else None
            if data:
                images[camera] = _load_image(io.BytesIO(data))
            elif isinstance(cell, dict) and cell.get("path"):
                images[camera] = _load_image(
                    inside(self.root, cell["path"], f"episode {self.episodes[index]}")
                )
            else:
                raise ValueError(f"{file}: camera {camera} of frame {index} holds neither bytes nor a path")
        return images

    def _row_group_column(self, file, group: int, column: str) -> list:
        import pyarrow.parquet as pq

        key = (file, group, column)
        values = self._row_groups.pop(key, None)
        if values is None:
            values = pq.ParquetFile(file).read_row_group(group, columns=[column]).column(column).to_pylist()
        self._row_groups[key] = values
        while len(self._row_groups) > ROW_GROUPS_CACHED:
            self._row_groups.pop(next(iter(self._row_groups)))
        return values

    def _video_frame(self, camera: str, index: int) -> np.ndarray:
        """One frame: seek in the episode's video file to its timestamp and decode only up to it."""
        episode = int(self.episodes[index])
        meta = self.episode_meta.get(episode)
        key = f"videos/{self.camera_keys[camera]}"
        if meta is None or f"{key}/chunk_index" not in meta:
            raise ValueError(
                f"{self.root}/meta/episodes: no video location of episode {episode} for {camera}"
            )
        relative = fill_path_template(
            self.info["video_path"],
            video_key=self.camera_keys[camera],
            chunk_index=int(meta[f"{key}/chunk_index"]),
            file_index=int(meta[f"{key}/file_index"]),
        )
        path = inside(self.root, relative, f"{self.root}/meta/info.json video_path")
        return self._decode_at(path, float(meta[f"{key}/from_timestamp"]) + self.timestamps[index])

    def _decode_at(self, path: Path, time: float) -> np.ndarray:
        try:
            import av
        except ImportError as error:
            raise ImportError(
                f"{path}: decoding LeRobot video cameras needs PyAV (`pip install av`)"
            ) from error
        container = self._videos.pop(path, None) or av.open(str(path))
        self._videos[path] = container
        while len(self._videos) > VIDEO_FILES_OPEN:
            self._videos.pop(next(iter(self._videos))).close()
        stream = container.streams.video[0]
        half_frame = 0.5 / self.fps
        container.seek(int(max(time - half_frame, 0.0) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= time - half_frame:
                return frame.to_ndarray(format="rgb24")
        raise ValueError(f"{path}: no frame at {time:.3f} s")

    def __getstate__(self) -> dict:  # DataLoader workers: open files belong to one process
        state = dict(self.__dict__)
        state["_videos"], state["_row_groups"] = {}, {}
        return state


ROW_GROUPS_CACHED = 4
VIDEO_FILES_OPEN = 8


def _camera_name(feature: str) -> str:
    return feature[len(LEROBOT_IMAGE_PREFIX) :] if feature.startswith(LEROBOT_IMAGE_PREFIX) else feature


def _vector_column(column, order: np.ndarray, name: str, where) -> np.ndarray:
    """A list<float> (or fixed-size list) parquet column -> (N, D) float32 through arrow's buffers (no Python
    objects per value); null, ragged or non-finite rows are refused with the frame named."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rank = np.argsort(order)  # row in file order -> row in index order
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{where(int(rank[first]))}: `{name}` is null")
    if pa.types.is_fixed_size_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths[0] == 0 or (lengths != lengths[0]).any()):
            bad = int(np.flatnonzero(lengths != lengths[0])[0]) if (lengths != lengths[0]).any() else 0
            raise ValueError(
                f"{where(int(rank[bad]))}: `{name}` has {lengths[bad]} values, other frames {lengths[0]}"
            )
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    else:
        raise ValueError(f"`{name}` must be a list column of numbers, got {column.type}")
    return numeric_rows(values[order], name, where)


def _concat(tables):
    import pyarrow as pa

    return pa.concat_tables(tables)


def _load_image(source) -> np.ndarray:
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))


def open_dataset(
    path,
    action_length: int,
    dataset_format: str = "auto",
    state_key: str = "observation.state",
    action_key: str = "action",
) -> RobotDataset:
    """A LeRobot v3 directory, a JSONL directory (`dataset_format` "auto" tells them apart), or a Hugging Face
    dataset repo id (`user/name`: downloaded with huggingface_hub, or read from its cache offline)."""
    path = Path(path)
    if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(path), repo_type="dataset"))
    if dataset_format == "auto":
        dataset_format = "lerobot" if (path / "meta" / "info.json").is_file() else "jsonl"
    if dataset_format == "lerobot":
        return LeRobotDataset(path, action_length, state_key=state_key, action_key=action_key)
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
        images = [
            _load_image(inside(self.root, image, f"conversation {index}"))
            for image in sample.get("images", [])
        ]
        return {"images": images, "prompt": sample["prompt"], "answer": sample["answer"]}


def sample_seed(run_seed: int, index: int, epoch: int) -> int:
    """The seed of a sample's training draws (noise, flow time, prefix, hidden tokens): a function of the run's
    seed and the sample's identity (dataset index, epoch) only, so that it is the same on any rank, with any
    number of processes, and after a resume. The repeats of a sample draw in turn from it."""
    state = np.random.SeedSequence([run_seed, index, epoch]).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)  # fits an int64 tensor


class SeededSamples(Dataset):
    """A dataset whose samples carry `sample_seed` (see `sample_seed`); `set_epoch` is called at each epoch's
    start (the Trainer callback `SampleEpochs`), before the epoch's data loader iterator (and its workers) exist."""

    def __init__(self, dataset: Dataset, run_seed: int):
        self.dataset, self.run_seed, self.epoch = dataset, run_seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "sample_seed": sample_seed(self.run_seed, index, self.epoch)}


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
    """Per-dim mean/std of actions and states over every frame (float64 accumulation). An action dim that never
    changes (std <= 1e-5) is masked out of the model's input and loss: it is reported, and a dataset whose every
    action dim is constant is refused (there would be nothing to learn)."""
    actions, states = dataset.actions.astype(np.float64), dataset.states.astype(np.float64)
    stats = getattr(dataset, "stats", None) or Statistics(
        actions.mean(0), actions.std(0), states.mean(0), states.std(0)
    )
    constant = [int(d) for d in np.flatnonzero(stats.action_std <= 1e-5)]
    if len(constant) == actions.shape[1]:
        raise ValueError(
            f"{getattr(dataset, 'root', 'dataset')}: every action dim is constant: nothing to learn"
        )
    if constant:
        logger.warning(
            "%s: action dim(s) %s never change (std <= 1e-5): they are masked out of the model input and the loss",
            getattr(dataset, "root", "dataset"),
            constant,
        )
    return stats


def register_dataset_robot(
    processor,
    robot_type: str,
    dataset: RobotDataset,
    camera_map: Optional[dict] = None,
    normalize_state: bool = False,
) -> dict:
    """Register (or update) `robot_type` in the processor from a dataset: its action statistics, active dims and,
    for a new robot type, camera views named after the dataset's cameras. Returns {view_key: dataset camera}."""
    for kind, width, limit in (
        ("actions", dataset.actions.shape[1], processor.action_dim),
        ("states", dataset.states.shape[1], processor.state_dim),
    ):
        if width > limit:
            raise ValueError(
                f"{getattr(dataset, 'root', 'the dataset')}: its {kind} are {width} wide, the model's "
                f"{kind[:-1]}_dim is {limit}: train a model whose config has {kind[:-1]}_dim >= {width}"
            )
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
        if all("sample_seed" in sample for sample in samples):
            inputs["sample_seeds"] = torch.tensor(
                [sample["sample_seed"] for sample in samples], dtype=torch.int64
            )
        return dict(inputs)
