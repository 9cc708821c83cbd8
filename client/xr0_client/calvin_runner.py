"""`xr0-eval-calvin`: CALVIN's long-horizon evaluation against an XR0 policy server, with the published client
conventions (`CalvinClient`: static + gripper cameras cropped to 0.95, state = robot_obs[:7], gripper ±1).

    xr0-serve --model out/calvin_abc --port 8000 &
    xr0-eval-calvin --port 8000 --dataset_path calvin/dataset/task_ABC_D --sequences 1000

CALVIN's protocol (calvin_agent/evaluation/evaluate_policy.py): `--sequences` chains of 5 subtasks from CALVIN's
fixed list of evaluation sequences; each chain starts from its initial scene; each subtask gets its language
annotation, a fresh policy state and up to `--max_steps` (360) steps, and counts as done when CALVIN's task oracle
sees it completed between the subtask's first and current step; a failed subtask ends the chain. An episode is one
chain; its `chain_length` (0-5) is the metric: the table reports the average length and the share of chains that
completed 1, 2, ... 5 subtasks in a row (the numbers CALVIN's papers report; the published checkpoints: 4.75 on
ABC→D, 4.80 on ABCD→D).

The simulator comes from CALVIN's own repository (calvin_env and calvin_agent, installed from its git checkout;
not on PyPI). `--environment module:factory` plugs in another implementation of `CalvinEnvironment`.
"""

import importlib
import sys
from typing import Any, Protocol

import numpy as np

from .benchmarks import CalvinClient
from .evaluation import wilson_interval
from .runner import Benchmark, PlannedEpisode, run_benchmark

CHAIN_LENGTH = 5  # subtasks per evaluation sequence
MAX_STEPS = 360  # CALVIN's EP_LEN: steps per subtask
NUM_SEQUENCES = 1000


class CalvinEnvironment(Protocol):
    """What the runner needs of CALVIN; `OfficialCalvin` is CALVIN's own environment and task oracle."""

    def sequences(self, count: int) -> list:
        """The first `count` evaluation sequences: [(initial_state, [subtask, ... x5]), ...]."""

    def reset(self, initial_state) -> None: ...

    def observation(self) -> dict:
        """{"rgb_obs": {"rgb_static", "rgb_gripper"}, "robot_obs", ...} as CALVIN's env returns it."""

    def info(self) -> dict: ...

    def step(self, action: np.ndarray) -> tuple:
        """-> (observation, info)."""

    def completed(self, start_info: dict, info: dict, subtask: str) -> bool:
        """CALVIN's task oracle: was `subtask` done between the two infos."""

    def annotation(self, subtask: str) -> str:
        """The subtask's language annotation (CALVIN's validation annotations)."""


class OfficialCalvin:
    """CALVIN's environment, task oracle, evaluation sequences and annotations (imports CALVIN's packages)."""

    def __init__(self, dataset_path: str):
        from pathlib import Path

        import calvin_agent
        import hydra
        from calvin_agent.evaluation.multistep_sequences import get_sequences
        from calvin_agent.evaluation.utils import get_env_state_for_initial_condition
        from calvin_env.envs.play_table_env import get_env
        from omegaconf import OmegaConf

        conf = Path(calvin_agent.__file__).resolve().parents[1] / "conf"
        self._env = get_env(Path(dataset_path) / "validation", show_gui=False)
        self._oracle = hydra.utils.instantiate(
            OmegaConf.load(conf / "callbacks/rollout/tasks/new_playtable_tasks.yaml")
        )
        self._annotations = OmegaConf.load(conf / "annotations/new_playtable_validation.yaml")
        self._get_sequences, self._state_of = get_sequences, get_env_state_for_initial_condition

    def sequences(self, count: int) -> list:
        return self._get_sequences(count)

    def reset(self, initial_state) -> None:
        robot_obs, scene_obs = self._state_of(initial_state)
        self._env.reset(robot_obs=robot_obs, scene_obs=scene_obs)

    def observation(self) -> dict:
        return self._env.get_obs()

    def info(self) -> dict:
        return self._env.get_info()

    def step(self, action):
        observation, _, _, info = self._env.step(action)
        return observation, info

    def completed(self, start_info, info, subtask) -> bool:
        return len(self._oracle.get_task_info_for_set(start_info, info, {subtask})) > 0

    def annotation(self, subtask: str) -> str:
        return self._annotations[subtask][0]

    def close(self) -> None:
        close = getattr(self._env, "close", None)
        if close is not None:
            close()


def chain_statistics(episodes: list) -> dict:
    """Chains -> average length and the share that completed at least k subtasks in a row, k = 1..5 (each with
    its 95% Wilson interval), as CALVIN's `count_success` reports them."""
    lengths = np.array([e["chain_length"] for e in episodes])
    count = len(lengths)
    in_a_row = [int((lengths >= k).sum()) for k in range(1, CHAIN_LENGTH + 1)]
    return {
        "episodes": count,
        "average_length": float(lengths.mean()) if count else None,
        "successes": in_a_row[-1],
        "success_rate": in_a_row[-1] / count if count else None,  # all five subtasks
        "completed_in_a_row": [n / count if count else None for n in in_a_row],
        "completed_in_a_row_ci95": [list(wilson_interval(n, count)) if count else None for n in in_a_row],
    }


def format_chains(summary: dict) -> str:
    lines = [
        f"{'split':<16} {'chains':>6}  {'avg len':>7}  " + "  ".join(f"{k}/5".rjust(6) for k in range(1, 6))
    ]
    for split, stats in summary.items():
        rates = "  ".join(f"{100 * r:5.1f}%" for r in stats["completed_in_a_row"])
        lines.append(f"{split:<16} {stats['episodes']:>6}  {stats['average_length']:7.3f}  {rates}")
    return "\n".join(lines)


def load_factory(spec: str):
    """ "module:callable" -> the callable (the `--environment` plug-in)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--environment must be module:callable, got {spec!r}")
    return getattr(importlib.import_module(module), name)


class Calvin(Benchmark):
    name = "calvin"
    video_fps = 15  # CALVIN's control rate

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--dataset_path", default=None, help="CALVIN's task_ABC_D (or task_ABCD_D) folder"
        )
        parser.add_argument(
            "--robot_type", default="calvin_abc_orig", choices=CalvinClient.ROBOT_TYPE_CHOICES
        )
        parser.add_argument(
            "--sequences", type=int, default=NUM_SEQUENCES, help="chains to evaluate, in order"
        )
        parser.add_argument("--max_steps", type=int, default=MAX_STEPS, help="policy steps per subtask")
        parser.add_argument(
            "--environment",
            default=None,
            help="module:callable returning a CalvinEnvironment, called with --dataset_path (default: CALVIN's own)",
        )

    def robot_type(self, args) -> str:
        return args.robot_type

    def client(self, policy, args) -> CalvinClient:
        return CalvinClient(policy, robot_type=args.robot_type)

    def settings(self, args, client) -> dict:
        return {"max_steps": args.max_steps, "chain_length": CHAIN_LENGTH, **super().settings(args, client)}

    def plan(self, args) -> list:
        if args.sequences < 1 or args.max_steps < 1:
            sys.exit("xr0-eval-calvin: --sequences and --max_steps must be >= 1")
        if args.environment is None and args.dataset_path is None:
            sys.exit("xr0-eval-calvin: --dataset_path is needed (CALVIN's task_ABC_D or task_ABCD_D folder)")
        try:
            factory = load_factory(args.environment) if args.environment else OfficialCalvin
        except (ValueError, ImportError, AttributeError) as error:
            sys.exit(f"xr0-eval-calvin: {error}")
        try:
            self.environment: Any = factory(args.dataset_path)
        except ImportError as error:
            sys.exit(
                f"xr0-eval-calvin: CALVIN is not installed ({error}); install calvin_env and calvin_agent from "
                "CALVIN's repository, or pass --environment module:callable"
            )
        self.chains = self.environment.sequences(args.sequences)
        return [PlannedEpisode(args.robot_type, "chains", index) for index in range(len(self.chains))]

    def open_environment(self, args, suite, task):
        return self.environment

    def run_episode(self, env, client, planned, args, video, progress) -> dict:
        initial_state, subtasks = self.chains[planned.episode]
        env.reset(initial_state)
        completed, steps = 0, 0
        for subtask in subtasks:
            annotation = env.annotation(subtask)
            client.reset()
            start_info = env.info()
            observation = env.observation()
            done = False
            for _ in range(args.max_steps):
                observation, info = env.step(client.act(observation, annotation))
                steps += 1
                if video is not None:
                    video.add(video_frame(observation))
                if env.completed(start_info, info, subtask):
                    done = True
                    break
            progress.status(f"subtask {completed + 1}/{len(subtasks)} {'done' if done else 'failed'}")
            if not done:
                break
            completed += 1
        return {
            "instruction": " | ".join(subtasks),
            "subtasks": list(subtasks),
            "chain_length": completed,
            "success": completed == len(subtasks),
            "seed": None,  # CALVIN's sequences are fixed; request seeds follow from the observations
            "steps": steps,
        }

    def metric(self, episodes: list) -> dict:
        return chain_statistics(episodes)

    def format(self, summary: dict) -> str:
        return format_chains(summary)

    def describe(self, planned, outcome) -> str:
        return (
            f"chain {planned.episode}: {outcome['chain_length']}/{CHAIN_LENGTH} subtasks "
            f"after {outcome['steps']} steps - {outcome['instruction']}"
        )


def video_frame(observation: dict) -> np.ndarray:
    """Static camera and gripper camera (scaled to the static one's height) side by side."""
    from PIL import Image

    static = np.asarray(observation["rgb_obs"]["rgb_static"], dtype=np.uint8)
    gripper = Image.fromarray(np.asarray(observation["rgb_obs"]["rgb_gripper"], dtype=np.uint8))
    gripper = np.asarray(gripper.resize((static.shape[0], static.shape[0])))
    return np.concatenate([static, gripper], axis=1)


def main(argv=None) -> int:
    return run_benchmark(Calvin(), argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
