"""Tiny synthetic robot datasets on disk, in the LeRobot v3.0 layout and in the JSONL format."""

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

FPS = 10
TASKS = ["pick up the red cube", "open the drawer"]


def episodes(num_episodes=4, length=12, state_dim=6, action_dim=5, seed=0):
    """Frames whose actions are a smooth function of time and state, so they can be learned."""
    rng = np.random.default_rng(seed)
    frames = []
    for episode in range(num_episodes):
        phase = rng.uniform(0, np.pi)
        for step in range(length):
            t = step / length
            state = np.sin(phase + t * np.arange(1, state_dim + 1)).astype(np.float32)
            action = np.cos(phase + 2 * t + np.arange(action_dim)).astype(np.float32)
            images = {cam: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for cam in ("top", "wrist")}
            frames.append(
                dict(
                    episode_index=episode,
                    frame_index=step,
                    task_index=episode % 2,
                    state=state,
                    action=action,
                    images=images,
                    timestamp=step / FPS,
                )
            )
    return frames


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_video(path: Path, images: list) -> None:
    """Frames -> an mp4 encoded losslessly (libx264rgb, crf 0), so decoded frames can be compared exactly."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264rgb", rate=FPS, options={"crf": "0"})
        stream.width, stream.height = images[0].shape[1], images[0].shape[0]
        stream.pix_fmt = "rgb24"
        for image in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_lerobot(root, video=False, **kwargs) -> Path:
    """A LeRobot v3.0 dataset; cameras stored as PNG bytes in the parquet file, or as one mp4 per camera
    (all episodes concatenated, as LeRobot writes them) with `video=True`."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    frames = episodes(**kwargs)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    state_dim, action_dim = len(frames[0]["state"]), len(frames[0]["action"])
    image_feature = {
        "dtype": "video" if video else "image",
        "shape": [64, 64, 3],
        "names": ["height", "width", "channel"],
    }
    info = {
        "codebase_version": "v3.0",
        "robot_type": "tiny_arm",
        "fps": FPS,
        "total_episodes": frames[-1]["episode_index"] + 1,
        "total_frames": len(frames),
        "total_tasks": len(TASKS),
        "chunks_size": 1000,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "splits": {"train": f"0:{frames[-1]['episode_index'] + 1}"},
        "features": {
            "observation.state": {"dtype": "float32", "shape": [state_dim], "names": None},
            "action": {"dtype": "float32", "shape": [action_dim], "names": None},
            "observation.images.top": image_feature,
            "observation.images.wrist": image_feature,
            "timestamp": {"dtype": "float32", "shape": [1]},
            "frame_index": {"dtype": "int64", "shape": [1]},
            "episode_index": {"dtype": "int64", "shape": [1]},
            "index": {"dtype": "int64", "shape": [1]},
            "task_index": {"dtype": "int64", "shape": [1]},
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    pq.write_table(
        pa.Table.from_pandas(
            pd.DataFrame({"task_index": range(len(TASKS))}, index=pd.Index(TASKS, name="task"))
        ),
        root / "meta" / "tasks.parquet",
    )
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {
        "observation.state": pa.array([f["state"].tolist() for f in frames], pa.list_(pa.float32())),
        "action": pa.array([f["action"].tolist() for f in frames], pa.list_(pa.float32())),
        "timestamp": pa.array([f["timestamp"] for f in frames], pa.float32()),
        "frame_index": pa.array([f["frame_index"] for f in frames], pa.int64()),
        "episode_index": pa.array([f["episode_index"] for f in frames], pa.int64()),
        "index": pa.array(list(range(len(frames))), pa.int64()),
        "task_index": pa.array([f["task_index"] for f in frames], pa.int64()),
    }
    for cam in ("top", "wrist"):
        if video:
            write_video(
                root / "videos" / f"observation.images.{cam}" / "chunk-000" / "file-000.mp4",
                [f["images"][cam] for f in frames],
            )
        else:
            columns[f"observation.images.{cam}"] = pa.array(
                [{"bytes": png_bytes(f["images"][cam]), "path": None} for f in frames], image_type
            )
    pq.write_table(pa.table(columns), root / "data" / "chunk-000" / "file-000.parquet")
    lengths = np.bincount([f["episode_index"] for f in frames])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    episode_columns = {
        "episode_index": list(range(len(lengths))),
        "tasks": [[TASKS[i % 2]] for i in range(len(lengths))],
        "length": lengths.tolist(),
        "dataset_from_index": starts.tolist(),
        "dataset_to_index": (starts + lengths).tolist(),
        "data/chunk_index": [0] * len(lengths),
        "data/file_index": [0] * len(lengths),
    }
    if video:
        for cam in ("top", "wrist"):
            key = f"videos/observation.images.{cam}"
            episode_columns[f"{key}/chunk_index"] = [0] * len(lengths)
            episode_columns[f"{key}/file_index"] = [0] * len(lengths)
            episode_columns[f"{key}/from_timestamp"] = (starts / FPS).tolist()
            episode_columns[f"{key}/to_timestamp"] = ((starts + lengths) / FPS).tolist()
    episodes_table = pa.table(episode_columns)
    pq.write_table(episodes_table, root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    return root


def write_jsonl(root, **kwargs) -> Path:
    root = Path(root)
    (root / "images").mkdir(parents=True)
    lines = []
    for i, f in enumerate(episodes(**kwargs)):
        paths = {}
        for cam, array in f["images"].items():
            paths[cam] = f"images/{i:05d}_{cam}.png"
            Image.fromarray(array).save(root / paths[cam])
        lines.append(
            json.dumps(
                {
                    "episode_index": f["episode_index"],
                    "frame_index": f["frame_index"],
                    "instruction": TASKS[f["task_index"]],
                    "state": f["state"].tolist(),
                    "action": f["action"].tolist(),
                    "images": paths,
                }
            )
        )
    (root / "frames.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_conversations(root, count=5, seed=0) -> Path:
    """A tiny vision-language dataset: conversations.jsonl with one image per sample."""
    root = Path(root)
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        path = f"images/{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / path)
        lines.append(
            json.dumps(
                {"images": [path], "prompt": "What is on the table?", "answer": f"A red cube number {i}."}
            )
        )
    (root / "conversations.jsonl").write_text("\n".join(lines) + "\n")
    return root
