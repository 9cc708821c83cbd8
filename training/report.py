"""What a fine-tune leaves for its readers: the loss curve as a PNG and a model card (README.md) stating the base
model and its revision, the dataset, the robot type, the recipe, the steps and the final loss."""

import json
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

# The Hub metadata every model card of this repository starts with (fine-tunes here, the variants' cards too).
FRONT_MATTER = """---
license: apache-2.0
library_name: transformers
pipeline_tag: robotics
base_model: {base_model}
tags:
  - robotics
  - vision-language-action
  - flow-matching
  - xiaomi-robotics-0
{extra_tags}---
"""

CARD = """# XR0 fine-tuned for `{robot_type}`

Fine-tuned with `xr0-finetune` from `{base_model}`{revision}.

| | |
|---|---|
| dataset | `{dataset}` ({frames} frames) |
| robot type | `{robot_type}`: cameras {views}, chunks of T = {chunk_length}, {active_dims} action dims |
| recipe | `{recipe}` (attention window {window}, noisy-action offset {offset}, prefix probability {prefix}) |
| steps | {steps} (batch {batch} per device, learning rate {learning_rate}) |
| final loss | {final_loss} (mean of the last {tail} logged steps) |

![loss curve](loss_curve.png)

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("path/to/this/folder", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("path/to/this/folder", trust_remote_code=True)
inputs = processor(images={{...}}, instruction="...", state=state, robot_type="{robot_type}")
actions = processor.decode_action(model(**inputs, seed=0).actions, "{robot_type}")
```
"""


SERIES_COLORS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (127, 127, 127),
]  # fmt: skip


def plot_lines(
    series: dict,
    path: Path,
    title: str,
    x_label: str = "",
    y_range: Optional[tuple] = None,
    error_bars: Optional[dict] = None,
) -> None:
    """{name: (xs, ys)} -> a PNG line plot (Pillow only) with a legend and its axis ranges written out;
    `error_bars` {name: [(low, high) per point]} draws vertical bars."""
    width, height, margin = 640, 360, 48
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 12), title, fill="black")
    box = (margin, 36, width - 16, height - margin)
    draw.rectangle(box, outline="gray")
    xs = [x for values, _ in series.values() for x in values]
    ys = [y for _, values in series.values() for y in values]
    if not xs:
        image.save(path)
        return
    low, high = y_range if y_range is not None else (float(min(ys)), float(max(ys)))
    span = high - low or 1.0
    first, last = min(xs), max(xs)

    def point(x, y):
        return (
            box[0] + (box[2] - box[0]) * (x - first) / max(last - first, 1e-12),
            box[3] - (box[3] - box[1]) * (y - low) / span,
        )

    for index, (name, (x_values, y_values)) in enumerate(series.items()):
        color = SERIES_COLORS[index % len(SERIES_COLORS)]
        points = [point(x, y) for x, y in zip(x_values, y_values, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, (bar_low, bar_high) in zip(x_values, (error_bars or {}).get(name, []), strict=False):
            draw.line([point(x, bar_low), point(x, bar_high)], fill=color, width=1)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        if len(series) > 1:
            draw.text((box[0] + 8, box[1] + 6 + 14 * index), f"-- {name}", fill=color)
    draw.text((4, box[1]), f"{high:.3g}", fill="gray")
    draw.text((4, box[3] - 10), f"{low:.3g}", fill="gray")
    draw.text((box[0], box[3] + 6), f"{x_label} {first:g}", fill="gray")
    draw.text((box[2] - 90, box[3] + 6), f"{x_label} {last:g}", fill="gray")
    image.save(path)


def plot_loss_curve(steps: list, losses: list, path: Path, title: str = "training loss") -> None:
    """(step, loss) points -> a PNG line plot with its axis range written out."""
    plot_lines({"loss": (steps, losses)}, path, title, x_label="step")


def write_fine_tune_card(
    output: Path, model_args, data_args, training_args, trainer, processor, dataset
) -> None:
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    steps, losses = [entry["step"] for entry in history], [float(entry["loss"]) for entry in history]
    plot_loss_curve(steps, losses, output / "loss_curve.png", f"xr0-finetune: {model_args.robot_type}")
    conversion = Path(model_args.model) / "conversion.json"
    revision = ""
    base_model = model_args.model
    if conversion.is_file():
        provenance = json.loads(conversion.read_text())
        base_model = provenance.get("source", base_model)
        revision = f" at revision `{provenance['revision']}`" if provenance.get("revision") else ""
    spec = processor.robot_spec(model_args.robot_type)
    config = trainer.model.config if hasattr(trainer.model, "config") else None
    tail = min(10, len(losses))
    front_matter = FRONT_MATTER.format(base_model=base_model, extra_tags=f"  - {model_args.robot_type}\n")
    (output / "README.md").write_text(
        front_matter
        + CARD.format(
            base_model=base_model,
            revision=revision,
            dataset=data_args.dataset,
            frames=len(dataset),
            robot_type=model_args.robot_type,
            views=", ".join(f"`{key}`" for key, _ in spec.views),
            chunk_length=processor.chunk_length(model_args.robot_type),
            active_dims=processor.active_action_dims(model_args.robot_type),
            recipe=model_args.recipe,
            window=getattr(config, "action_attention_window", None),
            offset=getattr(config, "noisy_action_position_offset", None),
            prefix=getattr(config, "action_prefix_probability", None),
            steps=trainer.state.global_step,
            batch=training_args.per_device_train_batch_size,
            learning_rate=training_args.learning_rate,
            final_loss=f"{np.mean(losses[-tail:]):.4f}" if losses else "n/a",
            tail=tail,
        )
    )
