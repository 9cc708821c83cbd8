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

from xr0_client.cli import ArgumentParser
from xr0_client.evaluation import wilson_interval
from xr0_client.realtime import PREFIX_MODES as EXECUTOR_PREFIX_MODES
from xr0_client.realtime import LocalChunkSource, default_commit_steps, simulate_episode

from .env import DEFAULT_SETTINGS, OBSERVATIONS, PlanarReachEnv, ReachSettings, layout_seed

REACTION_ANGLE_DEGREES = (
    30.0  # reaction time: ticks from a jump until the executed velocity points this close
)


def training_record(model_dir) -> dict:
    """The demonstrations a checkpoint was trained on, as its `planar_reach.json` records them ({} if it has none):
    their layout `seed` and `observation` tier (checkpoints from before the tiers: `images_named`)."""
    path = Path(model_dir) / "planar_reach.json"
    if not path.is_file():
        return {}
    dataset = json.loads(path.read_text()).get("dataset", {})
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
    requests = 0
    aimed_at = None  # the first tick after a jump at which the executed velocity points at the new target

    def observe() -> dict:
        nonlocal requests
        requests += 1
        # An explicit noise seed per request: the evaluation is deterministic per layout.
        return dict(env.observation(), seed=layout * 1000 + requests)

    def step_world(action) -> None:
        nonlocal aimed_at
        if env.jumped and aimed_at is None and aims_at(action, env.goal_position - env.effector):
            aimed_at = env.steps
        env.step(action)
        if frames is not None:
            frames.append((env.render_top(), env.render_wrist()))

    metrics = simulate_episode(
        LocalChunkSource(policy),
        observe,
        step_world,
        control_hz=env.settings.control_hz,
        latency_s=latency_s,
        mode=mode,
        execute_steps=execute_steps,
        commit_steps=commit_steps,
        max_ticks=env.settings.max_steps,
        until=lambda: env.success,
        safe_action="zero",  # velocity control: an arm with nothing to do stops
        action_dim=2,
        prefix_mode=prefix_mode,
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
    from ..deploy.policy import executor_prefix_mode, guidance_settings

    if mode not in ("sync", "async"):
        raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
    prefix_mode = executor_prefix_mode(prefix_mode, mode, policy.model.config)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not (0 <= latency_ms <= 10_000):
        raise ValueError(f"latency_ms must be in [0, 10000], got {latency_ms}")
    changes = {"target_speed": target_speed, "jump_at": jump_at}
    if observation is not None and observation != settings.observation:
        changes.update(observation=observation, num_targets=None)  # the tier's own count of targets
    env = PlanarReachEnv(replace(settings, **changes))
    chunk_length = policy.processor.chunk_length("planar_reach")
    if not 1 <= execute_steps < chunk_length:
        raise ValueError(f"execute_steps must be in [1, {chunk_length}), got {execute_steps}")
    if commit_steps is None:
        commit_steps = default_commit_steps(latency_ms, env.settings.control_hz)
    if mode == "async" and not 1 <= commit_steps <= chunk_length - execute_steps:
        raise ValueError(
            f"commit_steps must be in [1, {chunk_length - execute_steps}] (chunk length {chunk_length} minus "
            f"execute_steps {execute_steps}), got {commit_steps}"
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
    successes = sum(r["success"] for r in results)
    times = [r["time_to_success_s"] for r in results if r["success"]]
    seams = [d for r in results for d in r["seam_deltas"]]
    inner = [d for r in results for d in r["inner_deltas"]]
    low, high = wilson_interval(successes, episodes)
    jumps = jump_statistics(results) if jump_at is not None else {}
    return {
        "success_rate": successes / episodes,
        "success_ci95": [round(low, 4), round(high, 4)],
        "successes": successes,
        "episodes": episodes,
        "mean_time_to_success_s": float(np.mean(times)) if times else None,
        "idle_ticks_per_episode": float(np.mean([r["idle_ticks"] for r in results])),
        "seam_jump": float(np.mean(seams)) if seams else None,
        "mean_inner_jump": float(np.mean(inner)) if inner else None,
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
        "mean_reaction_ticks": float(np.mean(reactions)) if reactions else None,
        "median_reaction_ticks": float(np.median(reactions)) if reactions else None,
        "mean_ticks_to_success_after_jump": float(np.mean(after)) if after else None,
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
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=66, loop=0, optimize=True)


def load(model: str, device: str = "cpu", guidance=None):
    import torch

    from ..deploy.policy import load_policy

    return load_policy(model, device, torch.float32, guidance)


def main(argv=None) -> None:
    from ..deploy.policy import add_prefix_mode_arguments, guidance_from_arguments

    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--model", required=True, help="checkpoint directory, e.g. fixtures/planar-reach/async-lambda"
    )
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1, help="layout seed (not the one of the demonstrations)")
    parser.add_argument("--mode", choices=("sync", "async"), default="async")
    parser.add_argument("--latency_ms", type=float, default=0.0, help="simulated inference latency")
    parser.add_argument(
        "--target_speed", type=float, default=0.0, help="workspace units per second (0 = static)"
    )
    parser.add_argument(
        "--execute_steps", type=int, default=10, help="actions of a chunk before the next request"
    )
    parser.add_argument(
        "--commit_steps", type=int, default=None, help="async prefix length (default: latency in ticks)"
    )
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
    add_prefix_mode_arguments(parser, EXECUTOR_PREFIX_MODES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gif", type=Path, default=None, help="write the first episode as a GIF")
    args = parser.parse_args(argv)
    try:
        guidance = guidance_from_arguments(args)
    except ValueError as error:
        parser.error(str(error))
    recorded = training_record(args.model)
    if recorded.get("seed") is not None and recorded["seed"] == args.seed:
        parser.error(
            f"--seed {args.seed} recorded this checkpoint's demonstrations: evaluate on other layouts (another seed)"
        )
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
    policy = load(args.model, args.device, guidance)
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
