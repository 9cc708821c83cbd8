"""The loop every benchmark runner shares (`xr0-eval-libero`, `xr0-eval-calvin`): arguments, the connection to the
policy server and its metadata, a resumable results file with the benchmark's metric, progress, episode videos and
Ctrl-C. A benchmark only says what is specific to it (`Benchmark`); `run_benchmark` does the rest. No torch.
"""

import itertools
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from xr0_common.cli import ArgumentParser, exit_on_interrupt

from .benchmarks import BenchmarkClient
from .client import XR0Client
from .evaluation import (
    VIDEO_CHOICES,
    EpisodeVideo,
    Progress,
    ResultsError,
    ResultsFile,
    format_summary,
    success_statistics,
)

logger = logging.getLogger("xr0.runner")


@dataclass(frozen=True)
class PlannedEpisode:
    """One episode a run plans: the results file's key (suite, task, episode)."""

    suite: str
    task: Any
    episode: int


class Benchmark:
    """What a runner says about its benchmark; every method but `run_episode` has a default."""

    name: str = ""  # results' run.benchmark; the command is xr0-eval-<name>
    video_fps: int = 20

    def add_arguments(self, parser: ArgumentParser) -> None:
        """The benchmark's own arguments (the shared ones: --host, --port, --token, --results_file, --video...)."""

    def robot_type(self, args) -> str:
        """The robot type the server must serve for this run."""
        raise NotImplementedError

    def client(self, policy, args) -> BenchmarkClient:
        """The official client conventions of this benchmark, on `policy` (an `XR0Client`)."""
        raise NotImplementedError

    def settings(self, args, client: BenchmarkClient) -> dict:
        """What defines the run besides the checkpoint: a results file recorded with other settings is refused."""
        return {
            "steps_per_chunk": client.steps_per_chunk,
            "request_seeds": "official_request_seed of each request",
        }

    def plan(self, args) -> list:
        """The run's `PlannedEpisode`s, in order; consecutive ones of the same (suite, task) share one environment."""
        raise NotImplementedError

    def open_environment(self, args, suite: str, task) -> Any:
        return None

    def close_environment(self, environment) -> None:
        close = getattr(environment, "close", None)
        if close is not None:
            close()

    def run_episode(self, environment, client, planned: PlannedEpisode, args, video, progress) -> dict:
        """Runs one episode; returns its record's fields (at least `success`, `seed`, `steps`; `seconds`
        defaults to the whole call's)."""
        raise NotImplementedError

    def metric(self, episodes: list) -> dict:
        """The statistics of a group of episode records (per task and per suite in the results file)."""
        return success_statistics(episodes)

    def format(self, summary: dict) -> str:
        """The results table printed at the end."""
        return format_summary(summary)

    def describe(self, planned: PlannedEpisode, outcome: dict) -> str:
        rate = outcome["steps"] / max(outcome["seconds"], 1e-9)
        return (
            f"task {planned.task} episode {planned.episode}: {'success' if outcome['success'] else 'failure'} "
            f"after {outcome['steps']} steps ({outcome['seconds']:.1f} s, {rate:.1f} steps/s)"
        )


def add_shared_arguments(parser: ArgumentParser, name: str) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--token", default=os.environ.get("XR0_SERVER_TOKEN"), help="default: XR0_SERVER_TOKEN"
    )
    parser.add_argument(
        "--results_file",
        type=Path,
        default=Path(f"xr0_{name}_results.json"),
        help="JSON results, rewritten after each episode; episodes it already holds are skipped (resume)",
    )
    parser.add_argument(
        "--video", default="failures", choices=VIDEO_CHOICES, help="which episodes get an MP4"
    )
    parser.add_argument(
        "--video_dir", type=Path, default=None, help="where the MP4s go (default: <results_file>_videos/)"
    )


def run_benchmark(benchmark: Benchmark, argv=None, description: Optional[str] = None) -> int:
    """Parses the arguments, connects, runs every planned episode not yet in the results file, prints the table."""
    command = f"xr0-eval-{benchmark.name}"
    parser = ArgumentParser(prog=command, description=description)
    add_shared_arguments(parser, benchmark.name)
    benchmark.add_arguments(parser)
    args = parser.parse_args(argv)
    planned = benchmark.plan(args)
    video_dir = args.video_dir or args.results_file.with_name(args.results_file.stem + "_videos")
    try:
        policy = XR0Client(args.host, args.port, token=args.token)
    except OSError as error:
        sys.exit(f"{command}: cannot reach the policy server at {args.host}:{args.port}: {error}")
    with policy:
        robot_type = benchmark.robot_type(args)
        served = policy.metadata.get("robot_types", {})
        if robot_type not in served:
            sys.exit(
                f"{command}: the server at {policy.uri} does not serve robot_type {robot_type}: {sorted(served)}"
            )
        client = benchmark.client(policy, args)
        if client.steps_per_chunk is None:  # the whole chunk: T as the server serves it
            length = served[robot_type].get("chunk_length") if isinstance(served[robot_type], dict) else None
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                sys.exit(
                    f"{command}: the server's metadata robot_types.{robot_type}.chunk_length must be an int >= 1, "
                    f"got {length!r}"
                )
            client.steps_per_chunk = length
        run = {
            "benchmark": benchmark.name,
            "checkpoint": policy.metadata.get("checkpoint") or {"name": policy.metadata.get("model")},
            "settings": benchmark.settings(args, client),
        }
        try:
            results = ResultsFile(args.results_file, run, metric=benchmark.metric)
        except ResultsError as error:
            sys.exit(f"{command}: {error}")
        todo = [p for p in planned if not results.done(p.suite, p.task, p.episode)]
        progress = Progress(len(planned), done=len(planned) - len(todo), description=benchmark.name)

        def interrupted() -> str:
            return (
                f"{len(results.episodes)} episodes recorded in {args.results_file} "
                f"({len(todo)} still to run when interrupted: rerun the same command to resume)"
            )

        with exit_on_interrupt(interrupted):
            for (suite, task), group in itertools.groupby(todo, key=lambda p: (p.suite, p.task)):
                environment = benchmark.open_environment(args, suite, task)
                try:
                    for item in group:
                        results.add(_run_one(benchmark, environment, client, item, args, video_dir, progress))
                finally:
                    benchmark.close_environment(environment)
        progress.close()
    results.write()
    print(benchmark.format(results.summary()))
    print(f"results: {args.results_file}")
    return 0


def _run_one(
    benchmark, environment, client, planned: PlannedEpisode, args, video_dir: Path, progress
) -> dict:
    name = f"{planned.suite}-task{planned.task}-episode{planned.episode:03d}"
    video = EpisodeVideo(video_dir / f"{name}.mp4", benchmark.video_fps) if args.video != "none" else None
    started = time.perf_counter()
    try:
        outcome = benchmark.run_episode(environment, client, planned, args, video, progress)
    except BaseException:  # an interrupted episode is not recorded: no video either
        if video is not None:
            video.finish(keep=False)
        raise
    outcome.setdefault("seconds", round(time.perf_counter() - started, 3))
    kept = video.finish(keep=args.video == "all" or not outcome["success"]) if video is not None else None
    progress.episode_done(benchmark.describe(planned, outcome))
    return {
        "suite": planned.suite,
        "task": planned.task,
        "episode": planned.episode,
        **outcome,
        "video": str(kept) if kept else None,
    }
