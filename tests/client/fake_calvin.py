"""A scripted stand-in for CALVIN's environment (`xr0-eval-calvin --environment fake_calvin:ScriptedCalvin`): chain
i completes its first i % 6 subtasks, each after 3 steps, and never completes the next one; every action the
runner sends is checked against CALVIN's action format and recorded in `<dataset_path>/actions.jsonl`."""

import json
from pathlib import Path

import numpy as np

SUBTASKS = ["open_drawer", "lift_red_block_table", "push_blue_block_left", "turn_on_led", "close_drawer"]
STEPS_TO_COMPLETE = 3


class ScriptedCalvin:
    def __init__(self, dataset_path):
        self.log = Path(dataset_path) / "actions.jsonl"
        self.chain = self.subtask_steps = None
        self.rng = np.random.default_rng(0)

    def sequences(self, count):
        return [({"chain": i}, list(SUBTASKS)) for i in range(count)]

    def reset(self, initial_state):
        self.chain, self.done_subtasks = initial_state["chain"], 0

    def observation(self):
        return {
            "rgb_obs": {
                "rgb_static": self.rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                "rgb_gripper": self.rng.integers(0, 256, (84, 84, 3), dtype=np.uint8),
            },
            "robot_obs": self.rng.normal(size=15),
        }

    def info(self):
        self.subtask_steps = 0
        return {"subtask": self.done_subtasks}

    def step(self, action):
        action = np.asarray(action)
        assert action.shape == (7,) and np.isfinite(action).all() and action[6] in (-1.0, 1.0), action
        with self.log.open("a") as file:
            file.write(json.dumps({"chain": self.chain, "action": action.tolist()}) + "\n")
        self.subtask_steps += 1
        return self.observation(), {"subtask": self.done_subtasks}

    def completed(self, start_info, info, subtask):
        assert subtask == SUBTASKS[self.done_subtasks]
        if self.done_subtasks < self.chain % 6 and self.subtask_steps >= STEPS_TO_COMPLETE:
            self.done_subtasks += 1
            return True
        return False

    def annotation(self, subtask):
        return subtask.replace("_", " ")
