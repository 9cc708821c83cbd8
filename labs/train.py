"""What every lab's training shares: the fixture's base checkpoint from its named tiny configuration, xr0-finetune
runs in this process, the check that a dataset was recorded as asked, and the packing of a result into a fixture
directory (the shipped checkpoints under fixtures/).

A fixture is a randomly initialized tiny XR0 of the real architecture (`xr0.tiny_model.TINY_CONFIGURATIONS`, the
lab's `fixture_model`) trained by plain `xr0-finetune`, so every fixture is made one way. torch and the model load
when a checkpoint is written, so that the labs' commands print `--help` at once.
"""

import json
import shutil
import time
from pathlib import Path
from typing import Optional

from .. import REPO_ROOT
from ..checkpoint_layout import link_to_repository_root
from .task import LabTask

# Written by the Trainer or the processor, not needed by a fixture (the tokenizer is linked to the root's).
LEFTOVER_FILES = ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
# xr0-finetune arguments of every fixture run: the batch, schedule and state normalization of the labs.
FIXTURE_TRAINING = {
    "per_device_train_batch_size": 32,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.01,
    "normalize_state": True,
}
# How a fixture run logs and saves: a loss every 50 steps, the last model only, no progress bar, no workers.
RUN_SETTINGS = {
    "logging_steps": 50,
    "save_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
}


def dataset_recorded(dataset: Path) -> bool:
    """Whether `dataset` holds a complete recording (a recording that died leaves no info.json)."""
    return (dataset / "meta" / "info.json").is_file()


def check_recorded_with(parser, dataset: Path, recorded: dict, args) -> None:
    """Exits (status 2) when `recorded` ({option: value} from the dataset's summary) differs from the command's
    `args` of the same names: a dataset of other settings is never trained on silently."""
    for option, value in recorded.items():
        if value != getattr(args, option):
            parser.error(
                f"{dataset} was recorded with --{option} {value}, not {getattr(args, option)}: use another "
                "--work_dir (or remove it) to record anew"
            )


def write_base_checkpoint(lab: LabTask, directory: Path, seed: int) -> Path:
    """The lab's untrained starting point: its named tiny configuration, transformers' initialization, fp32."""
    from ..tiny_model import tiny_config

    robot_types = {lab.robot_type: lab.robot_spec} if lab.robot_spec is not None else None
    return write_random_checkpoint(directory, tiny_config(lab.fixture_model), seed, robot_types=robot_types)


def run_arguments(
    lab: LabTask, model: Path, dataset: Path, output_dir: Path, max_steps: int, seed: int, **training
) -> list:
    """xr0-finetune's command line of one fixture run on the lab's robot type; `training`: the run's own options
    (recipe, learning rate, ... on top of `FIXTURE_TRAINING`)."""
    return finetune_arguments(
        model=model,
        dataset=dataset,
        robot_type=lab.robot_type,
        output_dir=output_dir,
        max_steps=max_steps,
        seed=seed,
        **RUN_SETTINGS,
        **training,
    )


def write_random_checkpoint(directory: Path, config, seed: int, robot_types: Optional[dict] = None) -> Path:
    """The untrained starting point: transformers' initialization of `config`, fp32. With `robot_types`
    ({name: RobotSpec fields}), the directory also gets the processor with those robot types registered, so that
    `xr0-finetune` trains them with their views, names and chunk length. `config`: an `XR0Config`."""
    import torch

    from ..modeling_xr0 import XR0ForActionGeneration
    from ..processing_xr0 import XR0Processor

    torch.manual_seed(seed)
    XR0ForActionGeneration(config).save_pretrained(directory)
    if robot_types:
        processor = XR0Processor.from_pretrained(
            REPO_ROOT,
            action_length=config.action_length,
            action_dim=config.action_dim,
            state_dim=config.state_dim,
        )
        for name, fields in robot_types.items():
            processor.register_robot_type(name, **fields)
        processor.save_pretrained(directory)
    return directory


def finetune_arguments(**arguments) -> list:
    """{option: value} -> xr0-finetune's command line (`--option value` pairs)."""
    return [item for key, value in arguments.items() for item in (f"--{key}", str(value))]


def run_finetune(arguments: list) -> tuple:
    """Runs xr0-finetune in this process; returns (minutes, [(step, loss), ...])."""
    from ..training.finetune import run

    start = time.perf_counter()
    trainer = run(arguments)
    minutes = (time.perf_counter() - start) / 60
    return minutes, [(e["step"], round(e["loss"], 4)) for e in trainer.state.log_history if "loss" in e]


def pack_fixture(trained: Path, fixture: Path, summary_file: str, summary: dict) -> int:
    """trained output -> fixture directory: bf16 weights, config and processor, and `summary_file` (how it was
    made); the tokenizer and the remote code are links to the repository root (one copy of each). Returns the
    weights' size in bytes."""
    import torch

    from ..modeling_xr0 import XR0ForActionGeneration
    from ..processing_xr0 import XR0Processor

    if fixture.exists():
        shutil.rmtree(fixture)
    fixture.mkdir(parents=True)
    model = XR0ForActionGeneration.from_pretrained(trained, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(fixture)
    XR0Processor.from_pretrained(trained).save_pretrained(fixture)
    link_to_repository_root(fixture)
    for leftover in LEFTOVER_FILES:
        (fixture / leftover).unlink(missing_ok=True)
    (fixture / summary_file).write_text(json.dumps(summary, indent=2) + "\n")
    return (fixture / "model.safetensors").stat().st_size
