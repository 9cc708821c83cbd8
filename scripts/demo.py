"""XR0 demo: camera images + instruction + state -> processor -> model -> decoded action chunk, with per-stage
timings and a plot of the action trajectories.

    xr0-demo                                  # embedded tiny checkpoint, RANDOM weights
    xr0-demo --model out/libero               # a converted checkpoint (xr0-convert)
    xr0-demo --model out/libero --image base=cam0.png --image wrist_left=cam1.png --state 0.1 0.2 ...

Without --image, synthetic camera views stand in for real ones.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import AutoModel, AutoProcessor

from .. import REPO_ROOT

TINY_CHECKPOINT = REPO_ROOT / "fixtures" / "tiny-xr0"
DEFAULT_INSTRUCTION = "Put both the alphabet soup and the tomato sauce in the basket."
DEFAULT_STATE = [0.1, -0.2, 0.3, 0.0, 0.5, 0.0, 0.04, -0.04]


def synthetic_view(size: int, seed: int) -> np.ndarray:
    """A uint8 HWC stand-in camera view: smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = np.stack(
        [ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 128.0)], -1
    )
    return np.clip(np.roll(image, 37 * seed, axis=1) + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def plot_actions(actions: np.ndarray, path: Path, title: str) -> None:
    """(T, D) actions -> a PNG line plot, one panel per action dim."""
    steps, dims = actions.shape
    panel_w, panel_h, margin = 300, 150, 30
    columns = min(dims, 4)
    rows = (dims + columns - 1) // columns
    canvas = Image.new("RGB", (columns * panel_w, rows * panel_h + margin), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 8), title, fill="black")
    for d in range(dims):
        left, top = (d % columns) * panel_w, margin + (d // columns) * panel_h
        box = (left + 35, top + 15, left + panel_w - 10, top + panel_h - 20)
        draw.rectangle(box, outline="gray")
        values = actions[:, d]
        low, high = float(values.min()), float(values.max())
        span = high - low or 1.0
        points = [
            (
                box[0] + (box[2] - box[0]) * t / max(steps - 1, 1),
                box[3] - (box[3] - box[1]) * (v - low) / span,
            )
            for t, v in enumerate(values)
        ]
        draw.line(points, fill=(31, 119, 180), width=2)
        draw.text((left + 35, top + 2), f"dim {d}: [{low:.3g}, {high:.3g}]", fill="black")
        draw.text((box[0], box[3] + 3), "t=0", fill="gray")
        draw.text((box[2] - 30, box[3] + 3), f"t={steps - 1}", fill="gray")
    canvas.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=TINY_CHECKPOINT,
        help="checkpoint directory (default: embedded tiny one)",
    )
    parser.add_argument("--robot-type", default=None, help="default: the first robot type with statistics")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    parser.add_argument("--state", type=float, nargs="+", default=DEFAULT_STATE, help="raw robot state")
    parser.add_argument(
        "--image", action="append", default=[], metavar="VIEW=PATH", help="a camera image per view"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="noise seed (a local generator; global RNG untouched)"
    )
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the config's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--plot", type=Path, default=Path("xr0_demo_actions.png"))
    args = parser.parse_args()

    random_weights = args.model.resolve() == TINY_CHECKPOINT.resolve()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True, dtype=dtype).to(args.device).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    robot_type = args.robot_type or next(
        (name for name, spec in processor.robot_types.items() if spec.has_action_statistics and spec.views),
        None,
    )
    if robot_type is None:
        raise SystemExit(f"{args.model}: no robot type with action statistics; pass --robot-type")
    parameters = sum(p.numel() for p in model.parameters())
    if random_weights:
        print(
            f"XR0 demo on the embedded TINY checkpoint with RANDOM weights ({parameters / 1e6:.1f} M parameters): "
            "the actions show the pipeline works, not a trained policy."
        )
    else:
        print(f"XR0 demo on {args.model} ({parameters / 1e9:.2f} B parameters, {dtype}, {args.device}).")

    views = processor.robot_spec(robot_type).views
    given = dict(item.split("=", 1) for item in args.image)
    images = {
        key: np.asarray(Image.open(given[key]).convert("RGB")) if key in given else synthetic_view(224, i)
        for i, (key, _) in enumerate(views)
    }
    if not given:
        print(f"camera views {[key for key, _ in views]}: synthetic 224x224 images (pass --image VIEW=PATH)")

    timings = {}
    start = time.perf_counter()
    inputs = processor(
        images=images, instruction=args.instruction, state=np.array(args.state), robot_type=robot_type
    )
    inputs = inputs.to(args.device)
    timings["processor"] = time.perf_counter() - start

    step_times = []
    model.dit.layers[0].register_forward_pre_hook(lambda *_: step_times.append(time.perf_counter()))
    model.dit.layers[-1].register_forward_hook(
        lambda *_: step_times.__setitem__(-1, time.perf_counter() - step_times[-1])
    )
    with torch.inference_mode():
        start = time.perf_counter()
        observation = model.encode_observation(
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["pixel_values"],
            inputs["image_grid_thw"],
            inputs["state"],
        )
        timings["VLM prefill"] = time.perf_counter() - start
        actions = model.sample_actions(
            observation,
            inputs["action_mask"],
            # On the mask's device: the noise the official forward draws for this seed.
            generator=torch.Generator(inputs["action_mask"].device).manual_seed(args.seed),
            num_steps=args.steps,
        )
    decoded = processor.decode_action(actions, robot_type)[0].numpy()

    print(
        f"robot type {robot_type}; instruction {args.instruction!r}; prompt {inputs['input_ids'].shape[1]} tokens"
    )
    print(f"action chunk {decoded.shape} (T x active dims, de-normalized):")
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    print(decoded)
    for name, seconds in timings.items():
        print(f"  {name:<19} {seconds * 1e3:8.2f} ms")
    for k, seconds in enumerate(step_times):
        print(f"  DiT step {k} (t={k / len(step_times):.1f}) {seconds * 1e3:8.2f} ms")
    title = f"XR0 action chunk - {robot_type}" + (" - RANDOM weights" if random_weights else "")
    plot_actions(decoded, args.plot, title)
    print(f"plot of the action trajectories: {args.plot}")


if __name__ == "__main__":
    main()
