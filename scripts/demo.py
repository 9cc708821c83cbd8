"""XR0 demo: camera images + instruction + state -> processor -> model -> decoded action chunk, with the median
time of each stage over several runs and a figure of the inputs and the chunk.

    xr0-demo                                  # embedded tiny checkpoint, RANDOM weights
    xr0-demo --model out/libero               # a converted checkpoint (xr0-convert)
    xr0-demo --model out/libero --image base=cam0.png --image wrist_left=cam1.png --state 0.1 0.2 ...

Without --image, synthetic camera views stand in for real ones. The action chunk and the timings go to stdout,
messages to stderr (--log_level).
"""

import logging
import statistics
import time
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from xr0_common.cli import ArgumentParser

from .. import REPO_ROOT

logger = logging.getLogger(__name__)

TINY_CHECKPOINT = REPO_ROOT / "fixtures" / "tiny-xr0"
DEFAULT_INSTRUCTION = "Put both the alphabet soup and the tomato sauce in the basket."
DEFAULT_STATE = [0.1, -0.2, 0.3, 0.0, 0.5, 0.0, 0.04, -0.04]
SYNTHETIC_VIEW_SIZE = 224


def synthetic_view(size: int, seed: int) -> np.ndarray:
    """A uint8 HWC stand-in camera view: smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = np.stack(
        [ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 128.0)], -1
    )
    return np.clip(np.roll(image, 37 * seed, axis=1) + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


class StageTimer:
    """Wall-clock seconds of each stage of each run. On CUDA every reading first waits for the queued kernels, so
    a stage is charged for its own work. Each DiT step is timed from the action projection to the output layer
    of one velocity evaluation (forward hooks), so the Euler loop itself is timed as the model runs it."""

    def __init__(self, model, device):  # device: a torch.device
        self.device = device
        self.runs: list = []  # one {stage: seconds} per run
        self._step_start = None
        self._hooks = [
            model.action_projector.register_forward_pre_hook(self._start_step),
            model.action_output_layer.register_forward_hook(self._end_step),
        ]

    def now(self) -> float:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def new_run(self) -> dict:
        self.runs.append({})
        return self.runs[-1]

    def _start_step(self, *_):
        self._step_start = self.now()

    def _end_step(self, *_):
        if self.runs:
            run = self.runs[-1]
            run[f"DiT step {sum(k.startswith('DiT step') for k in run)}"] = self.now() - self._step_start

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def run_pipeline(model, processor, observation: dict, device, seed: int, num_steps, timer: StageTimer):
    """One pass observation -> decoded chunk, each stage timed into a new run of `timer`. Returns the
    de-normalized (T, active dims) chunk and the prompt length in tokens."""
    import torch

    times = timer.new_run()
    run_start = timer.now()
    inputs = processor(**observation).to(device)
    times["processor"] = timer.now() - run_start
    with torch.inference_mode():
        start = timer.now()
        encoded = model.encode_observation(
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["pixel_values"],
            inputs["image_grid_thw"],
            inputs["state"],
        )
        times["VLM prefill"] = timer.now() - start
        actions = model.sample_actions(
            encoded,
            inputs["action_mask"],
            # On the mask's device: the noise the official forward draws for this seed.
            generator=torch.Generator(inputs["action_mask"].device).manual_seed(seed),
            num_steps=num_steps,
        )
        decoded = processor.decode_action(actions, observation["robot_type"])[0].numpy()
    times["total"] = timer.now() - run_start
    return decoded, inputs["input_ids"].shape[1]


def measure(
    model,
    processor,
    observation: dict,
    device,
    seed: int = 0,
    num_steps=None,
    runs: int = 3,
    warmup_runs: int = 1,
):
    """`warmup_runs` untimed passes (first-call allocations, kernel selection and caches would otherwise be
    charged to the first run), then `runs` timed ones. Returns (chunk of the last run, prompt length,
    {stage: [seconds per run]})."""
    if runs < 1 or warmup_runs < 0:
        raise ValueError(f"`runs` must be >= 1 and `warmup_runs` >= 0, got {runs} and {warmup_runs}.")
    timer = StageTimer(model, device)
    try:
        for _ in range(warmup_runs):
            run_pipeline(model, processor, observation, device, seed, num_steps, timer)
        timer.runs.clear()
        for _ in range(runs):
            decoded, prompt_length = run_pipeline(
                model, processor, observation, device, seed, num_steps, timer
            )
    finally:
        timer.remove()
    stages = {stage: [run[stage] for run in timer.runs] for stage in timer.runs[0]}
    return decoded, prompt_length, stages


def plot_chunk(
    actions: np.ndarray,
    labels: list,
    views: dict,
    instruction: str,
    execute_steps: int,
    title: str,
):
    """The inputs and the chunk as a matplotlib Figure (Agg canvas: no display needed).

    Args:
        actions: (T, D) de-normalized chunk.
        labels: [(name, unit or None)] per action dim (`RobotSpec.action_labels`).
        views: {"key (Title)": uint8 (H, W, 3) image} in prompt order.
        instruction: the task, shown under the title.
        execute_steps: steps 0 .. execute_steps - 1 are shaded as executed.
    Returns:
        the Figure: one image axes per view, then one axes per action dim (one line of T points each).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps, dims = actions.shape
    columns = min(dims, 4)
    rows = (dims + columns - 1) // columns
    figure = Figure(figsize=(3.2 * columns, 3.2 + 2.4 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(f"{title}\n\u201c{instruction}\u201d")
    grid = figure.add_gridspec(2, 1, height_ratios=[3.2, 2.4 * rows])
    view_grid = grid[0].subgridspec(1, len(views))
    for column, (name, image) in enumerate(views.items()):
        axes = figure.add_subplot(view_grid[0, column])
        axes.imshow(image)
        axes.set_title(name)
        axes.set_axis_off()
    chunk_grid = grid[1].subgridspec(rows, columns)
    time_steps = np.arange(steps)
    for dim, (name, unit) in enumerate(labels):
        axes = figure.add_subplot(chunk_grid[dim // columns, dim % columns])
        axes.axvspan(
            -0.5,
            execute_steps - 0.5,
            color="tab:green",
            alpha=0.15,
            label=f"executed ({execute_steps} of {steps})",
        )
        axes.plot(time_steps, actions[:, dim], marker="o", markersize=3, color="tab:blue")
        axes.set_title(name)
        axes.set_ylabel(unit or "")
        axes.set_xlim(-0.5, steps - 0.5)
        axes.grid(alpha=0.3)
        if dim + columns >= dims:  # nothing below it
            axes.set_xlabel("step")
        if dim == 0:
            axes.legend(loc="best", fontsize="small")
    return figure


def parse_images(items: list, view_keys: list, parser: ArgumentParser) -> dict:
    given = {}
    for item in items:
        key, separator, path = item.partition("=")
        if not separator or not key or not path:
            parser.error(f"--image: expected VIEW=PATH, got {item!r}")
        if key not in view_keys:
            parser.error(f"--image: view {key!r} is not one of this robot type's views {view_keys}")
        given[key] = np.asarray(Image.open(path).convert("RGB"))
    return given


def main(argv: Optional[list] = None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--model",
        type=Path,
        default=TINY_CHECKPOINT,
        help="checkpoint directory (default: the embedded tiny one)",
    )
    parser.add_argument(
        "--robot_type", default=None, help="default: the first robot type with statistics and views"
    )
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    parser.add_argument("--state", type=float, nargs="+", default=DEFAULT_STATE, help="raw robot state")
    parser.add_argument(
        "--image", action="append", default=[], metavar="VIEW=PATH", help="a camera image per view"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="noise seed (a local generator; global RNG untouched)"
    )
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the config's)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--runs", type=int, default=3, help="timed runs; each stage reports its median (default: 3)"
    )
    parser.add_argument("--warmup_runs", type=int, default=1, help="untimed runs first (default: 1)")
    parser.add_argument(
        "--execute_steps", type=int, default=None, help="steps shaded as executed (default: the whole chunk)"
    )
    parser.add_argument("--plot", type=Path, default=Path("xr0_demo_actions.png"), help="the figure (PNG)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup_runs < 0:
        parser.error(f"--runs must be >= 1 and --warmup_runs >= 0, got {args.runs} and {args.warmup_runs}")
    import torch  # after parsing, so that --help prints at once
    from transformers import AutoModel, AutoProcessor

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    random_weights = args.model.resolve() == TINY_CHECKPOINT.resolve()
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    robot_type = args.robot_type or next(
        (name for name, spec in processor.robot_types.items() if spec.has_action_statistics and spec.views),
        None,
    )
    if robot_type is None:
        parser.error(
            f"{args.model}: no robot type with action statistics and camera views; pass --robot_type"
        )
    if robot_type not in processor.robot_types:
        parser.error(f"--robot_type {robot_type!r}: not one of {sorted(processor.robot_types)}")
    spec = processor.robot_spec(robot_type)
    if not spec.views:
        parser.error(f"--robot_type {robot_type!r} has no camera views registered in {args.model}")
    parameters = sum(p.numel() for p in model.parameters())
    if random_weights:
        logger.warning(
            "the embedded TINY checkpoint has RANDOM weights (%.1f M parameters): the actions show that the "
            "pipeline works, not a trained policy",
            parameters / 1e6,
        )
    logger.info("%s: %.3g B parameters, %s on %s", args.model, parameters / 1e9, dtype, device)

    view_keys = [key for key, _ in spec.views]
    given = parse_images(args.image, view_keys, parser)
    images = {key: given.get(key, synthetic_view(SYNTHETIC_VIEW_SIZE, i)) for i, key in enumerate(view_keys)}
    synthetic = [key for key in view_keys if key not in given]
    if synthetic:
        logger.info(
            "views %s: synthetic %dx%d images (pass --image VIEW=PATH)",
            synthetic,
            *(SYNTHETIC_VIEW_SIZE,) * 2,
        )
    observation = dict(
        images=images, instruction=args.instruction, state=np.array(args.state), robot_type=robot_type
    )

    chunk_length = processor.chunk_length(robot_type)
    execute_steps = chunk_length if args.execute_steps is None else args.execute_steps
    if not 1 <= execute_steps <= chunk_length:
        parser.error(
            f"--execute_steps must be in [1, {chunk_length}] (the chunk length), got {execute_steps}"
        )

    decoded, prompt_length, stages = measure(
        model, processor, observation, device, args.seed, args.steps, args.runs, args.warmup_runs
    )
    labels = spec.action_labels(decoded.shape[1])

    print(f"robot type {robot_type}; instruction {args.instruction!r}; prompt {prompt_length} tokens")
    print(f"action chunk {decoded.shape} (T x active dims, de-normalized), seed {args.seed}:")
    print("  dims: " + ", ".join(f"{name} [{unit}]" if unit else name for name, unit in labels))
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    print(decoded)
    runs = "run" if args.runs == 1 else f"{args.runs} runs"
    print(f"timings (ms), median of {runs} after {args.warmup_runs} warm-up; min and max beside it:")
    num_dit_steps = sum(stage.startswith("DiT step") for stage in stages)
    for stage, seconds in stages.items():
        name = stage
        if stage.startswith("DiT step"):
            name += f" (t={int(stage.split()[-1]) / num_dit_steps:.1f})"
        milliseconds = [s * 1e3 for s in seconds]
        print(
            f"  {name:<22} {statistics.median(milliseconds):9.2f}   "
            f"[{min(milliseconds):.2f}, {max(milliseconds):.2f}]"
        )
    title = f"XR0 action chunk: {robot_type}" + (" (RANDOM weights)" if random_weights else "")
    titled_views = {f"{key} ({view_title} view)": images[key] for key, view_title in spec.views}
    figure = plot_chunk(decoded, labels, titled_views, args.instruction, execute_steps, title)
    figure.savefig(args.plot, dpi=100)
    print(f"figure of the views and the chunk: {args.plot}")


if __name__ == "__main__":
    main()
