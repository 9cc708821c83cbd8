"""Render each variant's model card, variants/<name>/README.md, from its variants/<name>/variant.json (what is
particular to the published checkpoint: repo, revision, results) and its robot type's entry in
`robot_types_xr0.ROBOT_TYPES` (views, active dims, T, images, state, protocol), so each fact is written once.
`python -m xr0.scripts.write_generated_files` writes them with the registry's other copies; this writes the cards
alone:

    python -m xr0.scripts.write_variant_cards
"""

import json
import logging

from xr0_common.cli import ArgumentParser

from .. import REPO_ROOT
from ..robot_types_xr0 import ROBOT_TYPES
from ..training.report import FRONT_MATTER

logger = logging.getLogger("xr0.write_variant_cards")

VARIANTS_DIR = REPO_ROOT / "variants"


def python_call(opening: str, arguments: list, width: int = 110) -> list:
    """The lines of `opening` + arguments + ")" as the repository's formatter (ruff, line length 110) writes them:
    one line when it fits, else one argument per line."""
    line = opening + ", ".join(arguments) + ")"
    if len(line) <= width:
        return [line]
    return [opening, *(f"    {argument}," for argument in arguments), ")"]


def render(variant: dict, robot_types: dict) -> str:
    """The card of `variant` (a variant.json); `robot_types`: the registry of robot-type facts
    (`robot_types_xr0.ROBOT_TYPES`)."""
    robot = robot_types.get(variant["robot_type"]) or {}
    base_model = (
        "Qwen/Qwen3-VL-4B-Instruct"
        if variant["name"] == "base"
        else "XiaomiRobotics/Xiaomi-Robotics-0-Pretrain"
    )
    extra_tags = f"  - {variant['robot_type']}\n" if variant["robot_type"] else ""
    lines = [FRONT_MATTER.format(base_model=base_model, extra_tags=extra_tags), f"# {variant['title']}", ""]
    lines += [
        variant["use"],
        "",
        f"Converted from the published checkpoint [`{variant['repo_id']}`](https://huggingface.co/{variant['repo_id']}) "
        f"at revision `{variant['revision']}` with `xr0-convert` (which pins that revision by default): "
        "weights unchanged, loaded by this repository's remote code (transformers 4.57 and 5.x, CPU or GPU, "
        "eager/sdpa/flash-attention).",
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModel, AutoProcessor",
        "",
        'model = AutoModel.from_pretrained("path/to/this/folder", trust_remote_code=True, dtype=torch.bfloat16)',
        'processor = AutoProcessor.from_pretrained("path/to/this/folder", trust_remote_code=True)',
    ]
    if variant["robot_type"]:
        views = ", ".join(f'"{key}": image_{key}' for key, _ in robot["views"])
        arguments = [
            f"images={{{views}}}",
            'instruction="..."',
            "state=state",
            f'robot_type="{variant["robot_type"]}"',
        ]
        lines += [
            *python_call("inputs = processor(", arguments),
            "actions = model(**inputs.to(model.device), seed=0).actions",
            f'robot_actions = processor.decode_action(actions, "{variant["robot_type"]}")  # (1, T, {robot["active_action_dims"]})',
        ]
    lines += ["```", ""]
    if variant["robot_type"]:
        titles = ", ".join(f"`{key}` (prompt title “{title}”)" for key, title in robot["views"])
        lines += [
            "## Inputs and execution",
            "",
            f"- Robot type: `{variant['robot_type']}`",
            f"- Camera views, in prompt order: {titles}",
            f"- Images: {images(robot)}",
            f"- State: {robot['state_layout']}",
            f"- Actions: chunks of T = {robot['chunk_length']} steps (the first dimension of the robot type's "
            f"statistics), {robot['active_action_dims']} active dims, de-normalized with the checkpoint's statistics",
            f"- Steps executed per chunk: {_executed(robot)}",
            f"- Evaluation protocol: {robot['protocol']}",
            "",
            "## Results (as reported)",
            "",
            f"| Benchmark | {variant['results']['metric']} |",
            "|---|---|",
        ]
        lines += [f"| {name} | {value} |" for name, value in variant["results"]["rows"]]
        lines += ["", f"Source: {variant['source']}.", ""]
    else:
        robot_types = ", ".join(
            f"`{name}` (T = {robot_types[name]['chunk_length']})"
            for name in variant["pretraining_robot_types"]
        )
        lines += [
            "## Pre-training robot types",
            "",
            f"The checkpoint's statistics cover {robot_types}. None has a fixed camera contract: register the views "
            "you feed (`processor.register_robot_type(name, views=[[key, title], ...])`) before acting with one.",
            "",
            "## Fine-tuning",
            "",
            "Register your robot type with its camera views and action statistics ((T, 32) arrays set the chunk "
            "length) in the processor, then fine-tune (see `training/`).",
            "",
        ]
    lines += [
        "## Citation",
        "",
        "```bibtex",
        "@article{xiaomirobotics0,",
        "  title   = {Xiaomi-Robotics-0},",
        "  author  = {Xiaomi Robotics},",
        "  journal = {arXiv preprint arXiv:2602.12684},",
        "  year    = {2026}",
        "}",
        "```",
        "",
    ]
    return "\n".join(lines)


def images(robot: dict) -> str:
    """The images a robot type's official client sends: size, then preprocessing."""
    size = robot["image"]["size"]
    return f"{f'{size[0]}×{size[1]}' if size else 'as the simulator renders them'}; {robot['image']['preprocessing']}"


def _executed(robot: dict) -> str:
    steps, length = robot["steps_per_chunk"], robot["chunk_length"]
    if steps == length:
        return f"all {steps} (the whole chunk, as the official client does)"
    return f"the first {steps} of {length} (as the official client does)"


def main(argv=None) -> None:
    ArgumentParser(description=__doc__).parse_args(argv)  # --help exits here, before anything is written
    for path in sorted(VARIANTS_DIR.glob("*/variant.json")):
        card = path.parent / "README.md"
        card.write_text(render(json.loads(path.read_text()), ROBOT_TYPES))
        logger.info("wrote %s", card)


if __name__ == "__main__":
    main()
