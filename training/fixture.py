"""Small trained checkpoints that ship with the repository (the closed-loop fixtures): a randomly initialized tiny
XR0 of the real architecture, `xr0-finetune` runs on it, and the packing of a result into a fixture directory.

The benchmarks' own `train` modules (`xr0.planar_reach.train`, `xr0.meta_world.train`) choose the sizes, the
robot type and the steps; everything they share lives here, so every fixture is made one way. torch and the model
load when a checkpoint is written, so that those commands print `--help` at once.
"""

import json
import shutil
import time
from pathlib import Path
from typing import Optional

from .. import REPO_ROOT
from ..checkpoint_layout import link_to_repository_root

# The language model of every closed-loop fixture: the real tokenizer and vocabulary (frozen embeddings are most of
# the file), 4 layers of 48; its head_dim 16 and 2 KV heads are what each fixture's DiT must match.
FIXTURE_TEXT_CONFIG = {
    "vocab_size": 151936,
    "hidden_size": 48,
    "intermediate_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    "tie_word_embeddings": True,
}
# Written by the Trainer or the processor, not needed by a fixture (the tokenizer is linked to the root's).
LEFTOVER_FILES = ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


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
    from .finetune import run

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
