"""XR0 demo: camera images + instruction + state -> processor -> model -> decoded action chunk, with timings.

    python scripts/demo.py     # tiny model with RANDOM weights and the real tokenizer / image pipeline

The real 4.7B model needs its checkpoint (see the variants); this tiny one shows the whole path works.
"""

import argparse
import time

import numpy as np
import torch
from transformers import AutoProcessor

from tiny_model import tiny_model
from xr0_import import REPO_ROOT

ROBOT_TYPE = "libero_all"
INSTRUCTION = "Put both the alphabet soup and the tomato sauce in the basket."


def sample_images(size: int, seed: int) -> dict:
    """Two synthetic uint8 HWC camera views (base and wrist): smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    views = {}
    for key, offset in (("base", 0), ("wrist", size // 3)):
        image = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 128.0)], -1)
        noisy = np.roll(image, offset, axis=1) + rng.normal(0, 8, image.shape)
        views[key] = np.clip(noisy, 0, 255).astype(np.uint8)
    return views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="noise seed (a local generator; global RNG untouched)")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the config's, 5)")
    args = parser.parse_args()

    model = tiny_model()
    config = model.config
    processor = AutoProcessor.from_pretrained(REPO_ROOT, trust_remote_code=True, action_length=config.action_length)
    # Random weights have no statistics of their own: these stand in for a checkpoint's action_config.
    processor.register_robot_type(ROBOT_TYPE, action_mean=np.zeros(7), action_std=np.full(7, 0.1))
    print(f"XR0 demo on a TINY model with RANDOM weights ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          "parameters): the actions below show the pipeline works, not a trained policy.")

    timings = {}
    start = time.perf_counter()
    state = np.array([0.1, -0.2, 0.3, 0.0, 0.5, 0.0, 0.04, -0.04], dtype=np.float32)
    inputs = processor(images=sample_images(224, args.seed), instruction=INSTRUCTION, state=state, robot_type=ROBOT_TYPE)
    timings["processor"] = time.perf_counter() - start

    step_times = []
    first, last = model.dit.layers[0], model.dit.layers[-1]
    first.register_forward_pre_hook(lambda *_: step_times.append(time.perf_counter()))
    last.register_forward_hook(lambda *_: step_times.__setitem__(-1, time.perf_counter() - step_times[-1]))

    with torch.inference_mode():
        start = time.perf_counter()
        observation = model.encode_observation(
            inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], inputs["image_grid_thw"], inputs["state"]
        )
        timings["VLM prefill"] = time.perf_counter() - start
        actions = model.sample_actions(
            observation, inputs["action_mask"], generator=torch.Generator().manual_seed(args.seed), num_steps=args.steps
        )
    decoded = processor.decode_action(actions, ROBOT_TYPE)[0]

    print(f"robot type {ROBOT_TYPE}: 2 views of 224x224 -> {inputs['input_ids'].shape[1]} prompt tokens; "
          f"instruction: {INSTRUCTION!r}")
    print(f"action chunk: {tuple(decoded.shape)} (T x active dims, de-normalized):")
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    print(decoded.numpy())
    for name, seconds in timings.items():
        print(f"  {name:<19} {seconds * 1e3:8.2f} ms")
    for k, seconds in enumerate(step_times):
        print(f"  DiT step {k} (t={k / len(step_times):.1f}) {seconds * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
