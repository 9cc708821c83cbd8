"""Score a checkpoint on Meta-World, closed loop, with the real model and the real-time executor:

    xr0-eval-metaworld --model fixtures/metaworld/mt10 --tasks mt10 --episodes 50
    xr0-eval-metaworld --model fixtures/metaworld/mt10 --tasks reach push --mode async --latency_ms 200 \\
        --max_steps 500 --results_file runs/metaworld/async-200.json

prints one JSON line per task, then one for all of them (last): the success rate with its 95% Wilson interval,
the mean steps to success, and `expert_success_rate`, the scripted expert's success on the same configurations
(its episodes need no rendering, so they cost little).

Time is simulated (`xr0_client.realtime.simulate_episode`): each chunk is computed from the observation of the tick
it was requested at and becomes usable `--latency_ms` later. `--mode sync`: after `--execute_steps` actions the
arm holds still (no motion, the gripper keeps its last command) until the next chunk arrives. `--mode async`: the
arm keeps executing its committed actions (`--commit_steps`, default: the latency in ticks), which condition the
next chunk as `--prefix_mode` says (`trained`, `guided` or `none`; default: `trained` for a checkpoint trained
with prefixes, else `none`; see `xr0-eval-reach`). Episodes stop at success or after `--max_steps` (default 250: the experts succeed within
50-190 steps).

Episode i of a task runs on `configuration_seed(--seed, task, i)`; the seed that recorded the checkpoint's
demonstrations is refused, so evaluation configurations differ from training ones. `--goal_jump FIRST LAST`
(reach, push, pick-place) moves the goal once to a random position of the task's goal space at a tick drawn in
[FIRST, LAST]; success then counts only after the jump, and the lines report the steps from the jump to success.
`--results_file` keeps every episode and resumes an interrupted run; `--video all|failures` writes MP4s of the
corner view to `--video_dir`.
"""

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from xr0_client.evaluation import VIDEO_CHOICES, EpisodeVideo, ResultsError, ResultsFile
from xr0_common.cli import ArgumentParser, exit_on_interrupt

from ..labs import evaluate as closed_loop
from .env import CONTROL_HZ, EXECUTE_STEPS, LAB, MAX_EPISODE_STEPS, MT10, MetaWorldTask, configuration_seed
from .env import resolve_tasks as resolve_task_names

logger = logging.getLogger("xr0.eval_metaworld")
SUITE = "metaworld"
GOAL_TASKS = ("reach-v3", "push-v3", "pick-place-v3")  # tasks whose success is distance to a free goal
VIDEO_EVERY = 2  # ticks per video frame: 40 fps


class GoalJump:
    """One goal move per episode, at a tick drawn in [first, last] from the episode's configuration seed."""

    def __init__(self, first: int, last: int):
        if not 1 <= first <= last:
            raise ValueError(f"goal_jump must be two ticks 1 <= FIRST <= LAST, got {first} {last}")
        self.first, self.last = first, last

    def plan(self, world: MetaWorldTask, configuration: int) -> tuple:
        """(tick, new goal (3,)) for this episode."""
        rng = np.random.default_rng([configuration, 7])
        return int(rng.integers(self.first, self.last + 1)), world.random_goal(rng)


def run_episode(
    world: MetaWorldTask,
    configuration: int,
    max_steps: int,
    act,
    jump: Optional[GoalJump] = None,
    on_step=None,
) -> dict:
    """Resets `world` to `configuration` and runs `act(step_world, done)` (the policy's or the expert's loop) until
    success or `max_steps`; with `jump`, the goal moves once and only success after it counts."""
    world.reset(configuration)
    jump_tick, new_goal = jump.plan(world, configuration) if jump is not None else (None, None)
    succeeded_at = None

    def step_world(action) -> None:
        nonlocal succeeded_at
        if jump_tick is not None and world.steps == jump_tick:
            world.move_goal(new_goal)
        world.step(action)
        jumped = jump_tick is None or world.steps > jump_tick
        if succeeded_at is None and jumped and world.succeeding:
            succeeded_at = world.steps
        if on_step is not None:
            on_step(world)

    def done() -> bool:
        return succeeded_at is not None or world.steps >= max_steps

    act(step_world, done)
    return {
        "success": succeeded_at is not None,
        "steps": succeeded_at if succeeded_at is not None else world.steps,
        "jump_tick": jump_tick,
        "steps_after_jump": succeeded_at - jump_tick if succeeded_at is not None and jump_tick else None,
    }


def expert_loop(world: MetaWorldTask):
    def act(step_world, done) -> None:
        while not done():
            step_world(world.expert_action())

    return act


def policy_loop(
    world: MetaWorldTask,
    policy,
    configuration: int,
    mode: str,
    latency_s: float,
    execute_steps: int,
    commit_steps: int,
    max_steps: int,
    metrics_out: dict,
    prefix_mode: str = "trained",
):
    def act(step_world, done) -> None:
        metrics = closed_loop.run_policy_episode(
            LAB,
            policy,
            world.observation,
            step_world,
            configuration,
            mode=mode,
            latency_s=latency_s,
            execute_steps=execute_steps,
            commit_steps=commit_steps,
            max_ticks=max_steps + 1,  # the action of the last tick acts when the next begins
            until=done,
            prefix_mode=prefix_mode,
        )
        metrics_out.update(
            idle_ticks=metrics.idle_ticks,
            chunks=metrics.chunks,
            seam_jump=closed_loop.mean_or_none(metrics.seam_deltas),
        )

    return act


def task_line(task: str, episodes: list) -> dict:
    """The JSON line of one task (or of all, task 'all'): policy and expert on the same configurations."""
    expert = sum(e["expert_success"] for e in episodes)
    steps = [e["steps"] for e in episodes if e["success"]]
    expert_steps = [e["expert_steps"] for e in episodes if e["expert_success"]]
    after = [e["steps_after_jump"] for e in episodes if e.get("steps_after_jump") is not None]
    expert_after = [
        e["expert_steps_after_jump"] for e in episodes if e.get("expert_steps_after_jump") is not None
    ]
    line = {
        "task": task,
        "instruction": MT10.get(task),
        **closed_loop.success_fields(sum(e["success"] for e in episodes), len(episodes)),
        "mean_steps_to_success": closed_loop.mean_or_none(steps),
        "expert_success_rate": expert / len(episodes),
        "expert_mean_steps_to_success": closed_loop.mean_or_none(expert_steps),
        "idle_ticks_per_episode": float(np.mean([e["idle_ticks"] for e in episodes])),
        "seam_jump": closed_loop.mean_or_none(
            [e["seam_jump"] for e in episodes if e.get("seam_jump") is not None]
        ),
    }
    if any(e.get("jump_tick") is not None for e in episodes):
        line["mean_steps_after_jump"] = closed_loop.mean_or_none(after)
        line["expert_mean_steps_after_jump"] = closed_loop.mean_or_none(expert_after)
    return line


def overall_line(episodes: list, **fields) -> dict:
    """The line of all tasks together (then `fields`), with the policy's success as a fraction of the expert's."""
    line = {**task_line("all", episodes), **fields}
    line["success_relative_to_expert"] = (
        line["success_rate"] / line["expert_success_rate"] if line["expert_success_rate"] else None
    )
    return line


def evaluate(
    policy,
    tasks: list,
    episodes: int,
    seed: int = 1,
    mode: str = "async",
    latency_ms: float = 0.0,
    max_steps: int = 250,
    execute_steps: int = EXECUTE_STEPS,
    commit_steps: Optional[int] = None,
    goal_jump: Optional[tuple] = None,
    results: Optional[ResultsFile] = None,
    video: str = "none",
    video_dir: Optional[Path] = None,
    prefix_mode: Optional[str] = None,
) -> list:
    """Runs the episodes (skipping those `results` already holds); returns the JSON lines (per task, then all).
    `prefix_mode` None is the checkpoint's default (`executor_prefix_mode`)."""
    prefix_mode, commit_steps = closed_loop.execution_settings(
        LAB, policy, episodes, mode, latency_ms, execute_steps, commit_steps, prefix_mode
    )
    if not 1 <= max_steps <= MAX_EPISODE_STEPS:
        raise ValueError(
            f"max_steps must be in [1, {MAX_EPISODE_STEPS}] (Meta-World's limit), got {max_steps}"
        )
    jump = GoalJump(*goal_jump) if goal_jump is not None else None
    if jump is not None and set(tasks) - set(GOAL_TASKS):
        raise ValueError(
            f"goal jumps are defined for {list(GOAL_TASKS)}, not {sorted(set(tasks) - set(GOAL_TASKS))}"
        )
    results = results or ResultsFile(None, {})
    for task in tasks:
        world = MetaWorldTask(task)
        try:
            for episode in range(episodes):
                if results.done(SUITE, task, episode):
                    continue
                start = time.perf_counter()
                configuration = configuration_seed(seed, task, episode)
                expert = run_episode(world, configuration, max_steps, expert_loop(world), jump)
                metrics, recorder = {}, VideoRecorder(video, video_dir, task, episode)
                outcome = run_episode(
                    world,
                    configuration,
                    max_steps,
                    policy_loop(
                        world,
                        policy,
                        configuration,
                        mode,
                        latency_ms / 1e3,
                        execute_steps,
                        commit_steps,
                        max_steps,
                        metrics,
                        prefix_mode,
                    ),
                    jump,
                    on_step=recorder.add if recorder.active else None,
                )
                results.add(
                    {
                        "suite": SUITE,
                        "task": task,
                        "instruction": MT10[task],
                        "episode": episode,
                        "seed": configuration,
                        **outcome,
                        **metrics,
                        "expert_success": expert["success"],
                        "expert_steps": expert["steps"],
                        "expert_steps_after_jump": expert["steps_after_jump"],
                        "seconds": round(time.perf_counter() - start, 2),
                        "video": recorder.finish(outcome["success"]),
                    }
                )
                logger.info(
                    "%s #%d: %s in %d steps (expert: %s)",
                    task,
                    episode,
                    "success" if outcome["success"] else "failure",
                    outcome["steps"],
                    "success" if expert["success"] else "failure",
                )
        finally:
            world.close()
    mine = [e for e in results.episodes if e["task"] in tasks and e["episode"] < episodes]
    lines = [task_line(task, [e for e in mine if e["task"] == task]) for task in tasks]
    return lines + [overall_line(mine, tasks=len(tasks))]


class VideoRecorder:
    """The corner view of one episode as an MP4 (`--video all|failures`), one frame every VIDEO_EVERY ticks."""

    def __init__(self, video: str, directory: Optional[Path], task: str, episode: int):
        self.video = video
        self.active = video != "none" and directory is not None
        self._file = (
            EpisodeVideo(Path(directory) / f"{task}-{episode:03d}.mp4", fps=CONTROL_HZ // VIDEO_EVERY)
            if self.active
            else None
        )

    def add(self, world: MetaWorldTask) -> None:
        if world.steps % VIDEO_EVERY == 0:
            self._file.add(world.render("corner"))

    def finish(self, success: bool) -> Optional[str]:
        if not self.active:
            return None
        path = self._file.finish(keep=self.video == "all" or not success)
        return str(path) if path is not None else None


def main(argv=None) -> None:
    from ..deploy.policy import executor_prefix_mode, guidance_from_arguments, guidance_settings

    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="checkpoint directory, e.g. fixtures/metaworld/mt10")
    parser.add_argument(
        "--tasks", nargs="+", default=["mt10"], help="task names (reach, push-v3, ...) or mt10"
    )
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task")
    parser.add_argument("--seed", type=int, default=1, help="configuration seed (not the demonstrations')")
    closed_loop.add_execution_arguments(parser, execute_steps=EXECUTE_STEPS)
    parser.add_argument(
        "--max_steps", type=int, default=250, help="steps per episode (Meta-World: at most 500)"
    )
    parser.add_argument(
        "--goal_jump", type=int, nargs=2, default=None, metavar=("FIRST", "LAST"), help="move the goal once"
    )
    parser.add_argument(
        "--results_file", type=Path, default=None, help="JSON of every episode; resumes a run"
    )
    parser.add_argument("--video", choices=VIDEO_CHOICES, default="none")
    parser.add_argument("--video_dir", type=Path, default=Path("runs/metaworld/videos"))
    args = parser.parse_args(argv)
    try:
        tasks = resolve_task_names(args.tasks)
    except ValueError as error:
        parser.error(str(error))
    recorded = closed_loop.training_record(args.model, LAB.summary_file) or {}
    closed_loop.refuse_the_training_seed(parser, args.seed, recorded.get("seed"), "configurations")
    from ..configuration_xr0 import XR0Config  # after parsing: it loads transformers
    from ..deploy.policy import checkpoint_identity

    try:
        guidance = guidance_from_arguments(args)
        args.prefix_mode = executor_prefix_mode(
            args.prefix_mode, args.mode, XR0Config.from_pretrained(args.model)
        )
    except (ValueError, OSError) as error:
        parser.error(str(error))
    settings = {
        key: getattr(args, key)
        for key in ("seed", "mode", "latency_ms", "max_steps", "execute_steps", "commit_steps", "goal_jump")
    }
    settings["prefix_mode"] = args.prefix_mode
    if args.prefix_mode == "guided":
        settings["guidance"] = guidance_settings(guidance)
    try:
        results = ResultsFile(
            args.results_file,
            {"benchmark": SUITE, "checkpoint": checkpoint_identity(args.model), "settings": settings},
        )
    except ResultsError as error:
        parser.error(str(error))
    policy = closed_loop.load(args.model, args.device, guidance)
    start, resumed = time.perf_counter(), len(results.episodes)
    with exit_on_interrupt(lambda: f"{len(results.episodes)} episodes recorded in {args.results_file}"):
        try:
            lines = evaluate(
                policy,
                tasks,
                args.episodes,
                args.seed,
                args.mode,
                args.latency_ms,
                args.max_steps,
                args.execute_steps,
                args.commit_steps,
                tuple(args.goal_jump) if args.goal_jump else None,
                results,
                args.video,
                args.video_dir,
                args.prefix_mode,
            )
        except ValueError as error:
            parser.error(str(error))
    minutes = (time.perf_counter() - start) / 60
    run_here = len(results.episodes) - resumed
    lines[-1].update(settings, model=args.model, episodes_per_minute=round(run_here / max(minutes, 1e-9), 1))
    for line in lines:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
