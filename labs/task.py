"""`LabTask`: what one closed-loop lab is, in the fields the shared machinery (xr0.labs) reads."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np


@dataclass(frozen=True)
class LabTask:
    # The robot type its datasets are recorded with and its checkpoints serve.
    robot_type: str
    # Control ticks per second of the simulated clock.
    control_hz: float
    # Width of one command the world steps with (the model's actions are padded beyond it).
    action_dim: int
    # What a synchronous arm sends while it waits for a chunk: "zero", "hold", or last action (action_dim,) -> action.
    safe_action: Union[str, Callable[[np.ndarray], np.ndarray]]
    # The fixture's sizes: a name in xr0.tiny_model.TINY_CONFIGURATIONS.
    fixture_model: str
    # The JSON a dataset (under meta/) and a fixture record themselves in: seed, settings, training.
    summary_file: str
    # RobotSpec fields registered with the base checkpoint's processor; None: the robot type's defaults.
    robot_spec: Optional[dict] = None
