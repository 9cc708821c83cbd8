"""What every lab's evaluation shares: a policy episode on the simulated clock with its seeded requests, the
execution settings and their checks, success with its 95% Wilson interval, the checkpoint's training record.

Time is simulated (`xr0_client.realtime.simulate_episode`): each chunk is computed from the observation of the tick
it was requested at and becomes usable `latency_ms` later; "sync" waits with the lab's safe action after
`execute_steps` actions, "async" keeps executing the committed actions (`commit_steps`, default: the latency in
ticks), which condition the next chunk as the prefix mode says.
"""

import json
from pathlib import Path
from typing import Optional

import numpy as np

from xr0_client.evaluation import wilson_interval
from xr0_client.realtime import PREFIX_MODES as EXECUTOR_PREFIX_MODES
from xr0_client.realtime import ExecutionMetrics, LocalChunkSource, default_commit_steps, simulate_episode

from .task import LabTask

MODES = ("sync", "async")


def request_seed(episode_seed: int, request: int) -> int:
    """The noise seed of the `request`-th chunk request (1, 2, ...) of an episode: an evaluation is a function of
    its episode seeds."""
    return (episode_seed * 1000 + request) % 2**63


def run_policy_episode(
    lab: LabTask,
    policy,
    observe,
    step_world,
    episode_seed: int,
    *,
    mode: str,
    latency_s: float,
    execute_steps: int,
    commit_steps: int,
    max_ticks: int,
    until,
    prefix_mode: str,
    control_hz: Optional[float] = None,
) -> ExecutionMetrics:
    """One episode of `policy` (an `XR0Policy`, or anything with `infer(request) -> {"actions": (T, D)}`):
    `observe()` -> the request of this tick (without its seed), `step_world(action (lab.action_dim,))` once per
    tick, until `until()` or `max_ticks`. `control_hz` None: the lab's."""
    requests = 0

    def seeded_observation() -> dict:
        nonlocal requests
        requests += 1
        return dict(observe(), seed=request_seed(episode_seed, requests))

    return simulate_episode(
        LocalChunkSource(policy),
        seeded_observation,
        step_world,
        control_hz=control_hz or lab.control_hz,
        latency_s=latency_s,
        mode=mode,
        execute_steps=execute_steps,
        commit_steps=commit_steps,
        max_ticks=max_ticks,
        until=until,
        safe_action=lab.safe_action,
        action_dim=lab.action_dim,
        prefix_mode=prefix_mode,
    )


def execution_settings(
    lab: LabTask,
    policy,
    episodes: int,
    mode: str,
    latency_ms: float,
    execute_steps: int,
    commit_steps: Optional[int],
    prefix_mode: Optional[str],
    control_hz: Optional[float] = None,
) -> tuple:
    """(prefix mode, commit steps) of a run, each refused with the field's name when out of range: `prefix_mode`
    None is the checkpoint's default (`executor_prefix_mode`), `commit_steps` None the latency in ticks."""
    from ..deploy.policy import executor_prefix_mode

    if mode not in MODES:
        raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
    prefix_mode = executor_prefix_mode(prefix_mode, mode, policy.model.config)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not 0 <= latency_ms <= 10_000:
        raise ValueError(f"latency_ms must be in [0, 10000], got {latency_ms}")
    chunk_length = policy.processor.chunk_length(lab.robot_type)
    if not 1 <= execute_steps < chunk_length:
        raise ValueError(f"execute_steps must be in [1, {chunk_length}), got {execute_steps}")
    if commit_steps is None:
        commit_steps = default_commit_steps(latency_ms, control_hz or lab.control_hz)
    if mode == "async" and not 1 <= commit_steps <= chunk_length - execute_steps:
        raise ValueError(
            f"commit_steps must be in [1, {chunk_length - execute_steps}] (chunk length {chunk_length} minus "
            f"execute_steps {execute_steps}), got {commit_steps} (the latency of {latency_ms:g} ms in ticks "
            "unless given)"
        )
    return prefix_mode, commit_steps


def success_fields(successes: int, episodes: int) -> dict:
    """The success fields of a results line: rate, its 95% Wilson interval (4 decimals), counts."""
    low, high = wilson_interval(successes, episodes)
    return {
        "success_rate": successes / episodes,
        "success_ci95": [round(low, 4), round(high, 4)],
        "successes": successes,
        "episodes": episodes,
    }


def mean_or_none(values) -> Optional[float]:
    """The mean of `values`, None when there are none (e.g. the steps to success of a run without a success)."""
    return float(np.mean(values)) if len(values) else None


def training_record(model_dir, summary_file: str) -> Optional[dict]:
    """The `dataset` entry of a checkpoint's training record (`summary_file` in its folder; None without one): the
    seed of its demonstrations, which an evaluation refuses, and their settings."""
    path = Path(model_dir) / summary_file
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("dataset", {})


def refuse_the_training_seed(parser, seed: int, recorded_seed: Optional[int], episodes_are: str) -> None:
    """Exits (status 2) when `seed` recorded the checkpoint's demonstrations: evaluations run on other episodes
    (`episodes_are`: what a seed draws, e.g. "layouts")."""
    if recorded_seed is not None and recorded_seed == seed:
        parser.error(
            f"--seed {seed} recorded this checkpoint's demonstrations: evaluate on other {episodes_are} (another "
            "seed)"
        )


def add_execution_arguments(parser, execute_steps: int) -> None:
    """The options every lab evaluation takes: execution mode, latency, re-planning, prefix, device."""
    from ..deploy.policy import add_prefix_mode_arguments

    parser.add_argument("--mode", choices=MODES, default="async")
    parser.add_argument("--latency_ms", type=float, default=0.0, help="simulated inference latency")
    parser.add_argument(
        "--execute_steps", type=int, default=execute_steps, help="actions of a chunk before the next request"
    )
    parser.add_argument(
        "--commit_steps", type=int, default=None, help="async prefix length (default: latency in ticks)"
    )
    add_prefix_mode_arguments(parser, EXECUTOR_PREFIX_MODES)
    parser.add_argument("--device", default="cpu")


def load(model: str, device: str = "cpu", guidance=None):
    """The policy of a checkpoint directory in float32 (evaluations compare runs; bf16 would add its own noise)."""
    import torch

    from ..deploy.policy import load_policy

    return load_policy(model, device, torch.float32, guidance)
