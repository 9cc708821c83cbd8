"""XR0 demo: camera images + state -> image processor -> model -> normalized action chunk, with per-stage timings.

    python scripts/demo.py            # tiny model with RANDOM weights (the real 4.7B model needs its checkpoint)

The prompt is built from the published template's token ids by hand until the tokenizer and processor land
(issue #3); the images go through the real Qwen3-VL image pipeline (patch 16, merge 2, mean/std 0.5).
"""

import argparse
import time

import numpy as np
import torch
import transformers

from tiny_model import tiny_model

IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, NEWLINE = 151644, 151645, 151652, 151653, 151655, 198


def sample_images(size: int, seed: int) -> list:
    """Two synthetic 224x224 uint8 HWC camera views (base and wrist): smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    views = []
    for offset in (0, 90):
        image = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 128.0)], -1)
        views.append(np.clip(np.roll(image, offset, axis=1) + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8))
    return views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="noise seed (a local generator; global RNG untouched)")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the config's, 5)")
    args = parser.parse_args()

    model = tiny_model()
    config = model.config
    print(f"XR0 demo on a TINY model with RANDOM weights ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          "parameters): the actions below show the pipeline works, not a trained policy.")

    timings = {}
    start = time.perf_counter()
    # transformers 5.x names the torchvision-free processor `...Pil`; 4.57's plain class is that processor.
    processor_class = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    image_processor = processor_class(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    images = image_processor(images=sample_images(224, args.seed), return_tensors="pt")
    merge = image_processor.merge_size**2
    ids = [IM_START, 872, NEWLINE]
    for grid in images["image_grid_thw"]:
        ids += [VISION_START] + [IMAGE_PAD] * (int(grid.prod()) // merge) + [VISION_END, NEWLINE]
    ids += [IM_END, NEWLINE]
    input_ids = torch.tensor([ids])
    state = torch.zeros(1, config.state_length, config.state_dim)
    state[0, 0, :8] = torch.tensor([0.1, -0.2, 0.3, 0.0, 0.5, 0.0, 0.04, -0.04])
    action_mask = torch.zeros(1, config.action_length, config.action_dim)
    action_mask[..., :7] = 1
    timings["image processing"] = time.perf_counter() - start

    step_times = []
    first, last = model.dit.layers[0], model.dit.layers[-1]
    first.register_forward_pre_hook(lambda *_: step_times.append(time.perf_counter()))
    last.register_forward_hook(lambda *_: step_times.__setitem__(-1, time.perf_counter() - step_times[-1]))

    with torch.inference_mode():
        start = time.perf_counter()
        observation = model.encode_observation(
            input_ids, torch.ones_like(input_ids), images["pixel_values"], images["image_grid_thw"], state
        )
        timings["VLM prefill"] = time.perf_counter() - start
        actions = model.sample_actions(
            observation, action_mask, generator=torch.Generator().manual_seed(args.seed), num_steps=args.steps
        )

    print(f"prompt: {input_ids.shape[1]} tokens ({len(images['image_grid_thw'])} views of 224x224); "
          f"action chunk: {tuple(actions.shape)} (normalized), active dims 0-6:")
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    print(actions[0, :, :7].numpy())
    for name, seconds in timings.items():
        print(f"  {name:<18} {seconds * 1e3:8.2f} ms")
    for k, seconds in enumerate(step_times):
        print(f"  DiT step {k} (t={k / len(step_times):.1f}) {seconds * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
