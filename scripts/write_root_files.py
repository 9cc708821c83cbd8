"""Write the repository root's configuration files for the real XR0 base model, deterministically:

    config.json                    XR0Config defaults (the published 4.7B model) + auto_map for the Auto classes
    model.safetensors.index.json   the weight index of the real layout: key names from the meta-device model,
                                   bf16 sizes, greedy shards of at most 5 GB, model-0000k-of-0000n.safetensors
    preprocessor_config.json       the Qwen3-VL image processor with the pixel bounds the official runtime uses
    processor_config.json          XR0Processor: chunk sizes and the robot-type registry (published view layouts)

    python -m xr0.scripts.write_root_files [--output .]

The functions here also serve the converter and the tiny checkpoint, so every directory is written one way.
"""

import json
import logging
from pathlib import Path

from xr0_common.cli import ArgumentParser

from .. import REPO_ROOT
from ..robot_types_xr0 import processor_robot_types

logger = logging.getLogger("xr0.write_root_files")

MAX_SHARD_BYTES = 5 * 10**9  # "5GB" as transformers counts it
AUTO_MAP = {
    "AutoConfig": "configuration_xr0.XR0Config",
    "AutoModel": "modeling_xr0.XR0ForActionGeneration",
    "AutoProcessor": "processing_xr0.XR0Processor",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": AUTO_MAP["AutoProcessor"]}
CONFIG_FIELDS = (
    "action_length",
    "action_dim",
    "state_dim",
    "state_length",
    "num_inference_steps",
    "action_attention_window",
    "noisy_action_position_offset",
    "time_sampling_alpha",
    "time_max",
    "training_repeat",
    "action_prefix_probability",
    "max_action_prefix_length",
    "prefix_hide_probability",
    "prefix_keep_last",
    "loss_reweighting",
    "loss_reweight_range",
    "frequency_loss_weight",
    "language_loss_weight",
)


def image_processor_config() -> dict:
    """preprocessor_config.json: Qwen3-VL's image pipeline with the pixel bounds the official runtime acts with
    (see processing_xr0.DEFAULT_MIN_PIXELS), stated explicitly."""
    from ..processing_xr0 import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

    return {
        "auto_map": PROCESSOR_AUTO_MAP,
        "processor_class": "XR0Processor",
        "image_processor_type": "Qwen2VLImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "patch_size": 16,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "min_pixels": DEFAULT_MIN_PIXELS,
        "max_pixels": DEFAULT_MAX_PIXELS,
        "size": {"shortest_edge": DEFAULT_MIN_PIXELS, "longest_edge": DEFAULT_MAX_PIXELS},
    }


def config_dict(config, vlm_config: dict, dtype: str = "bfloat16") -> dict:
    """A compact, transformers-line-independent config.json of an `XR0Config`: the published schema plus our
    fields."""
    return {
        "architectures": ["XR0ForActionGeneration"],
        "auto_map": AUTO_MAP,
        "model_type": "xr0",
        "dtype": dtype,
        "vlm_config": vlm_config,
        "dit_config": config.to_dict()["dit_config"],
        **{name: getattr(config, name) for name in CONFIG_FIELDS},
    }


def processor_config(
    action_length: int = 30, action_dim: int = 32, state_dim: int = 32, robot_types=None
) -> dict:
    """processor_config.json: the model's widths and the robot types (default: the published ones)."""
    return {
        "auto_map": PROCESSOR_AUTO_MAP,
        "processor_class": "XR0Processor",
        "action_length": action_length,
        "action_dim": action_dim,
        "state_dim": state_dim,
        "robot_types": robot_types if robot_types is not None else processor_robot_types(),
    }


def stored_tensor_shapes(config) -> dict:
    """{name: shape} of every tensor a checkpoint of `config` stores (the tied lm_head is not stored), from a meta
    model."""
    import torch

    from ..modeling_xr0 import XR0ForActionGeneration

    with torch.device("meta"):
        model = XR0ForActionGeneration(config)
    return {
        name: tuple(t.shape) for name, t in model.state_dict().items() if not name.startswith("vlm.lm_head.")
    }


def shard_plan(tensor_bytes: dict, max_shard_bytes: int = MAX_SHARD_BYTES) -> dict:
    """{name: file}: tensors in order, a new shard whenever the next one would overflow (as transformers does)."""
    shards, current, current_bytes = [], [], 0
    for name, size in tensor_bytes.items():
        if current and current_bytes + size > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += size
    if current:
        shards.append(current)
    if len(shards) == 1:
        return {name: "model.safetensors" for name in shards[0]}
    return {
        name: f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        for i, names in enumerate(shards, start=1)
        for name in names
    }


def index_dict(tensor_bytes: dict, weight_map: dict) -> dict:
    return {"metadata": {"total_size": sum(tensor_bytes.values())}, "weight_map": weight_map}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    logger.info("wrote %s", path)


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=REPO_ROOT)
    args = parser.parse_args(argv)
    import torch

    from ..configuration_xr0 import QWEN3_VL_4B_CONFIG, XR0Config

    config = XR0Config()
    bytes_per_value = torch.finfo(torch.bfloat16).bits // 8
    tensor_bytes = {
        name: bytes_per_value * int(torch.Size(shape).numel())
        for name, shape in stored_tensor_shapes(config).items()
    }
    write_json(args.output / "config.json", config_dict(config, QWEN3_VL_4B_CONFIG))
    write_json(
        args.output / "model.safetensors.index.json", index_dict(tensor_bytes, shard_plan(tensor_bytes))
    )
    write_json(args.output / "preprocessor_config.json", image_processor_config())
    write_json(args.output / "processor_config.json", processor_config())


if __name__ == "__main__":
    main()
