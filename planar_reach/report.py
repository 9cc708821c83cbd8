"""The PlanarReach results table, from the shipped checkpoints (or from freshly trained ones):

    python -m xr0.planar_reach.report                          # fixtures/planar-reach, 200 episodes per row
    python -m xr0.planar_reach.report --train                  # reproduce the checkpoints first (~30 min CPU)

The checkpoints are trained on the `goal_state` tier (env.py): the named target's position is in the state, so
what is measured is execution, not perception. Rows: static targets at latency 0 for each checkpoint; moving
targets at each `--target_speeds` value and each `--latencies` value for sync (the `sync` checkpoint, the arm stops
while it waits), async with training-time RTC (`async-rtc`: clean prefixes, causal mask) and async with the
Λ-shaped mask (`async-lambda`); then static targets that jump once (`--jump_at`) at each latency per mode, with the
reaction time. Each row is one `xr0-eval-reach` run on the same evaluation layouts; rows run `--jobs` at a time,
one torch thread each.

Beside the table, how much each async checkpoint copies its prefix instead of the observation:
- misleading prefix: for observations of evaluation layouts, the committed prefix is replaced by a random
  direction at full speed; the cosine between the mean of the next 10 actions and that direction is
  prefix-following (1 = the chunk goes on where the prefix went), the cosine with the expert's direction toward the
  target is reactivity;
- after a jump: the target has just jumped while the prefix still heads for where it was; the angle between the
  next 10 actions and the direction to the new target (0° = reacted at once) and their cosine with the prefix.

And where each checkpoint aims at the first tick of static layouts (cosines of the first 10 actions with the named
target, the others and their centroid), beside the blind `HeadForTheCentre`, which reads the state alone and heads
for the workspace centre: on this tier a checkpoint reads the target from its state, so it should aim at the named
target far better than the blind reference.

Writes `--output`/results.json, table.md, success_vs_latency.png and one GIF per mode.
"""

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from xr0_common.cli import ArgumentParser

from ..labs.evaluate import load
from ..labs.report import run_in_workers
from .env import PlanarReachEnv, ReachSettings, ScriptedExpert, layout_seed
from .evaluate import evaluate
from .train import DEFAULT_FIXTURES

logger = logging.getLogger(__name__)
MODES = {"sync": "sync", "async-rtc": "async", "async-lambda": "async"}  # checkpoint -> executor mode
LABELS = {"sync": "sync", "async-rtc": "async, training-time RTC (causal)", "async-lambda": "async, Λ-mask"}
STATE_ONLY = "state-only reference"  # the aiming of `HeadForTheCentre`, which never looks at an image


def rows(latencies: list, target_speeds: list, jump_at: Optional[tuple]) -> list:
    """Static targets at latency 0 per checkpoint, then moving targets at each speed and latency per mode, then
    (with `jump_at`) static targets that jump once, at each latency per mode."""
    static = [dict(variant=v, latency_ms=0.0, target_speed=0.0, jump_at=None) for v in MODES]
    moving = [
        dict(variant=v, latency_ms=float(latency), target_speed=speed, jump_at=None)
        for speed in target_speeds
        for latency in latencies
        for v in MODES
    ]
    jumps = [
        dict(variant=v, latency_ms=float(latency), target_speed=0.0, jump_at=jump_at)
        for latency in latencies
        for v in MODES
    ]
    return static + moving + (jumps if jump_at is not None else [])


def _run_row(job: dict) -> dict:
    """One row in a worker process: its JSON line."""
    policy = load(str(Path(job["fixtures"]) / job["variant"]))
    result = evaluate(
        policy,
        job["episodes"],
        seed=job["seed"],
        mode=MODES[job["variant"]],
        latency_ms=job["latency_ms"],
        target_speed=job["target_speed"],
        execute_steps=job["execute_steps"],
        jump_at=job["jump_at"],
    )
    return {"variant": job["variant"], **result}


def under_way(env: PlanarReachEnv, layout: int, ticks: int) -> ScriptedExpert:
    """Resets `env` to `layout` and lets the scripted expert drive `ticks` ticks; returns the expert (it goes on
    from what it has seen)."""
    env.reset(layout)
    expert = ScriptedExpert(env)
    for _ in range(ticks):
        env.step(expert.act())
    return expert


def prefix_following(policy, samples: int, seed: int, target_speed: float, prefix_length: int = 6) -> dict:
    """Cosines of the actions after a misleading prefix with the prefix's direction and with the expert's."""
    env = PlanarReachEnv(ReachSettings(target_speed=target_speed))
    rng = np.random.default_rng(seed)
    following, reactivity = [], []
    for index in range(samples):
        expert = under_way(env, layout_seed(seed, index), int(rng.integers(0, 10)))  # a little way into it
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


def after_a_jump(policy, samples: int, seed: int, prefix_length: int = 6) -> dict:
    """Right after the target jumps, with the committed prefix still heading for where it was: the angle between
    the mean of the next 10 actions after the prefix and the direction to the new target (0° = reacted at once),
    and their cosine with the prefix's direction (1 = copied the prefix)."""
    env = PlanarReachEnv(ReachSettings())
    rng = np.random.default_rng([seed, 4])
    errors, copying = [], []
    for index in range(samples):
        under_way(env, layout_seed(seed, index), int(rng.integers(3, 10)))  # toward the first position
        heading = env.goal_position - env.effector
        prefix = np.tile(heading / np.linalg.norm(heading) * env.settings.max_speed, (prefix_length, 1))
        while True:  # the jump: somewhere else, away from the arm
            new = rng.uniform(-env.TARGET_BOUND, env.TARGET_BOUND, 2)
            if np.linalg.norm(new - env.effector) > 0.6:
                break
        env.targets[env.goal] = new
        request = dict(env.observation(), seed=index, action_prefix=prefix.astype(np.float32))
        after = policy.infer(request)["actions"][prefix_length : prefix_length + 10].mean(0)
        there = env.effector + prefix.sum(0) * env.settings.dt  # where the arm is when the prefix has run
        want = new - there
        cosine = float(after @ want / (np.linalg.norm(after) * np.linalg.norm(want) + 1e-9))
        errors.append(float(np.degrees(np.arccos(np.clip(cosine, -1, 1)))))
        copying.append(
            float(after @ prefix[-1] / (np.linalg.norm(after) * np.linalg.norm(prefix[-1]) + 1e-9))
        )
    return {
        "angle_to_new_target_deg": float(np.mean(errors)),
        "cosine_with_prefix": float(np.mean(copying)),
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


def conditions(row: dict) -> str:
    if row.get("jump_at"):
        first, last = row["jump_at"]
        return f"jump at tick {first}–{last}"
    return "static" if row["target_speed"] == 0 else f"moving {row['target_speed']:g}/s"


def table(results: list) -> str:
    lines = [
        "| targets | latency | mode (checkpoint) | success (95% CI) | time to success | idle ticks / episode "
        "| seam jump | reaction (ticks) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        low, high = r["success_ci95"]
        seconds = f"{r['mean_time_to_success_s']:.2f} s" if r["mean_time_to_success_s"] is not None else "-"
        seam = f"{r['seam_jump']:.3f}" if r["seam_jump"] is not None else "-"
        reaction = r.get("mean_reaction_ticks")
        reaction = (
            f"{reaction:.1f} ({r['reacted_episodes']}/{r['jumped_episodes']})"
            if reaction is not None
            else "-"
        )
        lines.append(
            f"| {conditions(r)} | {r['latency_ms']:g} ms | {LABELS[r['variant']]} | "
            f"{100 * r['success_rate']:.1f}% ({100 * low:.1f}–{100 * high:.1f}) | {seconds} | "
            f"{r['idle_ticks_per_episode']:.1f} | {seam} | {reaction} |"
        )
    return "\n".join(lines)


def plot(results: list, path: Path) -> None:
    """Success vs latency on moving targets, one line per mode and speed, with the 95% intervals."""
    from ..training.report import plot_lines

    series, bars = {}, {}
    for speed in sorted(
        {r["target_speed"] for r in results if r["target_speed"] > 0 and not r.get("jump_at")}
    ):
        for variant in MODES:
            mine = [
                r
                for r in results
                if r["variant"] == variant and r["target_speed"] == speed and not r.get("jump_at")
            ]
            label = (
                f"{LABELS[variant].replace('Λ', 'Lambda')}, {speed:g}/s"  # Pillow's default font has no Greek
            )
            series[label] = ([r["latency_ms"] for r in mine], [100 * r["success_rate"] for r in mine])
            bars[label] = [(100 * r["success_ci95"][0], 100 * r["success_ci95"][1]) for r in mine]
    plot_lines(
        series,
        path,
        "PlanarReach (goal in the state), moving targets: success % vs inference latency (95% CI)",
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
    parser.add_argument("--target_speeds", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument(
        "--jump_at",
        type=int,
        nargs=2,
        default=[15, 30],
        metavar=("FIRST", "LAST"),
        help="the jump rows: the target teleports once at a tick in [FIRST, LAST]",
    )
    parser.add_argument("--execute_steps", type=int, default=10)
    parser.add_argument(
        "--prefix_samples",
        type=int,
        default=100,
        help="observations of the prefix-following, after-a-jump and aiming analyses",
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
        for row in rows(args.latencies, args.target_speeds, tuple(args.jump_at))
    ]
    results = run_in_workers(_run_row, jobs, args.jobs)
    copying = {
        variant: {
            "misleading_prefix": prefix_following(
                load(str(fixtures / variant)), args.prefix_samples, args.seed, args.target_speeds[0]
            ),
            "after_a_jump": after_a_jump(load(str(fixtures / variant)), args.prefix_samples, args.seed),
        }
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
            target_speed=args.target_speeds[0],
            execute_steps=args.execute_steps,
            gif=args.output / f"episode-{variant}.gif",
        )
    plot(results, args.output / "success_vs_latency.png")
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
        misleading, jump = numbers["misleading_prefix"], numbers["after_a_jump"]
        print(
            f"{LABELS[variant]}: after a misleading prefix, prefix-following {misleading['prefix_following']:+.2f} "
            f"and reactivity {misleading['reactivity']:+.2f} (cosines, {misleading['samples']} prefixes); right "
            f"after a jump, {jump['angle_to_new_target_deg']:.0f}° off the new target, cosine with the prefix "
            f"{jump['cosine_with_prefix']:+.2f} ({jump['samples']} jumps)"
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
