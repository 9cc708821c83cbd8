"""PlanarReach: a 2-D reaching world small enough to train and score a VLA on a laptop CPU.

The workspace is [-1, 1]² (x right, y up). A point end-effector moves with 2-D velocity actions at 30 Hz (each
action is clipped to `max_speed` workspace units per second; the end-effector stays inside the workspace).
`num_targets` discs of distinct colours sit at random positions; the instruction names one by colour ("reach
the red circle") and the episode succeeds when the end-effector is within `success_radius` of that target's
centre before `time_limit`. Targets may move at `target_speed` units per second in a random direction, bouncing
off the walls.

Observations are what a robot would send a policy server: two RGB views, `top` (the whole workspace, fixed) and
`wrist` (a window of ±`wrist_half_width` around the end-effector, so the view moves with it), the instruction,
and the state. What the state holds is the observation tier (`ReachSettings.observation`), each answering its own
question:

- `goal_state`: [x, y, vx, vy, goal x, goal y] (position, the velocity the last action commanded, and the named
  target's current position, which moves when the target moves); three targets in the images. The execution
  tier: does the policy keep up with a moving or jumping goal while it thinks (sync vs async, Λ vs causal)?
- `images`: [x, y, vx, vy] and ONE target, seen only in the images. The perception tier: does the policy find
  a target it can only see?
- `images_named`: [x, y, vx, vy] and three targets of different colours, the instruction names one. Perception
  and language grounding together.

`jump_at` = (first, last) makes the named target teleport once, at a tick drawn in [first, last] per layout, to a
random position at least 0.4 from the end-effector; success then counts only after the jump.

Everything is numpy + Pillow and deterministic per layout seed: `reset(seed)` draws the layout (end-effector,
target colours, positions and velocities) from `numpy.random.default_rng(seed)` alone.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from ..labs.task import LabTask

COLORS = {  # name -> RGB; far apart in colour, so a 16-pixel patch tells them apart
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
BACKGROUND = (235, 235, 235)
OUTSIDE = (90, 90, 90)  # beyond the workspace (seen by the wrist view near the walls)
EFFECTOR = (20, 20, 20)
ROBOT_TYPE = "planar_reach"
OBSERVATIONS = ("goal_state", "images", "images_named")
STATE_NAMES = {  # per observation tier
    "goal_state": ["x", "y", "vx", "vy", "goal_x", "goal_y"],
    "images": ["x", "y", "vx", "vy"],
    "images_named": ["x", "y", "vx", "vy"],
}
ACTION_NAMES = ["vx", "vy"]


@dataclass(frozen=True)
class ReachSettings:
    control_hz: float = 30.0
    max_speed: float = 1.0  # workspace units per second
    observation: str = "goal_state"  # one of OBSERVATIONS
    num_targets: Optional[int] = None  # None: the tier's own (1 for `images`, else 3)
    target_radius: float = 0.12  # drawn radius
    success_radius: float = 0.1  # end-effector to target centre
    target_speed: float = 0.0  # workspace units per second; 0 = static targets
    time_limit: float = 5.0  # seconds
    image_size: int = 128  # both views are image_size x image_size (8 x 8 patches of 16 pixels)
    wrist_half_width: float = 0.5  # the wrist view shows ±this around the end-effector
    jump_at: Optional[tuple] = None  # (first, last) tick of the named target's one teleport, or None

    def __post_init__(self):
        if self.observation not in OBSERVATIONS:
            raise ValueError(f"observation must be one of {OBSERVATIONS}, got {self.observation!r}")
        if self.num_targets is None:
            object.__setattr__(self, "num_targets", 1 if self.observation == "images" else 3)
        if self.observation == "images" and self.num_targets != 1:
            raise ValueError(
                f"the images tier has one target (nothing to bind), got num_targets={self.num_targets}"
            )
        if self.jump_at is not None:
            first, last = self.jump_at
            if not (isinstance(first, int) and isinstance(last, int) and 1 <= first <= last < self.max_steps):
                raise ValueError(
                    f"jump_at must be two ticks 1 <= first <= last < {self.max_steps}, got {self.jump_at!r}"
                )
        if not 1 <= self.num_targets <= len(COLORS):
            raise ValueError(f"num_targets must be in [1, {len(COLORS)}], got {self.num_targets}")
        if self.target_speed < 0 or not np.isfinite(self.target_speed):
            raise ValueError(f"target_speed must be a finite number >= 0, got {self.target_speed}")
        if self.image_size < 96:
            raise ValueError(f"image_size must be >= 96, got {self.image_size}")

    @property
    def dt(self) -> float:
        return 1.0 / self.control_hz

    @property
    def max_steps(self) -> int:
        return int(round(self.time_limit * self.control_hz))

    @property
    def state_dim(self) -> int:
        return len(STATE_NAMES[self.observation])


def layout_seed(run_seed: int, episode: int) -> int:
    """The layout seed of episode `episode` of a run seeded `run_seed`: different run seeds give unrelated layouts
    (demonstrations are recorded with one seed, evaluations use others)."""
    return int(np.random.SeedSequence([run_seed, episode]).generate_state(1)[0])


DEFAULT_SETTINGS = ReachSettings()
LAB = LabTask(  # PlanarReach as a lab task (xr0.labs)
    robot_type=ROBOT_TYPE,
    control_hz=DEFAULT_SETTINGS.control_hz,
    action_dim=len(ACTION_NAMES),
    safe_action="zero",  # velocity control: an arm with nothing to do stops
    fixture_model="planar-reach",
    summary_file="planar_reach.json",
)


class PlanarReachEnv:
    """One episode at a time: `reset(seed)`, then `observation()` / `step(action)` once per control tick."""

    BOUND = 1.0
    TARGET_BOUND = 0.85  # target centres stay this far in, so the whole disc is visible

    def __init__(self, settings: ReachSettings = DEFAULT_SETTINGS):
        self.settings = settings
        self.steps = 0

    # ---- the episode ----

    def reset(self, seed: int) -> dict:
        s = self.settings
        rng = np.random.default_rng(seed)
        names = list(COLORS)
        self.colors = [names[i] for i in rng.permutation(len(names))[: s.num_targets]]
        self.goal = int(rng.integers(s.num_targets))
        # Rejection sampling: targets apart from each other and from the start, so every layout is unambiguous.
        while True:
            effector = rng.uniform(-0.9, 0.9, 2)
            targets = rng.uniform(-self.TARGET_BOUND, self.TARGET_BOUND, (s.num_targets, 2))
            apart = np.linalg.norm(targets[:, None] - targets[None], axis=-1) + 10 * np.eye(s.num_targets)
            if apart.min() > 3 * s.target_radius and np.linalg.norm(targets - effector, axis=1).min() > 0.4:
                break
        angles = rng.uniform(0, 2 * np.pi, s.num_targets)
        self.effector = effector
        self.velocity = np.zeros(2)
        self.targets = targets
        self.target_velocities = s.target_speed * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        self.steps = 0
        self.succeeded_at = None
        self.jump_tick, self.jumped_to = None, None
        if s.jump_at is not None:  # its own stream: the layout is the same with and without a jump
            jumps = np.random.default_rng([seed, 3])
            self.jump_tick = int(jumps.integers(s.jump_at[0], s.jump_at[1] + 1))
            self._jump_draws = jumps
        return self.observation()

    @property
    def instruction(self) -> str:
        return f"reach the {self.colors[self.goal]} circle"

    @property
    def goal_position(self) -> np.ndarray:
        return self.targets[self.goal].copy()

    @property
    def state(self) -> np.ndarray:
        """(state_dim,) float32: x, y, vx, vy (+ goal x, goal y in the `goal_state` tier)."""
        parts = [self.effector, self.velocity]
        if self.settings.observation == "goal_state":
            parts.append(self.targets[self.goal])
        return np.concatenate(parts).astype(np.float32)

    @property
    def jumped(self) -> bool:
        return self.jumped_to is not None

    @property
    def success(self) -> bool:
        return self.succeeded_at is not None

    @property
    def done(self) -> bool:
        return self.success or self.steps >= self.settings.max_steps

    def step(self, action) -> None:
        """Applies one (2,) velocity action for one tick. A non-finite action is refused, not applied."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,) or not np.isfinite(action).all():
            raise ValueError(f"action must be 2 finite numbers (vx, vy), got {action!r}")
        s = self.settings
        speed = np.linalg.norm(action)
        if speed > s.max_speed:
            action = action * (s.max_speed / speed)
        self.velocity = action
        self.effector = np.clip(self.effector + action * s.dt, -self.BOUND, self.BOUND)
        self.targets = self.targets + self.target_velocities * s.dt
        for axis in range(2):  # bounce off the walls
            low = self.targets[:, axis] < -self.TARGET_BOUND
            high = self.targets[:, axis] > self.TARGET_BOUND
            self.target_velocities[low | high, axis] *= -1
            self.targets[:, axis] = np.clip(self.targets[:, axis], -self.TARGET_BOUND, self.TARGET_BOUND)
        self.steps += 1
        if self.jump_tick is not None and self.steps == self.jump_tick:
            self._jump()
        waiting_for_jump = self.jump_tick is not None and not self.jumped
        if self.succeeded_at is None and not waiting_for_jump and self.distance_to_goal() <= s.success_radius:
            self.succeeded_at = self.steps

    def _jump(self) -> None:
        """Teleports the named target to a random position at least 0.4 from the end-effector."""
        while True:
            position = self._jump_draws.uniform(-self.TARGET_BOUND, self.TARGET_BOUND, 2)
            if np.linalg.norm(position - self.effector) > 0.4:
                break
        self.targets[self.goal] = position
        self.jumped_to = position.copy()

    def distance_to_goal(self) -> float:
        return float(np.linalg.norm(self.effector - self.targets[self.goal]))

    # ---- what the robot sends ----

    def observation(self) -> dict:
        """The policy request of this tick (server format, robot type `planar_reach`)."""
        return {
            "images": {"top": self.render_top(), "wrist": self.render_wrist()},
            "instruction": self.instruction,
            "state": self.state,
            "robot_type": ROBOT_TYPE,
        }

    def render_top(self) -> np.ndarray:
        """(H, W, 3) uint8: the whole workspace."""
        return self._render(center=np.zeros(2), half_width=self.BOUND)

    def render_wrist(self) -> np.ndarray:
        """(H, W, 3) uint8: ±wrist_half_width around the end-effector."""
        return self._render(center=self.effector, half_width=self.settings.wrist_half_width)

    def _render(self, center: np.ndarray, half_width: float) -> np.ndarray:
        size = self.settings.image_size
        scale = size / (2 * half_width)  # pixels per workspace unit

        def pixel(point):  # workspace -> image (y down)
            return (point[0] - center[0] + half_width) * scale, (center[1] + half_width - point[1]) * scale

        image = Image.new("RGB", (size, size), OUTSIDE)
        draw = ImageDraw.Draw(image)
        (x0, y0), (x1, y1) = pixel((-self.BOUND, self.BOUND)), pixel((self.BOUND, -self.BOUND))
        draw.rectangle([x0, y0, x1, y1], fill=BACKGROUND)
        radius = self.settings.target_radius * scale
        for color, target in zip(self.colors, self.targets, strict=True):
            x, y = pixel(target)
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=COLORS[color])
        x, y = pixel(self.effector)
        arm = max(3.0, 0.06 * scale)
        draw.line([x - arm, y, x + arm, y], fill=EFFECTOR, width=3)
        draw.line([x, y - arm, x, y + arm], fill=EFFECTOR, width=3)
        return np.asarray(image)


class ScriptedExpert:
    """A proportional controller toward the named target, acting on what it saw `latency_steps` ticks ago (a
    human teleoperator or a scripted policy is never instantaneous)."""

    def __init__(self, env: PlanarReachEnv, gain: float = 4.0, latency_steps: int = 2):
        self.env, self.gain, self.latency_steps = env, gain, latency_steps
        self._seen = []

    def reset(self) -> None:
        self._seen = []

    def act(self) -> np.ndarray:
        """(2,) velocity for this tick."""
        self._seen.append(self.env.goal_position)
        goal = self._seen[max(0, len(self._seen) - 1 - self.latency_steps)]
        action = self.gain * (goal - self.env.effector)
        speed = np.linalg.norm(action)
        limit = self.env.settings.max_speed
        return action * (limit / speed) if speed > limit else action
