"""Write every copy of the robot-type registry (`robot_types_xr0.ROBOT_TYPES`) and of the model's prefix modes
(`sampling_xr0.PREFIX_MODES`) that cannot import them: the torch-free client package's `xr0_client/robot_types.py`,
the variant cards (variants/<name>/README.md) and the tables of README.md, docs/serving.md and eval/README.md
(between `<!-- robot-types:begin -->` and `<!-- robot-types:end -->`). A test fails while any of them differs from
what this writes.

    python -m xr0.scripts.write_generated_files
"""

import json
import logging
import re
from collections import Counter
from itertools import groupby
from pathlib import Path

from xr0_common.cli import ArgumentParser

from .. import REPO_ROOT
from ..robot_types_xr0 import (
    OPENPI_PROMPT_KEY,
    OPENPI_STATE_KEY,
    OPENPI_VIEW_KEYS,
    ROBOT_TYPES,
    openpi_key_map,
)
from ..sampling_xr0 import PREFIX_MODES
from .write_variant_cards import VARIANTS_DIR, images, render

logger = logging.getLogger("xr0.write_generated_files")

COMMAND = "python -m xr0.scripts.write_generated_files"
CLIENT_MODULE = REPO_ROOT / "client" / "xr0_client" / "robot_types.py"
BEGIN, END = "<!-- robot-types:begin -->", "<!-- robot-types:end -->"
LINE_LENGTH = 110  # the repository's formatter's (ruff) line length


# ---- the client's copy ------------------------------------------------------------------------------------------


def python_literal(value, indent: int = 0, room: int = LINE_LENGTH) -> str:
    """`value` (dicts, lists, tuples, str, int, float, bool, None) as Python source laid out as the repository's
    formatter lays it out: on one line where it fits in `room` characters, else one item per line with a
    trailing comma, recursively."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if not isinstance(value, (dict, list, tuple)) or not value:
        return repr(value)
    opening, closing = (
        ("{", "}") if isinstance(value, dict) else ("(", ")") if isinstance(value, tuple) else "[]"
    )
    items = value.items() if isinstance(value, dict) else [(None, item) for item in value]

    def item(key, child, child_indent, child_room):
        head = "" if key is None else python_literal(key) + ": "
        return head + python_literal(child, child_indent, child_room - len(head))

    flat = ", ".join(item(key, child, 0, LINE_LENGTH * 4) for key, child in items)
    flat += "," if isinstance(value, tuple) and len(value) == 1 else ""
    if len(opening + flat + closing) <= room:
        return opening + flat + closing
    pad = " " * (indent + 4)
    lines = [pad + item(key, child, indent + 4, LINE_LENGTH - len(pad) - 1) + "," for key, child in items]
    return "\n".join([opening, *lines, " " * indent + closing])


def client_module() -> str:
    """client/xr0_client/robot_types.py: the registry and the model's prefix modes as Python literals."""
    return "\n".join(
        [
            '"""The published robot types (views, T, action dims, state layout, instruction convention, benchmark',
            "...: the fields are described in robot_types_xr0.py) and the model's prefix modes, for the client",
            "package, which cannot import the model's remote code.",
            "",
            "GENERATED from robot_types_xr0.py and sampling_xr0.py by",
            "",
            f"    {COMMAND}",
            "",
            'edit those and run it; a test fails while this copy differs."""',
            "",
            "# How the model may condition a chunk on an action prefix (sampling_xr0.PREFIX_MODES).",
            f"MODEL_PREFIX_MODES = {python_literal(tuple(PREFIX_MODES), 0, LINE_LENGTH - 21)}",
            "",
            f"ROBOT_TYPES = {python_literal(ROBOT_TYPES, 0, 0)}",
            "",
        ]
    )


# ---- tables of the docs ------------------------------------------------------------------------------------------


def _usual_titles() -> dict:
    """{view key: the prompt title most robot types give it}: tables name a title only where it differs."""
    counts = Counter(tuple(view) for facts in ROBOT_TYPES.values() for view in facts.get("views", ()))
    return {key: title for (key, title), _ in sorted(counts.items(), key=lambda pair: pair[1])}


def variants_table() -> str:
    """README.md's table of the variants: per-variant facts from variant.json, robot-type facts from the registry."""
    usual = _usual_titles()
    rows = [
        "| variant | published checkpoint (revision) | robot type, camera keys | T = steps executed | result quoted "
        "from the report (not reproduced here) |",
        "|---|---|---|---|---|",
    ]
    variants = [json.loads(path.read_text()) for path in VARIANTS_DIR.glob("*/variant.json")]
    order = list(ROBOT_TYPES)  # the base first, then in the registry's order
    for variant in sorted(variants, key=lambda v: order.index(v["robot_type"]) if v["robot_type"] else -1):
        robot_type = variant["robot_type"]
        if robot_type:
            facts = ROBOT_TYPES[robot_type]
            views = " + ".join(
                key if usual.get(key) == title else f"{key} (“{title}”)" for key, title in facts["views"]
            )
            robot, steps = f"`{robot_type}`, {views}", _steps(facts)
        else:
            by_length = groupby(
                variant["pretraining_robot_types"], lambda name: ROBOT_TYPES[name]["chunk_length"]
            )
            robot = "; ".join(f"{', '.join(names)} (T {length})" for length, names in by_length)
            robot, steps = f"{robot}; views registered by the user", "–"
        checkpoint = f"{variant['repo_id']} (`{variant['revision'][:7]}`)"
        rows.append(f"| `{variant['name']}` | {checkpoint} | {robot} | {steps} | {variant['summary']} |")
    return "\n".join(rows)


def _steps(facts: dict) -> str:
    length, steps = facts["chunk_length"], facts["steps_per_chunk"]
    return str(length) if steps == length else f"{length}, {steps} executed"


INSTRUCTIONS = {"capitalize": 'capitalized + "."', "first_upper": 'first letter upper + "."'}


def openpi_table() -> str:
    """docs/serving.md's table of openpi's keys per robot type (robot types with the same row share it)."""
    image_key, wrist_key = OPENPI_VIEW_KEYS
    rows = [
        f"| robot type | `{image_key}` | `{wrist_key}` | `{OPENPI_STATE_KEY}` | `{OPENPI_PROMPT_KEY}` |",
        "|---|---|---|---|---|",
    ]
    cells = {}  # {row's cells after the robot type: [robot type, ...]}
    for name, facts in ROBOT_TYPES.items():
        view_keys = [key for key, _ in facts.get("views", ())]
        keys = openpi_key_map(view_keys) if view_keys else None
        if keys is None:
            continue
        # Cameras are named where there are several to tell apart.
        cameras = dict(zip(view_keys, facts["cameras"], strict=True)) if len(view_keys) > 1 else {}
        views = [
            "– (refused)"
            if key not in keys
            else f"`{view}` ({cameras[view]})"
            if view in cameras
            else f"`{view}`"
            for key, view in OPENPI_VIEW_KEYS.items()
        ]
        cells.setdefault((*views, facts["openpi_state"], INSTRUCTIONS[facts["instruction"]]), []).append(name)
    for index, (row, names) in enumerate(cells.items()):
        prompt = row[-1] + (" (the official XR0 client's text)" if index == 0 else "")
        rows.append(
            f"| {', '.join(f'`{name}`' for name in sorted(names))} | {' | '.join(row[:-1])} | {prompt} |"
        )
    rows.append(
        "| registered robot types with views `base` (+ `wrist_left`) | `base` | `wrist_left` | as registered | as sent |"
    )
    return "\n".join(rows)


# The client package's class for each benchmark's robot types.
CLIENTS = {"LIBERO": "LiberoClient", "CALVIN": "CalvinClient", "SimplerEnv": "SimplerEnvClient"}


def clients_table() -> str:
    """eval/README.md's table of the benchmark clients' requests (robot types with the same row share it)."""
    rows = ["| client | robot type | views (request keys) | images | state |", "|---|---|---|---|---|"]
    usual = _usual_titles()
    cells = {}  # {(client, views, images, state): [robot type, ...]}
    for name, facts in ROBOT_TYPES.items():
        if facts.get("benchmark") in CLIENTS:
            several = len(facts["views"]) > 1  # cameras are named where there are several to tell apart
            views = " + ".join(
                f"`{key}`"
                + (f" {camera}" if several else "")
                + ("" if usual[key] == title else f" (“{title}”)")
                for (key, title), camera in zip(facts["views"], facts["cameras"], strict=True)
            )
            row = (f"`{CLIENTS[facts['benchmark']]}`", views, images(facts), facts["state_layout"])
            cells.setdefault(row, []).append(name)
    for (client, *rest), names in cells.items():
        rows.append(
            f"| {client} | {' / '.join(f'`{name}`' for name in sorted(names))} | {' | '.join(rest)} |"
        )
    return "\n".join(rows)


TABLES = {
    REPO_ROOT / "README.md": variants_table,
    REPO_ROOT / "docs" / "serving.md": openpi_table,
    REPO_ROOT / "eval" / "README.md": clients_table,
}


def with_table(path: Path, table: str) -> str:
    """The text of `path` with the part between its markers replaced by `table`."""
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{path}: expected one {BEGIN} ... {END} block, found {len(pattern.findall(text))}")
    # Blank lines around the table: a Markdown table ends at a blank line, not at a comment.
    return pattern.sub(lambda _: f"{BEGIN}\n\n{table}\n\n{END}", text)


# ---- all of them -------------------------------------------------------------------------------------------------


def generated_files() -> dict:
    """{path: the text this command writes there}."""
    files = {CLIENT_MODULE: client_module()}
    for path in sorted(VARIANTS_DIR.glob("*/variant.json")):
        files[path.parent / "README.md"] = render(json.loads(path.read_text()), ROBOT_TYPES)
    for path, table in TABLES.items():
        files[path] = with_table(path, table())
    return files


def main(argv=None) -> None:
    ArgumentParser(description=__doc__).parse_args(argv)  # --help exits here, before anything is written
    for path, text in generated_files().items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            logger.info("wrote %s", path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    main()
