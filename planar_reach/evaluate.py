"""Score a checkpoint on PlanarReach, closed loop, with the real model and the real-time executor:

    xr0-eval-reach --model fixtures/planar-reach/async-lambda --episodes 200 --mode async --latency_ms 100 \\
        --target_speed 0.2
    xr0-eval-reach --model fixtures/planar-reach/sync --mode sync --latency_ms 200 --jump_at 15 30

prints one JSON line: the success rate with its 95% (Wilson) interval, the mean time to success, idle ticks, the
mean seam jump (|a_t - a_{t-1}| where a new chunk takes over) and the settings; with `--jump_at`, the reaction
time (control ticks from the jump until the executed velocity points within 30° of the new target) and the ticks
from the jump to success.

Time is simulated (`xr0_client.realtime.simulate_episode`): each chunk is computed from the observation of the tick
it was requested at and becomes usable `--latency_ms` later. `--mode sync`: after `--execute_steps` actions the arm
stops (zero velocity) until the next chunk arrives. `--mode async`: the arm keeps executing its committed actions
(`--commit_steps`, default: the latency in ticks, at least 1), which condition the next chunk as `--prefix_mode`
says: `trained` (the committed actions as prefix: checkpoints post-trained with prefixes), `guided` (guided
inpainting of the current chunk's overlap: any checkpoint; `--guidance_jacobian`, `--max_guidance_weight`,
`--mask_schedule`) or `none` (blind switching); the default is `trained` for a checkpoint trained with prefixes,
else `none`. The world
(targets included) advances one tick per action sent, the observation of tick t shows it at t; it waits for the
very first chunk of an episode, which costs the same in both modes.

Episode i uses layout `layout_seed(--seed, i)`; the seed that recorded a checkpoint's demonstrations is refused,
so evaluation layouts differ from training layouts. The observation tier (`--observation`, env.py) is the
checkpoint's own by default; another tier is refused, since its state and scene differ from what it learned.
"""

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from xr0_common.cli import ArgumentParser

from ..labs import evaluate as closed_loop
from ..labs.report import save_gif
from .env import DEFAULT_SETTINGS, LAB, OBSERVATIONS, PlanarReachEnv, ReachSettings, layout_seed

REACTION_ANGLE_DEGREES = (
    30.0  # reaction time: ticks from a jump until the executed velocity points this close
)


def trained_on(model_dir) -> dict:
    """The demonstrations a checkpoint was trained on, as its `planar_reach.json` records them ({} if it has none):
    their layout `seed` and `observation` tier (checkpoints from before the tiers: `images_named`)."""
    dataset = closed_loop.training_record(model_dir, LAB.summary_file)
    if dataset is None:
        return {}
    return {"seed": dataset.get("seed"), "observation": dataset.get("observation", "images_named")}


def run_episode(
    policy,
    env: PlanarReachEnv,
    layout: int,
    mode: str,
    latency_s: float,
    execute_steps: int,
    commit_steps: int,
    frames: Optional[list] = None,
    prefix_mode: str = "trained",
) -> dict:
    """One episode; `frames`, when given, collects (top view, wrist view) per tick for a GIF."""
    env.reset(layout)
    if frames is not None:
        frames.append((env.render_top(), env.render_wrist()))
    aimed_at = None  # the first tick after a jump at which the executed velocity points at the new target

    def step_world(action) -> None:
        nonlocal aimed_at
        if env.jumped and aimed_at is None and aims_at(action, env.goal_position - env.effector):
            aimed_at = env.steps
        env.step(action)
        if frames is not None:
            frames.append((env.render_top(), env.render_wrist()))

    metrics = closed_loop.run_policy_episode(
        LAB,
        policy,
        env.observation,
        step_world,
        layout,
        mode=mode,
        latency_s=latency_s,
        execute_steps=execute_steps,
        commit_steps=commit_steps,
        max_ticks=env.settings.max_steps,
        until=lambda: env.success,
        prefix_mode=prefix_mode,
        control_hz=env.settings.control_hz,
    )
    return {
        "success": env.success,
        "time_to_success_s": env.succeeded_at / env.settings.control_hz if env.success else None,
        "idle_ticks": metrics.idle_ticks,
        "seam_deltas": metrics.seam_deltas,
        "inner_deltas": metrics.inner_deltas,
        "chunks": metrics.chunks,
        "jumped": env.jumped,
        "reaction_ticks": aimed_at - env.jump_tick if aimed_at is not None else None,
        "ticks_after_jump": env.succeeded_at - env.jump_tick if env.jumped and env.success else None,
    }


def aims_at(velocity, direction, within_degrees: float = REACTION_ANGLE_DEGREES) -> bool:
    """Whether a (2,) velocity points within `within_degrees` of `direction` (a standing arm aims nowhere)."""
    speed, distance = np.linalg.norm(velocity), np.linalg.norm(direction)
    if speed < 1e-6 or distance < 1e-9:
        return False
    return float(velocity @ direction) / (speed * distance) >= math.cos(math.radians(within_degrees))


def evaluate(
    policy,
    episodes: int,
    seed: int = 1,
    mode: str = "async",
    latency_ms: float = 0.0,
    target_speed: float = 0.0,
    execute_steps: int = 10,
    commit_steps: Optional[int] = None,
    settings: ReachSettings = DEFAULT_SETTINGS,
    gif: Optional[Path] = None,
    observation: Optional[str] = None,
    jump_at: Optional[tuple] = None,
    prefix_mode: Optional[str] = None,
) -> dict:
    """`episodes` episodes on layouts `layout_seed(seed, i)`; `observation` (the tier) and `jump_at` replace the
    fields of `settings`; `prefix_mode` None is the checkpoint's default (`executor_prefix_mode`). Returns the
    JSON line's numbers."""
    from ..deploy.policy import guidance_settings

    changes = {"target_speed": target_speed, "jump_at": jump_at}
    if observation is not None and observation != settings.observation:
        changes.update(observation=observation, num_targets=None)  # the tier's own count of targets
    env = PlanarReachEnv(replace(settings, **changes))
    prefix_mode, commit_steps = closed_loop.execution_settings(
        LAB,
        policy,
        episodes,
        mode,
        latency_ms,
        execute_steps,
        commit_steps,
        prefix_mode,
        control_hz=env.settings.control_hz,
    )
    start = time.perf_counter()
    results = []
    for episode in range(episodes):
        frames = [] if gif is not None and episode == 0 else None
        results.append(
            run_episode(
                policy,
                env,
                layout_seed(seed, episode),
                mode,
                latency_ms / 1e3,
                execute_steps,
                commit_steps,
                frames,
                prefix_mode,
            )
        )
        if frames is not None:
            write_gif(gif, frames, f"{mode} {latency_ms:g} ms: {env.instruction}", results[-1]["success"])
    elapsed = time.perf_counter() - start
    times = [r["time_to_success_s"] for r in results if r["success"]]
    jumps = jump_statistics(results) if jump_at is not None else {}
    return {
        **closed_loop.success_fields(sum(r["success"] for r in results), episodes),
        "mean_time_to_success_s": closed_loop.mean_or_none(times),
        "idle_ticks_per_episode": float(np.mean([r["idle_ticks"] for r in results])),
        "seam_jump": closed_loop.mean_or_none([d for r in results for d in r["seam_deltas"]]),
        "mean_inner_jump": closed_loop.mean_or_none([d for r in results for d in r["inner_deltas"]]),
        "chunks_per_episode": float(np.mean([r["chunks"] for r in results])),
        **jumps,
        "mode": mode,
        "prefix_mode": prefix_mode,
        **({"guidance": guidance_settings(policy.guidance)} if prefix_mode == "guided" else {}),
        "latency_ms": latency_ms,
        "target_speed": target_speed,
        "observation": env.settings.observation,
        "jump_at": list(jump_at) if jump_at is not None else None,
        "execute_steps": execute_steps,
        "commit_steps": commit_steps if mode == "async" else 0,
        "seed": seed,
        "episodes_per_minute": round(60 * episodes / elapsed, 1),
    }


def jump_statistics(results: list) -> dict:
    """Reaction to the jumps: ticks until the executed velocity pointed at the new target (episodes that did, and
    how many did), ticks from the jump to success."""
    jumped = [r for r in results if r["jumped"]]
    reactions = [r["reaction_ticks"] for r in jumped if r["reaction_ticks"] is not None]
    after = [r["ticks_after_jump"] for r in jumped if r["ticks_after_jump"] is not None]
    return {
        "jumped_episodes": len(jumped),
        "reacted_episodes": len(reactions),
        "mean_reaction_ticks": closed_loop.mean_or_none(reactions),
        "median_reaction_ticks": float(np.median(reactions)) if reactions else None,
        "mean_ticks_to_success_after_jump": closed_loop.mean_or_none(after),
    }


def write_gif(path: Path, frames: list, title: str, success: bool) -> None:
    """Top and wrist views side by side, every other tick (15 fps), with the title and the outcome."""
    from PIL import Image, ImageDraw

    images = []
    for top, wrist in frames[::2]:
        height, width = top.shape[:2]
        canvas = Image.new("RGB", (2 * width, height + 14), (255, 255, 255))
        canvas.paste(Image.fromarray(top), (0, 14))
        canvas.paste(Image.fromarray(wrist), (width, 14))
        ImageDraw.Draw(canvas).text((2, 1), title, fill=(0, 0, 0))
        images.append(canvas)
    marker = ImageDraw.Draw(images[-1])
    marker.text(
        (2 * width - 60, 1), "success" if success else "timeout", fill=(0, 140, 0) if success else (200, 0, 0)
    )
    save_gif(path, images, frame_ms=66)


def main(argv=None) -> None:
    from ..deploy.policy import guidance_from_arguments

    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--model", required=True, help="checkpoint directory, e.g. fixtures/planar-reach/async-lambda"
    )
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1, help="layout seed (not the one of the demonstrations)")
    parser.add_argument(
        "--target_speed", type=float, default=0.0, help="workspace units per second (0 = static)"
    )
    closed_loop.add_execution_arguments(parser, execute_steps=10)
    parser.add_argument(
        "--observation",
        choices=OBSERVATIONS,
        default=None,
        help="observation tier (default: the checkpoint's; another one is refused)",
    )
    parser.add_argument(
        "--jump_at",
        type=int,
        nargs=2,
        default=None,
        metavar=("FIRST", "LAST"),
        help="the named target teleports once, at a tick drawn in [FIRST, LAST]",
    )
    parser.add_argument("--gif", type=Path, default=None, help="write the first episode as a GIF")
    args = parser.parse_args(argv)
    try:
        guidance = guidance_from_arguments(args)
    except ValueError as error:
        parser.error(str(error))
    recorded = trained_on(args.model)
    closed_loop.refuse_the_training_seed(parser, args.seed, recorded.get("seed"), "layouts")
    trained_tier = recorded.get("observation")
    if args.observation is None:
        args.observation = trained_tier or DEFAULT_SETTINGS.observation
    elif trained_tier is not None and args.observation != trained_tier:
        parser.error(
            f"--observation {args.observation}: this checkpoint was trained on the {trained_tier} tier (its state "
            "and scene differ); evaluate it on that tier"
        )
    try:
        ReachSettings(observation=args.observation, jump_at=tuple(args.jump_at) if args.jump_at else None)
    except ValueError as error:
        parser.error(str(error))
    policy = closed_loop.load(args.model, args.device, guidance)
    try:
        result = evaluate(
            policy,
            args.episodes,
            args.seed,
            args.mode,
            args.latency_ms,
            args.target_speed,
            args.execute_steps,
            args.commit_steps,
            gif=args.gif,
            observation=args.observation,
            jump_at=tuple(args.jump_at) if args.jump_at else None,
            prefix_mode=args.prefix_mode,
        )
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps({"model": args.model, **result}))


if __name__ == "__main__":
    main()
