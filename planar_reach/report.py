"""The PlanarReach results table, from the shipped checkpoints (or from freshly trained ones):

    python -m xr0.planar_reach.report                          # fixtures/planar-reach, 200 episodes per row
    python -m xr0.planar_reach.report --train                  # reproduce the checkpoints first (~40 min CPU)

Rows: static targets at latency 0 for each checkpoint, then moving targets (`--target_speed`, default 0.2) at each
`--latencies` value for sync (the `sync` checkpoint, arm stops while it waits), async with training-time RTC
(`async-rtc`: clean prefixes, causal mask) and async with the Λ-shaped mask (`async-lambda`). Each row is one
`xr0-eval-reach` run on the same evaluation layouts; rows run `--jobs` at a time, one torch thread each.

Beside the table: how much each async checkpoint copies its prefix instead of looking. For observations of
evaluation layouts, the committed prefix is replaced by a random direction at full speed; the cosine between the
mean of the next 10 actions and that direction is prefix-following (1 = the chunk goes on where the prefix went),
the cosine with the expert's direction toward the target is reactivity.

And where each checkpoint aims: at the first tick of static evaluation layouts, the cosine between the mean of the
first 10 actions and the direction to the named target, to the other targets and to the targets' centroid, and
how often the named target is the best aligned (chance: 1 in 3). A policy that reads the instruction aims at the
named target. Heading for the centroid proves nothing: targets lie nearer the workspace centre than start positions,
so the blind `HeadForTheCentre`, which reads the state alone, does it too; it is printed beside the checkpoints as
the reference to beat.

Writes `--output`/results.json, table.md, success_vs_latency.png and one GIF per mode.
"""

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from xr0_client.cli import ArgumentParser

from .env import PlanarReachEnv, ReachSettings, ScriptedExpert, layout_seed
from .evaluate import evaluate, load
from .train import DEFAULT_FIXTURES

logger = logging.getLogger(__name__)
MODES = {"sync": "sync", "async-rtc": "async", "async-lambda": "async"}  # checkpoint -> executor mode
LABELS = {"sync": "sync", "async-rtc": "async, training-time RTC (causal)", "async-lambda": "async, Λ-mask"}
STATE_ONLY = "state-only reference"  # the aiming of `HeadForTheCentre`, which never looks at an image


def rows(latencies: list, target_speed: float) -> list:
    static = [dict(variant=v, latency_ms=0.0, target_speed=0.0) for v in MODES]
    moving = [
        dict(variant=v, latency_ms=float(latency), target_speed=target_speed)
        for latency in latencies
        for v in MODES
    ]
    return static + moving


def _run_row(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    policy = load(str(Path(job["fixtures"]) / job["variant"]))
    result = evaluate(
        policy,
        job["episodes"],
        seed=job["seed"],
        mode=MODES[job["variant"]],
        latency_ms=job["latency_ms"],
        target_speed=job["target_speed"],
        execute_steps=job["execute_steps"],
    )
    return {"variant": job["variant"], **result}


def prefix_following(policy, samples: int, seed: int, target_speed: float, prefix_length: int = 6) -> dict:
    """Cosines of the actions after a misleading prefix with the prefix's direction and with the expert's."""
    env = PlanarReachEnv(ReachSettings(target_speed=target_speed))
    rng = np.random.default_rng(seed)
    following, reactivity = [], []
    for index in range(samples):
        env.reset(layout_seed(seed, index))
        expert = ScriptedExpert(env)
        for _ in range(int(rng.integers(0, 10))):  # a little way into the episode
            env.step(expert.act())
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        prefix = np.tile(direction * env.settings.max_speed, (prefix_length, 1)).astype(np.float32)
        actions = policy.infer(dict(env.observation(), seed=index, action_prefix=prefix))["actions"]
        after = actions[prefix_length : prefix_length + 10].mean(0)
        norm = np.linalg.norm(after) + 1e-9
        want = expert.act()
        following.append(float(after @ direction / norm))
        reactivity.append(float(after @ want / (norm * (np.linalg.norm(want) + 1e-9))))
    return {
        "prefix_following": float(np.mean(following)),
        "reactivity": float(np.mean(reactivity)),
        "samples": samples,
        "prefix_length": prefix_length,
    }


class HeadForTheCentre:
    """Reads the state only: every action points from the end-effector to the workspace centre. The reference
    for `aiming`: end-effectors start anywhere in the workspace and targets lie closer to its centre, so this
    blind policy already scores a high cosine with the named target; a checkpoint that aims no better has not
    used its images."""

    def infer(self, request: dict) -> dict:
        return {"actions": np.tile(-np.asarray(request["state"][:2]), (30, 1))}


def aiming(policy, samples: int, seed: int) -> dict:
    """Cosines of the first 10 actions' mean with the named target, the other targets and their centroid."""
    env = PlanarReachEnv(ReachSettings())
    named, others, centroid, best = [], [], [], 0
    for index in range(samples):
        env.reset(layout_seed(seed, index))
        aim = policy.infer(dict(env.observation(), seed=index))["actions"][:10].mean(0)
        directions = env.targets - env.effector  # (num_targets, 2)
        directions = np.vstack([directions, directions.mean(0)])  # the targets, then their centroid
        cosines = directions @ aim / (np.linalg.norm(directions, axis=1) * np.linalg.norm(aim) + 1e-9)
        targets, to_centroid = cosines[:-1], cosines[-1]
        named.append(targets[env.goal])
        others.extend(np.delete(targets, env.goal))
        centroid.append(to_centroid)
        best += int(np.argmax(targets) == env.goal)
    return {
        "named_target": float(np.mean(named)),
        "other_targets": float(np.mean(others)),
        "centroid": float(np.mean(centroid)),
        "named_is_best": best / samples,
        "samples": samples,
    }


def table(results: list) -> str:
    lines = [
        "| targets | latency | mode (checkpoint) | success (95% CI) | time to success | idle ticks / episode | seam jump |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        targets = "static" if r["target_speed"] == 0 else f"moving {r['target_speed']:g}/s"
        low, high = r["success_ci95"]
        seconds = f"{r['mean_time_to_success_s']:.2f} s" if r["mean_time_to_success_s"] is not None else "-"
        seam = f"{r['mean_seam_jump']:.3f}" if r["mean_seam_jump"] is not None else "-"
        lines.append(
            f"| {targets} | {r['latency_ms']:g} ms | {LABELS[r['variant']]} | "
            f"{100 * r['success_rate']:.1f}% ({100 * low:.1f}–{100 * high:.1f}) | {seconds} | "
            f"{r['idle_ticks_per_episode']:.1f} | {seam} |"
        )
    return "\n".join(lines)


def plot(results: list, path: Path, target_speed: float) -> None:
    """Success vs latency on moving targets, one line per mode, with the 95% intervals."""
    from ..training.report import plot_lines

    moving = [r for r in results if r["target_speed"] > 0]
    series, bars = {}, {}
    for variant in MODES:
        mine = [r for r in moving if r["variant"] == variant]
        label = LABELS[variant].replace("Λ", "Lambda")  # Pillow's default font has no Greek
        series[label] = ([r["latency_ms"] for r in mine], [100 * r["success_rate"] for r in mine])
        bars[label] = [(100 * r["success_ci95"][0], 100 * r["success_ci95"][1]) for r in mine]
    plot_lines(
        series,
        path,
        f"PlanarReach, moving targets ({target_speed:g}/s): success % vs inference latency (95% CI)",
        x_label="latency ms",
        y_range=(0, 100),
        error_bars=bars,
    )


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    parser.add_argument(
        "--train", action="store_true", help="reproduce the checkpoints into --work_dir first"
    )
    parser.add_argument("--work_dir", type=Path, default=Path("runs/planar-reach"))
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1, help="evaluation layout seed")
    parser.add_argument("--latencies", type=float, nargs="+", default=[0, 100, 200, 300])
    parser.add_argument("--target_speed", type=float, default=0.2)
    parser.add_argument("--execute_steps", type=int, default=10)
    parser.add_argument(
        "--prefix_samples",
        type=int,
        default=100,
        help="observations of the prefix-following and the aiming analyses",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("runs/planar-reach/report"))
    args = parser.parse_args(argv)

    fixtures = args.fixtures
    if args.train:
        from .train import main as train

        train(["--work_dir", str(args.work_dir)])
        fixtures = args.work_dir
    start = time.perf_counter()
    jobs = [
        dict(
            row,
            fixtures=str(fixtures),
            episodes=args.episodes,
            seed=args.seed,
            execute_steps=args.execute_steps,
        )
        for row in rows(args.latencies, args.target_speed)
    ]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(_run_row, jobs))
    copying = {
        variant: prefix_following(
            load(str(fixtures / variant)), args.prefix_samples, args.seed, args.target_speed
        )
        for variant in ("async-rtc", "async-lambda")
    }
    aims = {
        variant: aiming(load(str(fixtures / variant)), args.prefix_samples, args.seed) for variant in MODES
    }
    aims[STATE_ONLY] = aiming(HeadForTheCentre(), args.prefix_samples, args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    for variant, mode in MODES.items():  # one episode per mode, moving targets, 200 ms
        evaluate(
            load(str(fixtures / variant)),
            1,
            seed=args.seed,
            mode=mode,
            latency_ms=200.0,
            target_speed=args.target_speed,
            execute_steps=args.execute_steps,
            gif=args.output / f"episode-{variant}.gif",
        )
    plot(results, args.output / "success_vs_latency.png", args.target_speed)
    markdown = table(results)
    (args.output / "table.md").write_text(markdown + "\n")
    (args.output / "results.json").write_text(
        json.dumps(
            {
                "rows": results,
                "prefix_following": copying,
                "aiming": aims,
                "settings": vars(args)
                | {"fixtures": str(fixtures), "output": str(args.output), "work_dir": str(args.work_dir)},
            },
            indent=2,
        )
        + "\n"
    )
    print(markdown)
    for variant, numbers in copying.items():
        print(
            f"{LABELS[variant]}: prefix-following {numbers['prefix_following']:+.2f}, "
            f"reactivity {numbers['reactivity']:+.2f} (cosines, {numbers['samples']} misleading prefixes)"
        )
    for variant, numbers in aims.items():
        print(
            f"{LABELS.get(variant, variant)} aims (cosines of the first 10 actions, {numbers['samples']} static "
            f"layouts): named target {numbers['named_target']:+.2f}, other targets {numbers['other_targets']:+.2f}, "
            f"centroid {numbers['centroid']:+.2f}; the named target is the best aligned in "
            f"{100 * numbers['named_is_best']:.0f}%"
        )
    logger.info("wrote %s in %.1f min", args.output, (time.perf_counter() - start) / 60)


if __name__ == "__main__":
    main()
