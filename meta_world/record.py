"""Record Meta-World's scripted experts as one LeRobot v3.0 dataset (robot type `metaworld`, one instruction per
task):

    python -m xr0.meta_world.record --output runs/metaworld/data --tasks mt10 --episodes 50 --seed 0

`--episodes` counts successful demonstrations per task. Try i of a task runs on the configuration
`configuration_seed(seed, task, i)`, for i = 0, 1, ... until the task has that many, at most 2 · episodes + 10 tries
(every task then trains on as many demonstrations, however often its expert fails). The expert acts until the task
succeeds and `hold_steps` more (so chunks near the end show how to stay), at most `max_steps`. Frame t holds the two
views and the 39-D state before action t, and action t (the expert's command). `--action_noise` σ > 0 makes the arm
execute the command plus N(0, σ²) on the three motion dims while the dataset keeps the command (DART, Laskey et al.
2017): the demonstrations then show how to come back from the small deviations a learned policy makes. Tries the
expert does not finish are left out of the dataset and counted in the summary (`<output>/meta/metaworld.json`).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from xr0_common.cli import ArgumentParser

from ..labs.record import dataset_writer, write_dataset_summary
from .env import (
    ACTION_NAMES,
    IMAGE_SIZE,
    LAB,
    STATE_NAMES,
    VIEWS,
    MetaWorldTask,
    configuration_seed,
    resolve_tasks,
)


def max_tries(episodes: int) -> int:
    """How many configurations a task may try to get `episodes` successful demonstrations."""
    return 2 * episodes + 10


def record(
    output,
    tasks: list,
    episodes: int,
    seed: int = 0,
    action_noise: float = 0.0,
    hold_steps: int = 8,
    max_steps: int = 250,
) -> dict:
    """Writes the dataset; returns its summary (also written to `<output>/meta/metaworld.json`).

    Each task gets `episodes` successful demonstrations, or fewer (said in the summary) if its expert fails more
    than `max_tries(episodes) - episodes` times."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1 successful demonstrations per task, got {episodes!r}")
    if not (np.isfinite(action_noise) and action_noise >= 0):
        raise ValueError(f"action_noise must be a finite standard deviation >= 0, got {action_noise!r}")
    start = time.perf_counter()
    writer = dataset_writer(
        LAB, output, {key: (IMAGE_SIZE, IMAGE_SIZE) for key, _ in VIEWS}, STATE_NAMES, ACTION_NAMES
    )
    per_task = {}
    for task in tasks:
        world = MetaWorldTask(task)
        lengths, failures, tries = [], 0, 0
        while len(lengths) < episodes and tries < max_tries(episodes):
            configuration = configuration_seed(seed, task, tries)
            tries += 1
            frames = demonstrate(world, configuration, action_noise, hold_steps, max_steps)
            if frames is None:
                failures += 1
                continue
            states, actions, images = frames
            writer.add_episode(states, actions, images, task=world.instruction)
            lengths.append(len(states))
        world.close()
        per_task[task] = {
            "instruction": world.instruction,
            "episodes": len(lengths),
            "tries": tries,
            "expert_failures": failures,
            "mean_length": float(np.mean(lengths)) if lengths else None,
        }
        print(json.dumps({"recorded": task, **per_task[task]}), flush=True)
        if len(lengths) < episodes:
            print(
                f"warning: {task}: {len(lengths)} of {episodes} demonstrations, the expert failed {failures} of "
                f"{tries} tries",
                file=sys.stderr,
            )
    writer.finish()
    summary = {
        "seed": seed,
        "episodes_per_task": episodes,
        "frames": int(sum(writer.episode_lengths)),
        "action_noise": action_noise,
        "hold_steps": hold_steps,
        "max_steps": max_steps,
        "tasks": per_task,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_dataset_summary(LAB, output, summary)
    return summary


def demonstrate(
    world: MetaWorldTask, configuration: int, action_noise: float, hold_steps: int, max_steps: int
):
    """One expert episode -> (states (L, 39), actions (L, 4), {view: L images}), or None if it did not succeed."""
    world.reset(configuration)
    perturbation = np.random.default_rng([configuration, 1])  # the executed command's noise, its own stream
    states, actions, images = [], [], {key: [] for key, _ in VIEWS}
    while world.steps < max_steps and not (world.success and world.steps >= world.succeeded_at + hold_steps):
        observation = world.observation()
        action = world.expert_action()
        states.append(observation["state"])
        actions.append(action)
        for key, _ in VIEWS:
            images[key].append(observation["images"][key])
        executed = action.copy()
        if action_noise:
            executed[:3] += action_noise * perturbation.standard_normal(3)
        world.step(executed)
    return (states, actions, images) if world.success else None


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", default=["mt10"], help="task names or 'mt10'")
    parser.add_argument("--episodes", type=int, default=50, help="successful demonstrations per task")
    parser.add_argument("--seed", type=int, default=0, help="configuration seed of the demonstrations")
    parser.add_argument("--action_noise", type=float, default=0.0, help="σ of the executed motion's noise")
    args = parser.parse_args(argv)
    try:
        tasks = resolve_tasks(args.tasks)
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps(record(args.output, tasks, args.episodes, args.seed, args.action_noise)))


if __name__ == "__main__":
    main()
