"""The bookkeeping every benchmark runner shares (the loop itself is `xr0_client.runner`; PlanarReach and
Meta-World use the interval): success rates with their 95% Wilson interval, a results file that survives a kill
and resumes, a progress display and episode videos. No torch here.

The results file is one JSON document, rewritten atomically after every episode (a temporary file in the same
folder, then `os.replace`), so a killed run leaves the previous complete version, never half a file:

    {"run": {"benchmark", "checkpoint": {...as the server reports it}, "settings": {...}},
     "suites": {suite: {"episodes", "successes", "success_rate", "ci95": [low, high], "seeds",
                        "tasks": {task: {"instruction", "episodes", "successes", "success_rate", "ci95", "seeds"}}}},
     "episodes": [{"suite", "task", "episode", "seed", "success", "steps", "seconds", "video", ...}, ...]}

Rerunning with the same file skips the episodes it already holds; a file recorded with another checkpoint or
other settings is refused rather than mixed with the new run.
"""

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

logger = logging.getLogger("xr0.evaluation")

VIDEO_CHOICES = ("all", "failures", "none")


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple:
    """95% confidence interval of a binomial proportion (Wilson score): sound at 0% and 100% too."""
    if trials == 0:
        return (float("nan"), float("nan"))
    p = successes / trials
    denominator = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def success_statistics(episodes: list) -> dict:
    """Episodes (dicts with `success` and `seed`) -> count, successes, rate and its 95% Wilson interval."""
    successes = sum(bool(e["success"]) for e in episodes)
    low, high = wilson_interval(successes, len(episodes))
    return {
        "episodes": len(episodes),
        "successes": successes,
        "success_rate": successes / len(episodes) if episodes else None,
        "ci95": [low, high] if episodes else None,
        "seeds": sorted({e["seed"] for e in episodes}),
    }


class ResultsError(ValueError):
    """A results file that cannot be resumed by this run."""


class ResultsFile:
    """
    The episodes of one evaluation run and their statistics, kept in `path` (None: in memory only).

    Args:
        path: the JSON file; when it exists, its episodes are loaded and `done` reports them.
        run: what defines the run: benchmark, checkpoint identity, settings. A file whose `run` differs is refused.
        metric: episodes -> their statistics, per task and per suite (success rate and interval by default;
            CALVIN reports chain lengths).
    """

    def __init__(self, path: Optional[Path], run: dict, metric: Callable[[list], dict] = success_statistics):
        self.metric = metric
        self.path = Path(path) if path is not None else None
        self.run = json.loads(json.dumps(run))  # as it reads back from JSON (tuples become lists)
        self.episodes: list = []
        if self.path is not None and self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
                recorded_run, episodes = saved["run"], list(saved["episodes"])
            except (ValueError, KeyError, TypeError) as error:
                raise ResultsError(f"{self.path}: not a results file of this tool ({error})") from None
            if recorded_run != self.run:
                differing = sorted(
                    key
                    for key in set(recorded_run) | set(self.run)
                    if recorded_run.get(key) != self.run.get(key)
                )
                raise ResultsError(
                    f"{self.path} was recorded by another run (different {', '.join(differing)}: "
                    f"{ {k: recorded_run.get(k) for k in differing} } vs { {k: self.run.get(k) for k in differing} }); "
                    "name another --results_file to start a new one"
                )
            self.episodes = episodes
            logger.info("%s: resuming, %d episodes already recorded", self.path, len(self.episodes))

    def done(self, suite: str, task, episode: int) -> bool:
        return any((e["suite"], e["task"], e["episode"]) == (suite, task, episode) for e in self.episodes)

    def add(self, episode: dict) -> None:
        """Records one episode (keys suite, task, episode, seed, success, ...) and rewrites the file."""
        self.episodes.append(episode)
        self.write()

    def summary(self) -> dict:
        suites = {}
        for suite in dict.fromkeys(e["suite"] for e in self.episodes):
            in_suite = [e for e in self.episodes if e["suite"] == suite]
            tasks = {}
            for task in dict.fromkeys(e["task"] for e in in_suite):
                in_task = [e for e in in_suite if e["task"] == task]
                tasks[str(task)] = {"instruction": in_task[0].get("instruction"), **self.metric(in_task)}
            suites[suite] = {**self.metric(in_suite), "tasks": tasks}
        return suites

    def document(self) -> dict:
        return {
            "run": self.run,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "suites": self.summary(),
            "episodes": self.episodes,
        }

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.document(), indent=2, allow_nan=False) + "\n"
        handle, temporary = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise become the file's mode
            with os.fdopen(handle, "w") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def format_summary(suites: dict) -> str:
    """The summary as a table: one row per task, then the suite."""
    lines = [f"{'suite':<16} {'task':>4}  {'success':>8}  {'95% CI':>13}  episodes"]
    for suite, stats in suites.items():
        rows = [(task, task_stats) for task, task_stats in stats["tasks"].items()] + [("all", stats)]
        for task, row in rows:
            low, high = row["ci95"]
            lines.append(
                f"{suite:<16} {task:>4}  {100 * row['success_rate']:7.1f}%  {100 * low:5.1f}–{100 * high:5.1f}%  "
                f"{row['successes']}/{row['episodes']}"
            )
    return "\n".join(lines)


class Progress:
    """A progress bar over episodes when tqdm is installed (stderr), else one log line per episode."""

    def __init__(self, total: int, done: int = 0, description: str = "episodes"):
        self.total, self.count = total, done
        try:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm
        except ImportError:
            self._bar = None
        else:
            self._bar = tqdm(total=total, initial=done, desc=description, unit="episode", dynamic_ncols=True)
            # Log lines go above the bar instead of through it.
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def status(self, text: str) -> None:
        """The running episode's state (e.g. its step count), shown beside the bar."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)

    def episode_done(self, message: str) -> None:
        self.count += 1
        if self._bar is not None:
            self._bar.update(1)
        logger.info("[%d/%d] %s", self.count, self.total, message)

    def close(self) -> None:
        if self._bar is not None:
            self._redirect.__exit__(None, None, None)
            self._bar.close()


class EpisodeVideo:
    """An H.264 MP4 of one episode, encoded while it runs (PyAV: `pip install "xr0-client[video]"`).

    `finish(keep=False)` deletes it (e.g. a success when only failures are kept)."""

    def __init__(self, path: Path, fps: int = 20):
        try:
            import av
        except ImportError:
            raise ImportError(
                'episode videos need PyAV: pip install "xr0-client[video]" (or av), or pass --video none'
            ) from None
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._av = av
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": "23", "preset": "veryfast"}
        self.frames = 0

    def add(self, frame: np.ndarray) -> None:
        """frame: uint8 (H, W, 3) RGB, the same size every time (even sides: yuv420p)."""
        frame = np.ascontiguousarray(frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2])
        if self.frames == 0:
            self._stream.height, self._stream.width = frame.shape[:2]
        for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def finish(self, keep: bool = True) -> Optional[Path]:
        """Flushes and closes the file; returns its path, or None when it was not kept."""
        if self.frames:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()
        if keep and self.frames:
            return self.path
        self.path.unlink(missing_ok=True)
        return None
