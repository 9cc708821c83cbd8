"""Hand-built observations for numeric tests, around the tiny model of xr0.tiny_model."""

import torch

from xr0.configuration_xr0 import XR0Config
from xr0.tiny_model import TINY_DIT_CONFIG, TINY_VLM_CONFIG, tiny_config, tiny_model  # noqa: F401

IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD = 151644, 151645, 151652, 151653, 151655
PAD = 151643
PATCH_FEATURES = 3 * 2 * 16 * 16


def prompt_ids(num_text_tokens: int, grids) -> list:
    """Token ids shaped like the XR0 prompt: chat header, one vision block per image, instruction text."""
    ids = [IM_START, 872, 198]
    for t, h, w in grids:
        ids += [VISION_START] + [IMAGE_PAD] * (t * h * w // 4) + [VISION_END, 198]
    ids += [1000 + 7 * k for k in range(num_text_tokens)] + [IM_END, 198]
    return ids


def observation(
    num_text_tokens=(5,), grids=((1, 4, 4), (1, 4, 6)), padding_side="left", seed=0, state_dim=32
):
    """A batch of hand-built prompts (one per entry of `num_text_tokens`), each with the images of `grids`."""
    generator = torch.Generator().manual_seed(seed)
    rows = [prompt_ids(n, grids) for n in num_text_tokens]
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row)
        attention_mask[i, span] = 1
    image_grid_thw = torch.tensor([list(g) for _ in rows for g in grids], dtype=torch.long)
    num_patches = int(image_grid_thw.prod(-1).sum())
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(num_patches, PATCH_FEATURES, generator=generator),
        "image_grid_thw": image_grid_thw,
        "state": torch.randn(len(rows), 1, state_dim, generator=generator),
    }


def row(batch: dict, i: int, grids_per_row: int = 2) -> dict:
    """Row i of an `observation` batch, with its own padding removed."""
    keep = batch["attention_mask"][i].bool()
    grid = batch["image_grid_thw"][i * grids_per_row : (i + 1) * grids_per_row]
    patches_before = int(batch["image_grid_thw"][: i * grids_per_row].prod(-1).sum())
    num_patches = int(grid.prod(-1).sum())
    return {
        "input_ids": batch["input_ids"][i : i + 1, keep],
        "attention_mask": batch["attention_mask"][i : i + 1, keep],
        "pixel_values": batch["pixel_values"][patches_before : patches_before + num_patches],
        "image_grid_thw": grid,
        "state": batch["state"][i : i + 1],
    }


def action_mask(batch_size: int, config: XR0Config, active_dims: int = 7) -> torch.Tensor:
    mask = torch.zeros(batch_size, config.action_length, config.action_dim)
    mask[..., :active_dims] = 1
    return mask


def encode(model, batch):
    """The observation of an `observation()` batch."""
    return model.encode_observation(
        batch["input_ids"],
        batch["attention_mask"],
        batch["pixel_values"],
        batch["image_grid_thw"],
        batch["state"],
    )
