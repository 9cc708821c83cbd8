"""The robot-type registry (`robot_types_xr0.ROBOT_TYPES`) and the model's prefix modes are written once; every copy
of them is what `python -m xr0.scripts.write_generated_files` writes, and the registry holds together."""

import ast
import json

from xr0 import REPO_ROOT
from xr0.processing_xr0 import PUBLISHED_ROBOT_TYPES, RobotSpec
from xr0.robot_types_xr0 import INSTRUCTION_CONVENTIONS, ROBOT_TYPES, processor_robot_types
from xr0.sampling_xr0 import PREFIX_MODES
from xr0.scripts.write_generated_files import COMMAND, generated_files


def test_every_generated_file_is_what_the_command_writes():
    stale = [
        str(path.relative_to(REPO_ROOT))
        for path, text in generated_files().items()
        if not path.is_file() or path.read_text() != text
    ]
    assert not stale, f"stale generated files {stale}: run `{COMMAND}`"


def test_the_client_prefix_modes_are_no_prefix_then_the_models():
    from xr0_client.realtime import PREFIX_MODES as EXECUTOR_PREFIX_MODES

    assert EXECUTOR_PREFIX_MODES == ("none", *PREFIX_MODES)


def test_the_registry_and_its_client_copy_need_only_the_standard_library():
    """robot_types_xr0.py is remote code read without torch or numpy; the client copy is imported by the client
    package, which has no torch and must not import xr0."""
    for path in (REPO_ROOT / "robot_types_xr0.py", REPO_ROOT / "client" / "xr0_client" / "robot_types.py"):
        tree = ast.parse(path.read_text())
        imported = {
            name.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for name in node.names
        } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert imported <= {"typing"}, (path.name, imported)


def test_the_processor_keeps_the_registry_s_processor_fields():
    assert PUBLISHED_ROBOT_TYPES == processor_robot_types()
    for name, fields in PUBLISHED_ROBOT_TYPES.items():
        RobotSpec.create(name, 32, 32, **fields)  # valid as the processor reads it


def test_every_entry_holds_together():
    variants = {
        path.parent.name: json.loads(path.read_text()) for path in REPO_ROOT.glob("variants/*/variant.json")
    }
    for name, facts in ROBOT_TYPES.items():
        assert facts["instruction"] in INSTRUCTION_CONVENTIONS, name
        for variant in facts["variants"]:
            assert variant in variants, (name, variant)
            assert name in (
                variants[variant]["robot_type"],
                *variants[variant].get("pretraining_robot_types", ()),
            )
        if "views" in facts:  # a published camera contract comes with its official client
            assert len(facts["cameras"]) == len(facts["views"]), name
            assert len(facts["action_names"]) == len(facts["action_units"]) == facts["active_action_dims"], (
                name
            )
            assert 1 <= facts["steps_per_chunk"] <= facts["chunk_length"], name
