"""Benchmark of the LeRobot v3.0 reader's random access (numbers, not a test).

    python -m xr0.training.benchmark_dataset [--episodes 40] [--frames 300] [--samples 300]

Writes a LeRobot v3.0 dataset in a temporary folder the way LeRobot does (all episodes of a camera concatenated
in one mp4, keyframes every 2 frames), 320x240, one video camera, then reads random samples as a Trainer's
DataLoader would and prints samples/s and the growth of the process's resident memory.
"""

import json
import random
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from xr0_common.cli import ArgumentParser


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_dataset(
    root: Path, episodes: int, frames: int, width: int = 320, height: int = 240, fps: int = 30
) -> None:
    import av
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    video = root / "videos" / "observation.images.front" / "chunk-000" / "file-000.mp4"
    video.parent.mkdir(parents=True)
    total = episodes * frames
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    with av.open(str(video), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"g": "2", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(total):
            image = np.roll(base, i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    episode_index = np.repeat(np.arange(episodes), frames)
    frame_index = np.tile(np.arange(frames), episodes)
    pq.write_table(
        pa.table(
            {
                "observation.state": pa.array(
                    rng.normal(size=(total, 8)).astype(np.float32).tolist(), pa.list_(pa.float32())
                ),
                "action": pa.array(
                    rng.normal(size=(total, 7)).astype(np.float32).tolist(), pa.list_(pa.float32())
                ),
                "timestamp": pa.array(frame_index / fps, pa.float32()),
                "frame_index": pa.array(frame_index, pa.int64()),
                "episode_index": pa.array(episode_index, pa.int64()),
                "index": pa.array(np.arange(total), pa.int64()),
                "task_index": pa.array(np.zeros(total, np.int64)),
            }
        ),
        root / "data" / "chunk-000" / "file-000.parquet",
    )
    starts = np.arange(episodes) * frames
    key = "videos/observation.images.front"
    pq.write_table(
        pa.table(
            {
                "episode_index": list(range(episodes)),
                "length": [frames] * episodes,
                "data/chunk_index": [0] * episodes,
                "data/file_index": [0] * episodes,
                f"{key}/chunk_index": [0] * episodes,
                f"{key}/file_index": [0] * episodes,
                f"{key}/from_timestamp": (starts / fps).tolist(),
                f"{key}/to_timestamp": ((starts + frames) / fps).tolist(),
            }
        ),
        root / "meta" / "episodes" / "chunk-000" / "file-000.parquet",
    )
    import pandas as pd

    pq.write_table(
        pa.Table.from_pandas(pd.DataFrame({"task_index": [0]}, index=pd.Index(["reach"], name="task"))),
        root / "meta" / "tasks.parquet",
    )
    feature = {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channel"]}
    info = {
        "codebase_version": "v3.0",
        "fps": fps,
        "total_episodes": episodes,
        "total_frames": total,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "observation.state": {"dtype": "float32", "shape": [8]},
            "action": {"dtype": "float32", "shape": [7]},
            "observation.images.front": feature,
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info))


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args(argv)
    from .data import open_dataset  # after parsing: it loads torch

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "dataset"
        start = time.perf_counter()
        write_dataset(root, args.episodes, args.frames)
        print(
            f"wrote {args.episodes} episodes x {args.frames} frames, 320x240 video, in {time.perf_counter() - start:.1f} s"
        )
        before = rss_mb()
        start = time.perf_counter()
        dataset = open_dataset(root, 30)
        print(f"opened {len(dataset)} frames in {(time.perf_counter() - start) * 1e3:.0f} ms")
        order = random.Random(0).sample(range(len(dataset)), args.samples)
        dataset[order[0]]  # the first access opens the video file
        start = time.perf_counter()
        for index in order:
            sample = dataset[index]
        elapsed = time.perf_counter() - start
        assert sample["images"]["front"].shape == (240, 320, 3)
        print(
            f"random access: {args.samples / elapsed:.0f} samples/s ({elapsed / args.samples * 1e3:.1f} ms/sample), "
            f"RSS growth {rss_mb() - before:.0f} MB"
        )


if __name__ == "__main__":
    main()
