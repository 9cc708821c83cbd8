"""Meta-World (PyPI `metaworld`, MuJoCo) as an XR0 robot type: the ten MT10 tasks, their scripted experts, and
the observation a robot would send a policy server.

One `MetaWorldTask` holds one task's simulator. `reset(configuration_seed)` draws the object and goal
configuration from that seed alone (Meta-World's own sampler, seeded per episode), so a run of episodes is a
function of one run seed (`configuration_seed(run_seed, task, episode)`) and two run seeds give disjoint sets of
configurations (MT1's 50 frozen configurations are not used). Rendering uses the fast settings measured on these
CPUs (no shadow map, no offscreen multisampling, no reflections: ~6-8 ms per 128² frame with EGL's software
renderer instead of ~200 ms).

Robot type `metaworld`: state = Meta-World's 39-D observation (`STATE_NAMES`), action = the 4-D command
(`ACTION_NAMES`: hand motion × 1 cm per step, gripper effort), views `corner` (flipped upright) and `gripperPOV`,
80 Hz control. A chunk is T = 32 actions (0.4 s) and the policy re-plans every 8 (0.1 s, `EXECUTE_STEPS`): the
experts reach and grasp in 50-110 steps, so a chunk spans about a third of a reach while re-planning 10 times a
second; the 24 actions after the executed 8 cover commits of up to 300 ms of latency (24 ticks).
"""

import os
import warnings
from typing import Optional

import numpy as np

from ..labs.task import LabTask

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco is imported

ROBOT_TYPE = "metaworld"
CONTROL_HZ = 80  # Meta-World's dt is 0.0125 s
CHUNK_LENGTH = 32
EXECUTE_STEPS = 8
IMAGE_SIZE = 128
VIEWS = (("corner", "Corner"), ("gripperPOV", "Gripper"))  # (view key = Meta-World camera, prompt title)
MAX_EPISODE_STEPS = 500  # Meta-World's own limit: stepping past it raises

MT10 = {  # task -> the one instruction it is trained and evaluated with
    "reach-v3": "Reach the goal position.",
    "push-v3": "Push the puck to the goal.",
    "pick-place-v3": "Pick up the puck and place it at the goal.",
    "door-open-v3": "Open the door.",
    "drawer-open-v3": "Open the drawer.",
    "drawer-close-v3": "Close the drawer.",
    "button-press-topdown-v3": "Press the button from the top.",
    "peg-insert-side-v3": "Insert the peg into the hole from the side.",
    "window-open-v3": "Slide the window open.",
    "window-close-v3": "Slide the window closed.",
}

_FRAME = ["hand_x", "hand_y", "hand_z", "gripper_opening"] + [
    f"object{i}_{part}" for i in (1, 2) for part in ("x", "y", "z", "qw", "qx", "qy", "qz")
]  # 18 values; the quaternion order differs between tasks, the names follow Meta-World's layout
STATE_NAMES = _FRAME + [f"previous_{name}" for name in _FRAME] + ["goal_x", "goal_y", "goal_z"]
STATE_DIM = len(STATE_NAMES)  # 39
ACTION_NAMES = ["dx", "dy", "dz", "grip"]
ACTION_UNITS = ["cm per step"] * 3 + ["effort: -1 open, +1 close"]
ROBOT_SPEC = {  # the robot type's registry fields (XR0Processor.register_robot_type)
    "views": [list(view) for view in VIEWS],
    "active_action_dims": len(ACTION_NAMES),
    "chunk_length": CHUNK_LENGTH,
    "action_names": ACTION_NAMES,
    "action_units": ACTION_UNITS,
    "state_names": STATE_NAMES,
}


def stop_moving(last_action: np.ndarray) -> np.ndarray:
    """The safe action of a waiting arm: no hand motion, the gripper keeps its command (an object stays held)."""
    return np.array([0.0, 0.0, 0.0, last_action[3]])


LAB = LabTask(  # Meta-World MT10 as a lab task (xr0.labs)
    robot_type=ROBOT_TYPE,
    control_hz=CONTROL_HZ,
    action_dim=len(ACTION_NAMES),
    safe_action=stop_moving,
    fixture_model="metaworld",
    summary_file="metaworld.json",
    robot_spec=ROBOT_SPEC,
)


def resolve_tasks(names) -> list:
    """Task names or `mt10` -> the list of MT10 task names, refused if unknown."""
    tasks = []
    for name in names:
        if name == "mt10":
            tasks += list(MT10)
        elif name in MT10:
            tasks.append(name)
        elif f"{name}-v3" in MT10:
            tasks.append(f"{name}-v3")
        else:
            raise ValueError(f"unknown Meta-World task {name!r}; tasks are {list(MT10)} or 'mt10'")
    return list(dict.fromkeys(tasks))


def configuration_seed(run_seed: int, task: str, episode: int) -> int:
    """The seed of episode `episode` of `task` in a run seeded `run_seed`: unrelated across run seeds and tasks."""
    return int(np.random.SeedSequence([run_seed, list(MT10).index(task), episode]).generate_state(1)[0])


class MetaWorldTask:
    """One MT10 task with its expert: `reset(seed)`, then `observation()` / `step(action)` per control tick."""

    def __init__(self, task: str, image_size: int = IMAGE_SIZE):
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP

        if task not in MT10:
            raise ValueError(f"unknown Meta-World task {task!r}; tasks are {list(MT10)}")
        self.task, self.instruction = task, MT10[task]
        env = ALL_V3_ENVIRONMENTS[task]()
        # What Meta-World's goal-observable variants do, with the configuration drawn from our seed per episode.
        env._partially_observable = False
        env.__dict__.pop("sawyer_observation_space", None)  # cached with the goal hidden: recompute
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        self.env = env
        self.expert = ENV_POLICY_MAP[task]()
        env.model.vis.quality.shadowsize = 0
        env.model.vis.quality.offsamples = 0
        self.renderer = mujoco.Renderer(env.model, image_size, image_size)
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self.state: Optional[np.ndarray] = None
        self.steps, self.succeeded_at, self.succeeding = 0, None, False

    def reset(self, seed: int) -> dict:
        self.env.seed(int(seed))
        observation, _ = self.env.reset()
        self.state = observation.astype(np.float32)  # (39,)
        self.steps, self.succeeded_at, self.succeeding = 0, None, False
        return self.observation()

    @property
    def success(self) -> bool:
        return self.succeeded_at is not None

    def step(self, action) -> None:
        """Applies one (4,) command for one tick; a non-finite or misshapen action is refused, not applied."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,) or not np.isfinite(action).all():
            raise ValueError(f"action must be 4 finite numbers (dx, dy, dz, grip), got {action!r}")
        if self.steps >= MAX_EPISODE_STEPS:
            raise RuntimeError(f"{self.task}: the episode is over ({MAX_EPISODE_STEPS} steps)")
        observation, _, _, _, info = self.env.step(np.clip(action, -1.0, 1.0))
        self.state = observation.astype(np.float32)
        self.steps += 1
        self.succeeding = bool(
            info["success"]
        )  # this step's flag: Meta-World's success does not end an episode
        if self.succeeded_at is None and self.succeeding:
            self.succeeded_at = self.steps

    def expert_action(self) -> np.ndarray:
        """(4,) the scripted expert's command for the current state, clipped to the action box."""
        with warnings.catch_warnings():  # "Constant(s) may be too high ... clip response to [-1, 1]": we clip
            warnings.filterwarnings("ignore", message="Constant", category=UserWarning)
            action = self.expert.get_action(self.state.astype(np.float64))
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def move_goal(self, position) -> None:
        """Moves the goal (e.g. mid-episode); the observation's goal slot follows from the next step on."""
        position = np.asarray(position, dtype=np.float64)
        self.env._target_pos = position.copy()
        self.env.model.site("goal").pos = position
        self.state = np.concatenate([self.state[:36], position.astype(np.float32)])  # a new array: views stay

    def random_goal(self, rng: np.random.Generator) -> np.ndarray:
        """A goal position from the task's own goal space."""
        space = self.env.goal_space
        return rng.uniform(space.low, space.high)

    # ---- what the robot sends ----

    def render(self, camera: str) -> np.ndarray:
        """(H, W, 3) uint8 from one of Meta-World's cameras; the `corner*` cameras come out upside down."""
        self.renderer.update_scene(self.env.data, camera=camera)
        image = self.renderer.render()
        return np.ascontiguousarray(image[::-1]) if camera.startswith("corner") else image.copy()

    def observation(self) -> dict:
        """The policy request of this tick (server format, robot type `metaworld`)."""
        return {
            "images": {key: self.render(key) for key, _ in VIEWS},
            "instruction": self.instruction,
            "state": self.state.copy(),
            "robot_type": ROBOT_TYPE,
        }

    def close(self) -> None:
        self.renderer.close()
        self.env.close()
