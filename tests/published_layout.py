"""Checkpoints in the published layout, built without our model: tensor names and shapes come from an explicit
table of the official MiBoT modules (its MLPProjector is Linear(in -> out) -> GELU -> Linear(out -> out), no
bias) and from the stock Qwen3-VL class; the config is `data/official_config.json`, the file the official code's
save_pretrained wrote (transformers 4.57.1) for a tiny model, kept verbatim. A fixture saved from our own module
could not catch a shape we misread; this one can."""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

OFFICIAL_CONFIG = Path(__file__).resolve().parent / "data" / "official_config.json"
# Qwen3-VL-4B-Instruct's released preprocessor_config.json, as the published repos extend it with action_config.
QWEN3_VL_PREPROCESSOR = {
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "MiBotProcessor",
    "auto_map": {"AutoProcessor": "processing_mibot.MiBotProcessor"},
}


def action_expert_shapes(
    hidden: int, layers: int, head_dim: int, action_dim: int = 32, state_dim: int = 32
) -> dict:
    """{name: shape} of everything outside `vlm.` in a published checkpoint (spec of the official modules)."""
    shapes = {
        "state_projector.layers.0.weight": (hidden, state_dim),
        "state_projector.layers.2.weight": (hidden, hidden),
        "action_projector.layers.0.weight": (hidden, action_dim),
        "action_projector.layers.2.weight": (hidden, hidden),
        "action_output_layer.layers.0.weight": (action_dim, hidden),
        "action_output_layer.layers.2.weight": (action_dim, action_dim),
        "t_embedder.mlp.0.weight": (hidden, 256),
        "t_embedder.mlp.2.weight": (hidden, hidden),
        "t_projector.layers.0.weight": (6 * hidden, hidden),
        "t_projector.layers.0.bias": (6 * hidden,),
        "sink.weight": (1, hidden),
    }
    for i in range(layers):
        p = f"dit.layers.{i}."
        shapes.update(
            {
                p + "attn.qkv_proj.weight": (3 * hidden, hidden),
                p + "attn.qkv_proj.bias": (3 * hidden,),
                p + "attn.o_proj.weight": (hidden, hidden),
                p + "attn.q_norm.weight": (head_dim,),
                p + "attn.k_norm.weight": (head_dim,),
                p + "mlp.gate_proj.weight": (4 * hidden, hidden),
                p + "mlp.up_proj.weight": (4 * hidden, hidden),
                p + "mlp.down_proj.weight": (hidden, 4 * hidden),
                p + "input_layernorm.weight": (hidden,),
                p + "middle_layernorm.weight": (hidden,),
                p + "post_layernorm.weight": (hidden,),
                p + "final_layernorm.weight": (hidden,),
                p + "adaln_table": (6, hidden),
            }
        )
    return shapes


def vlm_shapes(vlm_config: dict) -> dict:
    """{name: shape} of the stock Qwen3-VL's stored tensors under `vlm.` (the tied lm_head is not stored)."""
    with torch.device("meta"):
        vlm = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**vlm_config))
    return {"vlm." + k: tuple(v.shape) for k, v in vlm.state_dict().items() if not k.startswith("lm_head.")}


def published_shapes(config: dict) -> dict:
    dit = config["dit_config"]
    return {
        **vlm_shapes(config["vlm_config"]),
        **action_expert_shapes(
            dit["hidden_size"],
            dit["num_hidden_layers"],
            dit["head_dim"],
            config["action_dim"],
            config["state_dim"],
        ),
    }


def official_config() -> dict:
    return json.loads(OFFICIAL_CONFIG.read_text())


def action_config(chunk_lengths: dict, seed: int = 0) -> dict:
    """Published-style statistics: per robot type (T, 32) mean/std, 7 active dims, time-invariant rows."""
    rng = np.random.default_rng(seed)
    config = {}
    for robot_type, length in chunk_lengths.items():
        mean = np.r_[rng.normal(0, 0.5, 7), np.zeros(25)]
        std = np.r_[rng.uniform(0.05, 2.0, 7), np.zeros(25)]
        config[robot_type] = {
            "mean": np.tile(mean, (length, 1)).tolist(),
            "std": np.tile(std, (length, 1)).tolist(),
        }
    return config


def write_published_checkpoint(
    directory: Path, seed: int = 0, shards: int = 2, prefix: str = "", chunk_lengths: dict = None
) -> dict:
    """Random weights in the published layout (fp32, `shards` files with an index when > 1, keys optionally
    wrapped in `prefix`), the official config.json and a Qwen3-VL preprocessor_config.json with action_config.
    Returns the tensors by their unwrapped names."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = official_config()
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in published_shapes(config).items():
        if name.endswith("norm.weight"):
            tensors[name] = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:
            tensors[name] = 0.2 * torch.randn(shape, generator=generator)
    names = list(tensors)
    parts = [names[i::shards] for i in range(shards)]
    if shards == 1:
        save_file(
            {prefix + k: tensors[k] for k in names},
            str(directory / "model.safetensors"),
            metadata={"format": "pt"},
        )
    else:
        weight_map = {}
        for i, part in enumerate(parts, start=1):
            file = f"model-{i:05d}-of-{shards:05d}.safetensors"
            save_file(
                {prefix + k: tensors[k] for k in part}, str(directory / file), metadata={"format": "pt"}
            )
            weight_map.update({prefix + k: file for k in part})
        total = sum(t.numel() * 4 for t in tensors.values())
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
        )
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    chunk_lengths = chunk_lengths or {"libero_all": 10, "fractal_delta": 4, "agibot_pt_v3": 30}
    preprocessor = dict(QWEN3_VL_PREPROCESSOR, action_config=action_config(chunk_lengths, seed))
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return tensors
