"""Reproduce the shipped multi-task Meta-World checkpoint (`fixtures/metaworld/mt10`) from a seed, on a CPU:

    python -m xr0.meta_world.train --work_dir runs/metaworld            # ~75 min on 2 cores, recording included
    python -m xr0.meta_world.train --work_dir runs/metaworld --install  # ... and replace the fixture

1. records `--episodes` successful expert demonstrations per MT10 task (`xr0.meta_world.record`, configuration seed `--seed`,
   DART noise `--action_noise`) into one LeRobot v3.0 dataset, each task with its instruction;
2. writes a randomly initialized tiny XR0 (`METAWORLD_VLM_CONFIG` / `METAWORLD_DIT_CONFIG`: the real architecture
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

from xr0_client.cli import ArgumentParser

from .. import REPO_ROOT
from ..training.fixture import (
    FIXTURE_TEXT_CONFIG,
    finetune_arguments,
    pack_fixture,
    run_finetune,
    write_random_checkpoint,
)
from .env import CHUNK_LENGTH, ROBOT_SPEC, ROBOT_TYPE, STATE_DIM
from .record import SUMMARY_FILE as DATASET_SUMMARY_FILE
from .record import record, resolve_tasks

METAWORLD_VLM_CONFIG = {
    "text_config": dict(FIXTURE_TEXT_CONFIG),  # a copy: configs may be edited in place
    "vision_config": {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
        "out_hidden_size": 48,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "deepstack_visual_indexes": [0],
        "num_position_embeddings": 64,
    },
    "tie_word_embeddings": True,
}
METAWORLD_DIT_CONFIG = {
    "hidden_size": 192,
    "num_hidden_layers": 4,
    "head_dim": 16,  # = the VLM's: DiT queries attend to its cached keys
    "num_key_value_heads": 2,
    "intermediate_size": 576,
}
DEFAULT_FIXTURE = REPO_ROOT / "fixtures" / "metaworld" / "mt10"
SUMMARY_FILE = "metaworld.json"  # in the fixture: how it was trained, and on which demonstrations
TRAINING = {  # xr0-finetune arguments of the fixture
    "recipe": "async",
    "per_device_train_batch_size": 32,
    "learning_rate": 1e-3,
    "warmup_steps": 100,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.01,
    "normalize_state": True,
    "max_action_prefix_length": 16,  # commits of up to 200 ms at 80 Hz
}


def record_in_child_process(*arguments) -> dict:
    """`record(*arguments)` in a child process of its own: importing triton (which training imports with torch)
    into a process that has made MuJoCo's EGL context crashes it (segmentation fault), so the recording's context
    lives and dies apart from the training."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(record, *arguments).result()


def write_base_checkpoint(directory: Path, seed: int) -> Path:
    from ..configuration_xr0 import XR0Config

    config = XR0Config(
        vlm_config=METAWORLD_VLM_CONFIG,
        dit_config=METAWORLD_DIT_CONFIG,
        action_length=CHUNK_LENGTH,
        state_dim=STATE_DIM,
    )
    return write_random_checkpoint(directory, config, seed, robot_types={ROBOT_TYPE: ROBOT_SPEC})


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
    if not (dataset / "meta" / "info.json").is_file():
        record_in_child_process(dataset, tasks, args.episodes, args.seed, args.action_noise)
    data_summary = json.loads((dataset / "meta" / DATASET_SUMMARY_FILE).read_text())
    recorded_with = {"seed": args.seed, "action_noise": args.action_noise, "episodes_per_task": args.episodes}
    for option, value in recorded_with.items():
        if data_summary[option] != value:
            parser.error(
                f"{dataset} was recorded with {option} {data_summary[option]}, not {value}: use another "
                "--work_dir (or remove it) to record anew"
            )
    base, output = work / "base", work / "mt10"
    if not (base / "config.json").is_file():
        write_base_checkpoint(base, args.seed)
    minutes, history = run_finetune(
        finetune_arguments(
            model=base,
            dataset=dataset,
            robot_type=ROBOT_TYPE,
            output_dir=output,
            max_steps=args.steps,
            seed=args.seed,
            logging_steps=50,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            **TRAINING,
        )
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
    (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("dataset", "loss_history")}))
    if args.install:
        size = pack_fixture(output, args.fixture, SUMMARY_FILE, summary)
        print(json.dumps({"installed": str(args.fixture), "megabytes": round(size / 1e6, 1)}))


if __name__ == "__main__":
    main()
