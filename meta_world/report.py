"""The Meta-World results of a checkpoint in one command (the table of docs/meta-world.md, from the shipped checkpoint):

    python -m xr0.meta_world.report                         # fixtures/metaworld/mt10; ~30 min on 2 cores
    python -m xr0.meta_world.report --train                 # retrain the checkpoint first (xr0.meta_world.train)

Rows, each an `xr0-eval-metaworld` run on held-out configurations (`--seed`, default 1), the scripted expert on the
same configurations beside it:
1. every MT10 task at latency 0 (`--episodes`, default 50 per task);
2. at each of `--latencies` (default 100 and 200 ms: 8 and 16 control ticks), sync vs async execution of the same
   checkpoint (`--latency_episodes` per task, `--latency_max_steps` 500 so that a slow arm can still finish);
3. goal jumps on reach and push (`--jump_at`, default ticks 20-35): the goal moves once, the steps from the jump to
   success, policy vs expert.

Writes `--output`/results.json (every line and the settings), table.md and one GIF per task (the corner view of
its first episode at latency 0). Tasks run `--jobs` at a time, one torch thread each.
"""

import json
import logging
import time
from pathlib import Path

from xr0_common.cli import ArgumentParser

from ..labs.evaluate import load
from ..labs.report import run_in_workers, save_gif
from .env import CONTROL_HZ, MT10, MetaWorldTask, configuration_seed
from .evaluate import evaluate, overall_line, policy_loop, run_episode, task_line
from .train import DEFAULT_FIXTURE

logger = logging.getLogger("xr0.metaworld_report")
JUMP_TASKS = ("reach-v3", "push-v3")
GIF_EVERY = 4  # ticks per GIF frame: 20 fps of an 80 Hz episode


def _run(job: dict) -> list:
    """One (task, settings) run in a worker process: its episodes."""
    from xr0_client.evaluation import ResultsFile

    results = ResultsFile(None, {})
    evaluate(
        load(job["model"]),
        [job["task"]],
        job["episodes"],
        seed=job["seed"],
        mode=job["mode"],
        latency_ms=job["latency_ms"],
        max_steps=job["max_steps"],
        goal_jump=job["goal_jump"],
        results=results,
    )
    if job.get("gif"):
        write_gif(job["model"], job["task"], job["seed"], Path(job["gif"]))
    return results.episodes


def write_gif(model: str, task: str, seed: int, path: Path) -> None:
    """The corner view of the task's first evaluation episode (latency 0, async), with the outcome."""
    from PIL import Image, ImageDraw

    world = MetaWorldTask(task)
    frames = []
    try:
        configuration = configuration_seed(seed, task, 0)
        loop = policy_loop(world, load(model), configuration, "async", 0.0, 8, 1, 250, {})
        outcome = run_episode(
            world,
            configuration,
            250,
            loop,
            on_step=lambda w: frames.append(w.render("corner")) if w.steps % GIF_EVERY == 0 else None,
        )
    finally:
        world.close()
    images = [Image.fromarray(frame) for frame in frames]
    verdict = f"success at step {outcome['steps']}" if outcome["success"] else "failure"
    for image in images[-1:]:
        ImageDraw.Draw(image).text((2, 2), verdict, fill=(0, 140, 0) if outcome["success"] else (200, 0, 0))
    save_gif(path, images, frame_ms=int(1000 * GIF_EVERY / CONTROL_HZ))


def jobs(args) -> list:
    """(row name, job) for every run of the report."""
    common = {"model": str(args.model), "seed": args.seed}
    planned = [
        ("latency 0", dict(common, task=task, episodes=args.episodes, mode="async", latency_ms=0.0, max_steps=250,
                           goal_jump=None, gif=str(args.output / f"{task}.gif")))
        for task in MT10
    ]  # fmt: skip
    for latency in args.latencies:
        for mode in ("sync", "async"):
            planned += [
                (f"{mode} {latency:g} ms", dict(common, task=task, episodes=args.latency_episodes, mode=mode,
                                                latency_ms=float(latency), max_steps=args.latency_max_steps,
                                                goal_jump=None))
                for task in MT10
            ]  # fmt: skip
    planned += [
        ("goal jump", dict(common, task=task, episodes=args.episodes, mode="async", latency_ms=0.0, max_steps=250,
                           goal_jump=tuple(args.jump_at)))
        for task in JUMP_TASKS
    ]  # fmt: skip
    return planned


def table(rows: dict) -> str:
    """rows {name: [per-task lines..., overall]} -> the markdown of docs/meta-world.md."""
    main = rows["latency 0"]
    lines = [
        "| task | instruction | policy success (95% CI) | expert success | policy steps | expert steps |",
        "|---|---|---|---|---|---|",
    ]
    for line in main:
        low, high = line["success_ci95"]
        name = "**MT10 mean**" if line["task"] == "all" else f"`{line['task']}`"
        lines.append(
            f"| {name} | {line['instruction'] or ''} | {100 * line['success_rate']:.0f}% "
            f"({100 * low:.0f}–{100 * high:.0f}) | {100 * line['expert_success_rate']:.0f}% | "
            f"{_number(line['mean_steps_to_success'])} | {_number(line['expert_mean_steps_to_success'])} |"
        )
    lines += [
        "",
        "| execution | success (95% CI) | steps to success | idle ticks / episode | seam jump |",
        "|---|---|---|---|---|",
    ]
    for name, per_task in rows.items():
        if name in ("latency 0", "goal jump"):
            continue
        overall = per_task[-1]
        low, high = overall["success_ci95"]
        lines.append(
            f"| {name} | {100 * overall['success_rate']:.0f}% ({100 * low:.0f}–{100 * high:.0f}) | "
            f"{_number(overall['mean_steps_to_success'])} | {overall['idle_ticks_per_episode']:.1f} | "
            f"{_number(overall['seam_jump'], 3)} |"
        )
    lines += [
        "",
        "| goal jump | policy success | expert success | policy steps after the jump | expert steps after it |",
        "|---|---|---|---|---|",
    ]
    for line in rows["goal jump"][:-1]:
        lines.append(
            f"| `{line['task']}` | {100 * line['success_rate']:.0f}% | {100 * line['expert_success_rate']:.0f}% | "
            f"{_number(line['mean_steps_after_jump'])} | {_number(line['expert_mean_steps_after_jump'])} |"
        )
    return "\n".join(lines)


def _number(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--train", action="store_true", help="retrain into --work_dir first and report on it")
    parser.add_argument("--work_dir", type=Path, default=Path("runs/metaworld"))
    parser.add_argument(
        "--episodes", type=int, default=50, help="episodes per task at latency 0 and per jump row"
    )
    parser.add_argument("--seed", type=int, default=1, help="evaluation configuration seed")
    parser.add_argument("--latencies", type=float, nargs="+", default=[100, 200])
    parser.add_argument("--latency_episodes", type=int, default=20, help="episodes per task and latency row")
    parser.add_argument("--latency_max_steps", type=int, default=500)
    parser.add_argument("--jump_at", type=int, nargs=2, default=[20, 35], metavar=("FIRST", "LAST"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("runs/metaworld/report"))
    args = parser.parse_args(argv)
    if args.train:
        from .train import main as train

        train(["--work_dir", str(args.work_dir)])
        args.model = args.work_dir / "mt10"
    start = time.perf_counter()
    planned = jobs(args)
    episodes = run_in_workers(_run, [job for _, job in planned], args.jobs)
    rows, pooled = {}, {}  # row name -> [per-task lines..., overall]; row name -> all its episodes
    for (name, job), mine in zip(planned, episodes, strict=True):
        rows.setdefault(name, []).append(task_line(job["task"], mine))
        pooled.setdefault(name, []).extend(mine)
    for name, mine in pooled.items():
        rows[name].append(overall_line(mine))
    markdown = table(rows)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "table.md").write_text(markdown + "\n")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    document = {"rows": rows, "settings": settings, "minutes": round((time.perf_counter() - start) / 60, 1)}
    (args.output / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    print(markdown)
    logger.info("wrote %s in %.1f min", args.output, document["minutes"])


if __name__ == "__main__":
    main()
