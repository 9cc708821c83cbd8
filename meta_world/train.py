"""Reproduce the shipped multi-task Meta-World checkpoint (`fixtures/metaworld/mt10`) from a seed, on a CPU:

    python -m xr0.meta_world.train --work_dir runs/metaworld            # ~75 min on 2 cores, recording included
    python -m xr0.meta_world.train --work_dir runs/metaworld --install  # ... and replace the fixture

1. records `--episodes` successful expert demonstrations per MT10 task (`xr0.meta_world.record`, configuration seed `--seed`,
   DART noise `--action_noise`) into one LeRobot v3.0 dataset, each task with its instruction;
2. writes a randomly initialized tiny XR0 (the configuration `metaworld` of `xr0.tiny_model`: the real architecture
   at small sizes, the real tokenizer and image processor, a 39-wide state) with the robot type `metaworld`
   registered (views, T = 32, state and action names);
3. trains it with plain `xr0-finetune --recipe async` (the released recipe: Λ band, +10 offset, clean prefixes,
   loss reweighting, frequency term) for `--steps` steps, one model for the ten tasks;
4. packs the result (bf16 weights, tokenizer and code linked to the repository root) with `metaworld.json`: the
   command's settings, the training time, steps, samples/s, peak memory, the loss history and the dataset's
   summary (its seed, which `xr0-eval-metaworld` refuses to evaluate on).
"""

import json
import multiprocessing
import resource
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from xr0_common.cli import ArgumentParser

from .. import REPO_ROOT
from ..labs import train as fixture_training
from ..labs.record import read_dataset_summary
from .env import LAB
from .record import record, resolve_tasks

DEFAULT_FIXTURE = REPO_ROOT / "fixtures" / "metaworld" / "mt10"
TRAINING = {  # xr0-finetune arguments of the fixture
    "recipe": "async",
    **fixture_training.FIXTURE_TRAINING,
    "learning_rate": 1e-3,
    "warmup_steps": 100,
    "max_action_prefix_length": 16,  # commits of up to 200 ms at 80 Hz
}


def record_in_child_process(*arguments) -> dict:
    """`record(*arguments)` in a child process of its own: importing triton (which training imports with torch)
    into a process that has made MuJoCo's EGL context crashes it (segmentation fault), so the recording's context
    lives and dies apart from the training."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(record, *arguments).result()


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--work_dir", type=Path, default=Path("runs/metaworld"))
    parser.add_argument("--tasks", nargs="+", default=["mt10"])
    parser.add_argument("--episodes", type=int, default=50, help="successful demonstrations per task")
    parser.add_argument("--seed", type=int, default=0, help="demonstration configurations, init, training")
    parser.add_argument("--action_noise", type=float, default=0.2, help="DART σ of the recorded episodes")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (2 are 1.3x faster than 1 on a 2-core machine)"
    )
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--install", action="store_true", help="replace the fixture with the new checkpoint")
    args = parser.parse_args(argv)
    try:
        tasks = resolve_tasks(args.tasks)
    except ValueError as error:
        parser.error(str(error))

    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    import torch  # after parsing, so that --help prints at once

    torch.set_num_threads(args.threads)
    work = args.work_dir
    dataset = work / "data"
    if not fixture_training.dataset_recorded(dataset):
        record_in_child_process(dataset, tasks, args.episodes, args.seed, args.action_noise)
    data_summary = read_dataset_summary(LAB, dataset)
    recorded = {
        "seed": data_summary["seed"],
        "action_noise": data_summary["action_noise"],
        "episodes": data_summary["episodes_per_task"],
    }
    fixture_training.check_recorded_with(parser, dataset, recorded, args)
    base, output = work / "base", work / "mt10"
    if not (base / "config.json").is_file():
        fixture_training.write_base_checkpoint(LAB, base, args.seed)
    minutes, history = fixture_training.run_finetune(
        fixture_training.run_arguments(LAB, base, dataset, output, args.steps, args.seed, **TRAINING)
    )
    samples = args.steps * TRAINING["per_device_train_batch_size"]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    summary = {
        "command": " ".join(["python -m xr0.meta_world.train", *sys.argv[1:]]) if argv is None else None,
        "training_minutes": round(minutes, 1),
        "steps": args.steps,
        "samples_per_second": round(samples / (60 * minutes), 1),
        "peak_memory_gib": round(peak_kib / 2**20, 2),
        "torch_threads": torch.get_num_threads(),
        "seed": args.seed,
        "training": TRAINING,
        "dataset": data_summary,
        "loss_history": history,
    }
    (output / LAB.summary_file).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("dataset", "loss_history")}))
    if args.install:
        size = fixture_training.pack_fixture(output, args.fixture, LAB.summary_file, summary)
        print(json.dumps({"installed": str(args.fixture), "megabytes": round(size / 1e6, 1)}))


if __name__ == "__main__":
    main()
