"""What every lab's recording shares: the LeRobot v3.0 writer of the lab's robot type, and the summary a dataset
keeps of how it was recorded (`meta/<lab.summary_file>`, which training checks and a fixture's record copies)."""

import json
from pathlib import Path

from ..training.lerobot_writer import LeRobotWriter
from .task import LabTask


def dataset_writer(
    lab: LabTask, output, cameras: dict, state_names: list, action_names: list, control_hz=None
) -> LeRobotWriter:
    """A writer of the lab's demonstrations: `cameras` {view: (height, width)}, frames at `control_hz` (None: the
    lab's control rate)."""
    return LeRobotWriter(
        output,
        fps=int(control_hz or lab.control_hz),
        robot_type=lab.robot_type,
        state_dim=len(state_names),
        action_dim=lab.action_dim,
        cameras=cameras,
        state_names=state_names,
        action_names=action_names,
    )


def write_dataset_summary(lab: LabTask, output, summary: dict) -> None:
    (Path(output) / "meta" / lab.summary_file).write_text(json.dumps(summary, indent=2) + "\n")


def read_dataset_summary(lab: LabTask, dataset) -> dict:
    return json.loads((Path(dataset) / "meta" / lab.summary_file).read_text())
