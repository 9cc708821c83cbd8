"""Score a checkpoint on PlanarReach, closed loop, with the real model and the real-time executor:

    xr0-eval-reach --model fixtures/planar-reach/async-lambda --episodes 200 --mode async --latency_ms 100 \\
        --target_speed 0.2

prints one JSON line: the success rate with its 95% (Wilson) interval, the mean time to success, idle ticks, the
mean seam jump (|a_t - a_{t-1}| where a new chunk takes over) and the settings.

Time is simulated (`FakeClock` + `SimulatedRunner`): each chunk is computed from the observation of the tick it
was requested at and becomes usable `--latency_ms` later. `--mode sync`: after `--execute_steps` actions the arm
stops (zero velocity) until the next chunk arrives. `--mode async`: the arm keeps executing its committed actions
(`--commit_steps`, default: the latency in ticks, at least 1), which are the next chunk's action prefix. The world
(targets included) advances one tick per action sent, the observation of tick t shows it at t; it waits for the
very first chunk of an episode, which costs the same in both modes. Episode i uses layout `layout_seed(--seed, i)`; the seed that recorded a checkpoint's
demonstrations is refused, so evaluation layouts differ from training layouts.
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
from xr0_client.realtime import FakeClock, LocalChunkSource, RealtimeExecutor, SimulatedRunner

from .env import DEFAULT_SETTINGS, PlanarReachEnv, ReachSettings, layout_seed

# A latency of k ticks must arrive on the k-th tick, not one later because k·dt rounds up by an ulp.
TICK_ROUNDING = 1e-9


def training_seed(model_dir) -> Optional[int]:
    """The layout seed of the demonstrations a checkpoint was trained on, when it records one."""
    path = Path(model_dir) / "planar_reach.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("dataset", {}).get("seed")


def default_commit_steps(latency_ms: float, control_hz: float) -> int:
    return max(1, math.ceil(latency_ms / 1e3 * control_hz - 1e-6))


def run_episode(
    policy,
    env: PlanarReachEnv,
    layout: int,
    mode: str,
    latency_s: float,
    execute_steps: int,
    commit_steps: int,
    frames: Optional[list] = None,
) -> dict:
    """One episode; `frames`, when given, collects (top view, wrist view) per tick for a GIF."""
    env.reset(layout)
    if frames is not None:
        frames.append((env.render_top(), env.render_wrist()))
    clock = FakeClock()
    requests = 0

    def observe() -> dict:
        nonlocal requests
        requests += 1
        # An explicit noise seed per request: the evaluation is deterministic per layout.
        return dict(env.observation(), seed=layout * 1000 + requests)

    # The action sent at tick t acts over [t, t + 1): the world takes the step when the next tick begins, so the
    # observation requested at tick t shows the world at t and a latency of k ticks is k ticks of world time.
    sent = []

    def act(action) -> None:
        if sent:
            env.step(sent.pop())
            if frames is not None:
                frames.append((env.render_top(), env.render_wrist()))
        sent.append(action)

    runner = SimulatedRunner(
        LocalChunkSource(policy), clock, latency=lambda _: max(0.0, latency_s - TICK_ROUNDING)
    )
    executor = RealtimeExecutor(
        runner,
        observe,
        act,
        clock=clock,
        control_hz=env.settings.control_hz,
        execute_steps=execute_steps,
        commit_steps=commit_steps,
        adapt_commit=False,
        action_dim=2,
        safe_action="zero",  # velocity control: an arm with nothing to do stops
        max_consecutive_failures=1,
        synchronous=mode == "sync",
    )
    metrics = executor.run(env.settings.max_steps, until=lambda: env.success)
    if metrics.stopped:
        raise RuntimeError(f"layout {layout}: the executor stopped: {metrics.stopped}")
    return {
        "success": env.success,
        "time_to_success_s": env.succeeded_at / env.settings.control_hz if env.success else None,
        "idle_ticks": metrics.idle_ticks,
        "seam_deltas": metrics.seam_deltas,
        "inner_deltas": metrics.inner_deltas,
        "chunks": metrics.chunks,
    }


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
) -> dict:
    if mode not in ("sync", "async"):
        raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not (0 <= latency_ms <= 10_000):
        raise ValueError(f"latency_ms must be in [0, 10000], got {latency_ms}")
    env = PlanarReachEnv(replace(settings, target_speed=target_speed))
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
    return {
        "success_rate": successes / episodes,
        "success_ci95": [round(low, 4), round(high, 4)],
        "successes": successes,
        "episodes": episodes,
        "mean_time_to_success_s": float(np.mean(times)) if times else None,
        "idle_ticks_per_episode": float(np.mean([r["idle_ticks"] for r in results])),
        "mean_seam_jump": float(np.mean(seams)) if seams else None,
        "mean_inner_jump": float(np.mean(inner)) if inner else None,
        "chunks_per_episode": float(np.mean([r["chunks"] for r in results])),
        "mode": mode,
        "latency_ms": latency_ms,
        "target_speed": target_speed,
        "execute_steps": execute_steps,
        "commit_steps": commit_steps if mode == "async" else 0,
        "seed": seed,
        "episodes_per_minute": round(60 * episodes / elapsed, 1),
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


def load(model: str, device: str = "cpu"):
    import torch

    from ..deploy.policy import load_policy

    return load_policy(model, device, torch.float32)


def main(argv=None) -> None:
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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gif", type=Path, default=None, help="write the first episode as a GIF")
    args = parser.parse_args(argv)
    recorded = training_seed(args.model)
    if recorded is not None and recorded == args.seed:
        parser.error(
            f"--seed {args.seed} recorded this checkpoint's demonstrations: evaluate on other layouts (another seed)"
        )
    policy = load(args.model, args.device)
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
    )
    print(json.dumps({"model": args.model, **result}))


if __name__ == "__main__":
    main()
