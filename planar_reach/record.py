"""Record scripted-expert demonstrations of PlanarReach as a LeRobot v3.0 dataset (robot type `planar_reach`).

    python -m xr0.planar_reach.record --output runs/planar-reach/data --episodes 600 --seed 0 --observation goal_state

Each episode: a layout from `layout_seed(seed, i)`, a target speed (static for half of the episodes, else uniform
in [0.05, --max_target_speed]), the expert acting until it reaches the target and then `hold_steps` (15) ticks more
(it keeps tracking, so chunks near the goal show how to stay on a moving target). Frame t holds the two views and
the state before action t, and action t (the expert's velocity command). `--observation` is the tier (env.py): what
the state holds and how many targets the images show; the summary records it, and training and evaluation refuse
a checkpoint whose tier disagrees.

`--action_noise` σ > 0 makes the arm execute the command plus N(0, σ²) per axis while the dataset keeps the
command (DART, Laskey et al. 2017). Without it the state's velocity is the last command, executed exactly, and the
expert flies straight, so a policy can fit almost every frame by repeating the state's velocity and never learn to
look (planar_reach/README.md, "The perception tiers: what has been measured"); with it the velocity is the perturbed one and the
demonstrations show how to come back on course.
"""

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from xr0_common.cli import ArgumentParser

from ..labs.record import dataset_writer, write_dataset_summary
from .env import (
    ACTION_NAMES,
    DEFAULT_SETTINGS,
    LAB,
    OBSERVATIONS,
    STATE_NAMES,
    PlanarReachEnv,
    ReachSettings,
    ScriptedExpert,
    layout_seed,
)


def record(
    output,
    episodes: int,
    seed: int = 0,
    max_target_speed: float = 0.3,
    moving_fraction: float = 0.5,
    hold_steps: int = 15,
    action_noise: float = 0.0,
    settings: ReachSettings = DEFAULT_SETTINGS,
    observation: Optional[str] = None,
) -> dict:
    """Writes the dataset; returns a summary (also written to `<output>/meta/planar_reach.json`)."""
    if not (np.isfinite(action_noise) and action_noise >= 0):
        raise ValueError(f"action_noise must be a finite standard deviation >= 0, got {action_noise!r}")
    if observation is not None:
        settings = replace(settings, observation=observation, num_targets=None)  # the tier's own count
    start = time.perf_counter()
    writer = dataset_writer(
        LAB,
        output,
        cameras={"top": (settings.image_size,) * 2, "wrist": (settings.image_size,) * 2},
        state_names=STATE_NAMES[settings.observation],
        action_names=ACTION_NAMES,
        control_hz=settings.control_hz,
    )
    speeds, lengths, failures = [], [], 0
    for episode in range(episodes):
        layout = layout_seed(seed, episode)
        rng = np.random.default_rng([layout, 1])  # the speed draw, apart from the layout's own stream
        speed = float(rng.uniform(0.05, max_target_speed)) if rng.random() < moving_fraction else 0.0
        env = PlanarReachEnv(replace(settings, target_speed=speed))
        env.reset(layout)
        expert = ScriptedExpert(env)
        perturbation = np.random.default_rng([layout, 2])  # the executed command's noise, its own stream
        states, actions, tops, wrists = [], [], [], []
        while not env.done or (env.success and env.steps < env.succeeded_at + hold_steps):
            if env.steps >= settings.max_steps:
                break
            request = env.observation()
            action = expert.act()
            states.append(request["state"])
            actions.append(action)
            tops.append(request["images"]["top"])
            wrists.append(request["images"]["wrist"])
            env.step(action + action_noise * perturbation.standard_normal(2) if action_noise else action)
        failures += not env.success
        writer.add_episode(states, actions, {"top": tops, "wrist": wrists}, task=env.instruction)
        speeds.append(speed)
        lengths.append(len(states))
    writer.finish()
    summary = {
        "episodes": episodes,
        "frames": int(sum(lengths)),
        "seed": seed,
        "expert_failures": failures,
        "mean_length": float(np.mean(lengths)),
        "moving_fraction": moving_fraction,
        "max_target_speed": max_target_speed,
        "hold_steps": hold_steps,
        "action_noise": action_noise,
        "observation": settings.observation,
        "settings": settings.__dict__,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_dataset_summary(LAB, output, summary)
    return summary


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0, help="layout seed of the demonstrations")
    parser.add_argument("--max_target_speed", type=float, default=0.3)
    parser.add_argument(
        "--action_noise",
        type=float,
        default=0.0,
        help="σ of the Gaussian noise added to each executed command (the dataset keeps the command)",
    )
    parser.add_argument("--observation", choices=OBSERVATIONS, default=DEFAULT_SETTINGS.observation)
    args = parser.parse_args(argv)
    summary = record(
        args.output,
        args.episodes,
        args.seed,
        args.max_target_speed,
        action_noise=args.action_noise,
        observation=args.observation,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
