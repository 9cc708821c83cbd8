"""Reproduce the three PlanarReach checkpoints from a seed, on a CPU:

    python -m xr0.planar_reach.train --work_dir runs/planar-reach            # ~30 min on 2 cores
    python -m xr0.planar_reach.train --work_dir runs/planar-reach --install  # ... and replace the fixtures

1. records `--episodes` expert demonstrations (`xr0.planar_reach.record`, layout seed `--seed`);
2. writes a randomly initialized tiny XR0 (the configuration `planar-reach` of `xr0.tiny_model`: the real
   architecture at small sizes, the real tokenizer and image processor);
3. pre-trains it with `xr0-finetune --recipe sync` (`--pretrain_steps`, shared by the three checkpoints, as the
   report's pre-training is shared by its post-trained models);
4. post-trains that once per recipe (`--steps` each): `sync` (no prefix), `async-causal` (clean prefixes with a
   causal mask: training-time RTC) and `async` (clean prefixes with the Λ-shaped band);
5. packs each result as a small fixture (bf16 weights, tokenizer and code linked to the repository root):
   `sync`, `async-rtc`, `async-lambda` under `--fixtures`, with `planar_reach.json` (the training minutes of
   pre-training plus post-training, the loss history, the dataset).
"""

import json
from pathlib import Path

from xr0_common.cli import ArgumentParser

from .. import REPO_ROOT
from ..labs import train as fixture_training
from ..labs.record import read_dataset_summary
from .env import DEFAULT_SETTINGS, LAB, OBSERVATIONS
from .record import record

# fixture name -> xr0-finetune recipe
VARIANTS = {"sync": "sync", "async-rtc": "async-causal", "async-lambda": "async"}
DEFAULT_FIXTURES = REPO_ROOT / "fixtures" / "planar-reach"
TRAINING = {  # xr0-finetune arguments shared by every run
    **fixture_training.FIXTURE_TRAINING,
    "max_action_prefix_length": 10,  # commits of up to 300 ms at 30 Hz
}
PRETRAIN = {"recipe": "sync", "learning_rate": 5e-4, "warmup_steps": 100}
POSTTRAIN = {"learning_rate": 1e-3, "warmup_steps": 50}


def stage_arguments(model: Path, dataset: Path, output: Path, max_steps: int, seed: int, **stage) -> list:
    return fixture_training.run_arguments(LAB, model, dataset, output, max_steps, seed, **TRAINING, **stage)


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--work_dir", type=Path, default=Path("runs/planar-reach"))
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0, help="demonstration layouts, initialization, training")
    parser.add_argument(
        "--action_noise",
        type=float,
        default=0.0,
        help="σ of the noise on the executed commands while recording (xr0.planar_reach.record; fixtures: 0)",
    )
    parser.add_argument(
        "--observation",
        choices=OBSERVATIONS,
        default=DEFAULT_SETTINGS.observation,
        help="observation tier of the demonstrations (env.py); the fixtures: goal_state",
    )
    parser.add_argument("--pretrain_steps", type=int, default=1100, help="shared pre-training steps")
    parser.add_argument("--steps", type=int, default=400, help="post-training steps per recipe")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    parser.add_argument(
        "--install", action="store_true", help="replace the fixtures with the new checkpoints"
    )
    args = parser.parse_args(argv)

    work = args.work_dir
    dataset = work / "data"
    if not fixture_training.dataset_recorded(dataset):
        print(
            json.dumps(
                {
                    "recorded": record(
                        dataset,
                        args.episodes,
                        args.seed,
                        action_noise=args.action_noise,
                        observation=args.observation,
                    )
                }
            )
        )
    data_summary = read_dataset_summary(LAB, dataset)
    recorded = {  # datasets from before these options had neither
        "action_noise": data_summary.get("action_noise", 0.0),
        "observation": data_summary.get("observation", "images_named"),
    }
    fixture_training.check_recorded_with(parser, dataset, recorded, args)
    import torch  # after parsing, so that --help prints at once

    base, pretrained = work / "base", work / "pretrained"
    if not (base / "config.json").is_file():
        fixture_training.write_base_checkpoint(LAB, base, args.seed)
    pretrain_record = pretrained / LAB.summary_file
    if not pretrain_record.is_file():
        minutes, history = fixture_training.run_finetune(
            stage_arguments(base, dataset, pretrained, args.pretrain_steps, args.seed, **PRETRAIN)
        )
        pretrain_record.write_text(
            json.dumps({"minutes": minutes, "steps": args.pretrain_steps, "loss_history": history}) + "\n"
        )
    pretrain = json.loads(pretrain_record.read_text())
    for variant in args.variants:
        output = work / variant
        stage = {"recipe": VARIANTS[variant], **POSTTRAIN}
        minutes, history = fixture_training.run_finetune(
            stage_arguments(pretrained, dataset, output, args.steps, args.seed, **stage)
        )
        summary = {
            "variant": variant,
            "recipe": VARIANTS[variant],
            "training_minutes": round(pretrain["minutes"] + minutes, 1),
            "pretraining": {"steps": pretrain["steps"], "minutes": round(pretrain["minutes"], 1), **PRETRAIN},
            "posttraining": {"steps": args.steps, "minutes": round(minutes, 1), **stage},
            "torch_threads": torch.get_num_threads(),
            "seed": args.seed,
            "training": TRAINING,
            "dataset": data_summary,
            "loss_history": {"pretraining": pretrain["loss_history"], "posttraining": history},
        }
        (output / LAB.summary_file).write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({"trained": variant, "minutes": summary["training_minutes"]}))
        if args.install:
            size = fixture_training.pack_fixture(output, args.fixtures / variant, LAB.summary_file, summary)
            print(json.dumps({"installed": str(args.fixtures / variant), "megabytes": round(size / 1e6, 1)}))


if __name__ == "__main__":
    main()
