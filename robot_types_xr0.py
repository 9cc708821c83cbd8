"""The published robot types of XR0, each fact about one written once: camera views and their prompt titles, action
dims with names and units, T (the chunk length), the steps the official clients execute per chunk, the state layout,
where the statistics come from, openpi's keys, the instruction convention, and the benchmark and variants it serves.

Plain data, without torch or numpy: the processor reads its part (`processor_robot_types`, what every saved
processor_config.json holds), the server and the scripts read the rest, and what cannot import this file (the
torch-free client package, the variant cards, the tables of the docs) holds a copy written by
`python -m xr0.scripts.write_generated_files`, which a test keeps equal to what that command writes.

One entry: {field: value}, with the fields

    views: [[view key, prompt title], ...] in prompt order, as the official clients send them; absent for the
        pre-training robot types, which have no fixed camera contract (register the views fed before use).
    cameras: [what each view shows, ...], one per view.
    active_action_dims: how many leading action dims the robot uses (of 32).
    chunk_length: T. The checkpoint's (T, 32) statistics are what set it; this states the same T.
    action_names, action_units: one per active dim (absent where nothing published says what the dims mean).
    steps_per_chunk: the actions the official client executes per chunk (absent: no official client).
    image: {"size": [width, height] or None (as the simulator renders them), "preprocessing": text}.
    state_layout: the raw state the official client sends (the processor zero-pads it to 32).
    statistics: where the action and state statistics come from.
    instruction: how the official client writes a task as the instruction: "capitalize" (Python's
        str.capitalize: first letter upper, the rest lowered) or "first_upper" (only the first letter upper-cased),
        each with "." appended.
    openpi_state: what openpi's `observation/state` holds for it (openpi's view keys follow from `views`).
    benchmark, variants: the benchmark it is evaluated on and the variants (variants/<name>) published for it.
    protocol: the benchmark's evaluation protocol, as the official client runs it.
"""

from typing import Optional

# The model's statistics are the published `action_config` of each checkpoint; nothing published normalizes the
# state, so it is fed raw.
_STATISTICS = "the checkpoint's `action_config` (action mean/std, (T, 32)); the state is fed raw"
_TWO_VIEWS = [["base", "Base"], ["wrist_left", "Left-Wrist"]]
_END_EFFECTOR_DELTAS = ["Δx", "Δy", "Δz", "Δroll", "Δpitch", "Δyaw", "gripper"]
_CALVIN = {
    "views": _TWO_VIEWS,
    "cameras": ["static", "gripper"],
    "active_action_dims": 7,
    "chunk_length": 10,
    # CALVIN's relative actions (`rel_actions`, what its env takes as a 7-vector): position ×50 and Euler angles
    # ×20, clipped to [-1, 1]; gripper -1 close, +1 open.
    "action_names": _END_EFFECTOR_DELTAS,
    "action_units": ["1 = 2 cm"] * 3 + ["1 = 0.05 rad"] * 3 + ["-1 close, +1 open"],
    "steps_per_chunk": 10,
    "image": {
        "size": None,
        "preprocessing": "static and gripper cameras; center crop 0.95 then resize back to the original size",
    },
    "state_layout": "robot_obs[:7] (end-effector position, orientation, gripper width) + 25 zeros",
    "statistics": _STATISTICS,
    "instruction": "capitalize",
    "openpi_state": "`robot_obs[:7]`",
    "benchmark": "CALVIN",
    "protocol": "Static camera as the first view, gripper camera as the second, each center-cropped to "
    "int(0.95·side) and resized back (bilinear); instruction = annotation through str.capitalize with '.' appended; "
    "seed = official observation hash; execute the whole chunk; gripper action → +1 if positive else −1.",
}
# SimplerEnv (Bridge, Fractal): end-effector deltas in metres and roll-pitch-yaw radians (the client turns them
# into axis-angle), gripper openness 0 closed .. 1 open (each robot's own gripper command is derived from it).
_SIMPLERENV = {
    "active_action_dims": 7,
    "chunk_length": 4,
    "action_names": _END_EFFECTOR_DELTAS,
    "action_units": ["m"] * 3 + ["rad"] * 3 + ["0 closed, 1 open"],
    "steps_per_chunk": 4,
    "statistics": _STATISTICS,
    "instruction": "first_upper",
    "openpi_state": "the 8 values of `SimplerEnvClient.robot_state`",
    "benchmark": "SimplerEnv",
}
# The pre-training robot types: T only. No camera contract, no official client, and nothing published says what
# their action dims are; an openpi prompt sent for one is capitalized as the benchmarks' clients write theirs.
_PRETRAINING = {"statistics": _STATISTICS, "instruction": "capitalize", "variants": ["base"]}

ROBOT_TYPES = {
    "libero_all": {
        "views": _TWO_VIEWS,
        "cameras": ["agent view", "eye-in-hand"],
        "active_action_dims": 7,
        "chunk_length": 10,
        # robosuite's OSC_POSE controller input (position, axis-angle rotation), which scales [-1, 1] to ±0.05 m
        # and ±0.5 rad, then the Panda gripper (-1 open, +1 close).
        "action_names": ["Δx", "Δy", "Δz", "Δrot x", "Δrot y", "Δrot z", "gripper"],
        "action_units": ["1 = 5 cm"] * 3 + ["1 = 0.5 rad"] * 3 + ["-1 open, +1 close"],
        "steps_per_chunk": 10,
        "image": {"size": [256, 256], "preprocessing": "both views rotated 180 degrees"},
        "state_layout": "end-effector position (3) + axis-angle orientation (3, robosuite's quat2axisangle) + "
        "gripper joint positions (2) + 24 zeros",
        "statistics": _STATISTICS,
        "instruction": "capitalize",
        "openpi_state": "8-D: eef position, axis-angle, gripper qpos — openpi's LIBERO state is exactly XR0's, "
        "zero-padded to 32",
        "benchmark": "LIBERO",
        "variants": ["libero"],
        "protocol": "Agent-view image as the first view, eye-in-hand image as the second, both rotated 180 degrees; "
        "instruction = task text through Python's str.capitalize (first letter upper, the rest lowered) with '.' "
        "appended; the seed of each request is the official observation hash (xr0_client.benchmarks "
        "`official_request_seed`); execute the whole chunk.",
    },
    "calvin_abcd_orig": {**_CALVIN, "variants": ["calvin-abcd-d"]},
    "calvin_abc_orig": {**_CALVIN, "variants": ["calvin-abc-d"]},
    "bridge_delta": {
        "views": [["base", "Base"]],
        "cameras": ["the one camera"],
        **_SIMPLERENV,
        "image": {"size": [256, 256], "preprocessing": "center crop 0.95"},
        "state_layout": "end-effector position (3) + roll-pitch-yaw in Bridge's top-down frame (3) + 0 + gripper "
        "openness (1), zero-padded to 32",
        "variants": ["simplerenv-widowx"],
        "protocol": "The one camera, resized to 256×256, center crop 0.95 and resized back; instruction with its "
        "first letter upper-cased and '.' appended; seed = official observation hash; execute the whole chunk; "
        "roll-pitch-yaw → axis-angle; gripper +1 if a > 0.5 else −1.",
    },
    "fractal_delta": {
        "views": [["base", "Ego"]],
        "cameras": ["the one camera"],
        **_SIMPLERENV,
        "image": {"size": [320, 256], "preprocessing": "center crop 0.95"},
        "state_layout": "end-effector position (3) + quaternion x-y-z-w (3+1, w ≥ 0) + gripper closedness (1), "
        "zero-padded to 32",
        "variants": ["simplerenv-google-robot"],
        "protocol": "The one camera, resized to 320×256, center crop 0.95 and resized back; instruction with its "
        "first letter upper-cased and '.' appended; seed = official observation hash; execute the whole chunk; "
        "roll-pitch-yaw → axis-angle; gripper −(2a−1) clipped to [−1, 1].",
    },
    "agibot_pt_v3": {"chunk_length": 30, **_PRETRAINING},
    "midata_mix_ann_pt_v1": {"chunk_length": 30, **_PRETRAINING},
    "droid_pt": {"chunk_length": 15, **_PRETRAINING},
    "molmoact_pt": {"chunk_length": 15, **_PRETRAINING},
}
INSTRUCTION_CONVENTIONS = ("capitalize", "first_upper")

# The fields of an entry the processor keeps (`RobotSpec`), in the order processor_config.json lists them.
PROCESSOR_FIELDS = ("views", "active_action_dims", "chunk_length", "action_names", "action_units")

# openpi's observation keys (its LIBERO example, examples/libero/main.py) -> our camera views. Every published
# robot type with views names them base (+ wrist_left), so one table serves them all.
OPENPI_VIEW_KEYS = {"observation/image": "base", "observation/wrist_image": "wrist_left"}
OPENPI_STATE_KEY = "observation/state"
OPENPI_PROMPT_KEY = "prompt"


def processor_robot_types() -> dict:
    """{robot type: {field: value}} of the fields in `PROCESSOR_FIELDS`: the published registry of `XR0Processor`
    and of every processor_config.json written from it (fresh lists, safe to change)."""
    return {
        name: {field: _copy(facts[field]) for field in PROCESSOR_FIELDS if field in facts}
        for name, facts in ROBOT_TYPES.items()
    }


def openpi_key_map(view_keys: list) -> Optional[dict]:
    """{openpi key: our field} for a robot type with these view keys, or None when a view has no openpi name."""
    by_view = {view: key for key, view in OPENPI_VIEW_KEYS.items()}
    if not set(view_keys) <= set(by_view):
        return None
    keys = {by_view[view]: f"images.{view}" for view in view_keys}
    return {**keys, OPENPI_STATE_KEY: "state", OPENPI_PROMPT_KEY: "instruction"}


def _copy(value):
    return [_copy(item) for item in value] if isinstance(value, list) else value
