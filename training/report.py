"""What a fine-tune leaves for its readers: the loss curve as a PNG and a model card (README.md) stating the base
model and its revision, the dataset, the robot type, the recipe, the steps and the final loss."""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..scripts.write_variant_cards import FRONT_MATTER

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


def plot_loss_curve(steps: list, losses: list, path: Path, title: str = "training loss") -> None:
    """(step, loss) points -> a PNG line plot with its axis range written out."""
    width, height, margin = 640, 360, 48
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 12), title, fill="black")
    box = (margin, 36, width - 16, height - margin)
    draw.rectangle(box, outline="gray")
    if losses:
        low, high = float(min(losses)), float(max(losses))
        span = high - low or 1.0
        first, last = steps[0], steps[-1]
        points = [
            (
                box[0] + (box[2] - box[0]) * (s - first) / max(last - first, 1),
                box[3] - (box[3] - box[1]) * (v - low) / span,
            )
            for s, v in zip(steps, losses, strict=True)
        ]
        if len(points) > 1:
            draw.line(points, fill=(31, 119, 180), width=2)
        draw.text((4, box[1]), f"{high:.3g}", fill="gray")
        draw.text((4, box[3] - 10), f"{low:.3g}", fill="gray")
        draw.text((box[0], box[3] + 6), f"step {first}", fill="gray")
        draw.text((box[2] - 70, box[3] + 6), f"step {last}", fill="gray")
    image.save(path)


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
