"""Benchmark clients for LIBERO, CALVIN and SimplerEnv that follow the published evaluation conventions (spec §5)
and talk to an XR0 policy: the websocket server (`deploy/client.py`) or anything with `infer(observation)`.

Each client turns a simulator observation into the server's observation format (camera views, raw state
layout, instruction), queries a chunk when its queue is empty, executes `steps_per_chunk` actions of each chunk
and post-processes them for the simulator (e.g. CALVIN's gripper sign). The seed of each query is derived from
a hash of the observation, as the official clients do, so an evaluation is reproducible; the exact hash the
official clients use is not published, so seeds (and sampled actions) differ from theirs.
"""

import hashlib
from collections import deque
from typing import Optional, Protocol

import numpy as np
from PIL import Image


class Policy(Protocol):
    def infer(self, observation: dict) -> dict: ...


def observation_seed(images: dict, state: np.ndarray, instruction: str) -> int:
    """A deterministic 63-bit seed from the observation's content."""
    digest = hashlib.sha256()
    for key in sorted(images):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(images[key]).tobytes())
    digest.update(np.asarray(state, np.float32).tobytes())
    digest.update(instruction.encode())
    return int.from_bytes(digest.digest()[:8], "little") & (2**63 - 1)


def center_crop_resize(image: np.ndarray, scale: float = 0.95) -> np.ndarray:
    """Crop the central `scale` fraction of each side, then resize back to the original size (bilinear)."""
    height, width = image.shape[:2]
    crop_h, crop_w = round(height * scale), round(width * scale)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    cropped = Image.fromarray(image[top : top + crop_h, left : left + crop_w])
    return np.asarray(cropped.resize((width, height), Image.BILINEAR))


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def quaternion_to_axis_angle(quaternion_xyzw: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> axis-angle 3-vector (axis * angle), angle in [0, pi]."""
    x, y, z, w = np.asarray(quaternion_xyzw, dtype=np.float64) / np.linalg.norm(quaternion_xyzw)
    if w < 0:  # the same rotation with a non-negative scalar part gives angle <= pi
        x, y, z, w = -x, -y, -z, -w
    sin_half = np.sqrt(max(1.0 - w * w, 0.0))
    if sin_half < 1e-8:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(sin_half, w)
    return np.array([x, y, z]) / sin_half * angle


class BenchmarkClient:
    robot_type: str = ""
    steps_per_chunk: int = 1
    action_dims: int = 7

    def __init__(self, policy: Policy, steps_per_chunk: Optional[int] = None):
        self.policy = policy
        if steps_per_chunk is not None:
            self.steps_per_chunk = steps_per_chunk
        self.queue: deque = deque()

    def reset(self) -> None:
        self.queue.clear()

    def observation(self, env_obs, instruction: str) -> dict:
        raise NotImplementedError

    def postprocess(self, action: np.ndarray) -> np.ndarray:
        return action

    def act(self, env_obs, instruction: str) -> np.ndarray:
        """The simulator action for this step; queries a new chunk every `steps_per_chunk` steps."""
        if not self.queue:
            observation = self.observation(env_obs, instruction)
            observation["seed"] = observation_seed(observation["images"], observation["state"], observation["instruction"])
            chunk = np.asarray(self.policy.infer(observation)["actions"])
            if chunk.ndim != 2 or chunk.shape[1] < self.action_dims:
                raise ValueError(f"expected a (T, >= {self.action_dims}) chunk, got {chunk.shape}")
            self.queue.extend(chunk[: self.steps_per_chunk, : self.action_dims])
        return self.postprocess(np.asarray(self.queue.popleft(), dtype=np.float64))


class LiberoClient(BenchmarkClient):
    """LIBERO (robosuite observations): agent-view and wrist images at 256x256 rotated 180 degrees; state =
    end-effector position (3) + axis-angle (3) + gripper joint positions (2); instruction capitalized with a
    final period; 10 actions executed per chunk."""

    robot_type = "libero_all"
    steps_per_chunk = 10
    image_size = 256

    def observation(self, env_obs: dict, instruction: str) -> dict:
        def view(key):
            return np.ascontiguousarray(resize(env_obs[key], self.image_size, self.image_size)[::-1, ::-1])

        state = np.concatenate([
            env_obs["robot0_eef_pos"],
            quaternion_to_axis_angle(env_obs["robot0_eef_quat"]),
            env_obs["robot0_gripper_qpos"],
        ]).astype(np.float32)
        return {
            "images": {"base": view("agentview_image"), "wrist": view("robot0_eye_in_hand_image")},
            "instruction": format_instruction(instruction),
            "state": state,
            "robot_type": self.robot_type,
        }


class CalvinClient(BenchmarkClient):
    """CALVIN: static and gripper cameras, each center-cropped to 0.95 and resized back; state = robot_obs[:7];
    10 actions per chunk; the gripper action becomes its sign (+1 open, -1 close)."""

    robot_type = "calvin_abc_orig"
    steps_per_chunk = 10

    def __init__(self, policy: Policy, robot_type: str = "calvin_abc_orig", steps_per_chunk: Optional[int] = None):
        super().__init__(policy, steps_per_chunk)
        if robot_type not in ("calvin_abc_orig", "calvin_abcd_orig"):
            raise ValueError(f"CALVIN robot_type must be calvin_abc_orig or calvin_abcd_orig, got {robot_type!r}")
        self.robot_type = robot_type

    def observation(self, env_obs: dict, instruction: str) -> dict:
        rgb = env_obs["rgb_obs"]
        return {
            "images": {"base": center_crop_resize(rgb["rgb_static"]), "wrist": center_crop_resize(rgb["rgb_gripper"])},
            "instruction": instruction,
            "state": np.asarray(env_obs["robot_obs"][:7], dtype=np.float32),
            "robot_type": self.robot_type,
        }

    def postprocess(self, action: np.ndarray) -> np.ndarray:
        action = action.copy()
        action[6] = 1.0 if action[6] >= 0 else -1.0
        return action


class SimplerEnvClient(BenchmarkClient):
    """SimplerEnv: one camera image (WidowX/Bridge 256x256, Google Robot/Fractal 320x256), center crop 0.95 and
    resize back; the robot state as given (zero-padded by the processor); 4 actions per chunk."""

    steps_per_chunk = 4
    SETUPS = {"bridge_delta": ("base", 256, 256), "fractal_delta": ("ego", 320, 256)}

    def __init__(self, policy: Policy, robot_type: str, steps_per_chunk: Optional[int] = None):
        super().__init__(policy, steps_per_chunk)
        if robot_type not in self.SETUPS:
            raise ValueError(f"SimplerEnv robot_type must be one of {sorted(self.SETUPS)}, got {robot_type!r}")
        self.robot_type = robot_type

    def observation(self, env_obs: dict, instruction: str) -> dict:
        """env_obs: {"image": uint8 (H, W, 3) camera image, "state": robot state vector}."""
        view, width, height = self.SETUPS[self.robot_type]
        image = center_crop_resize(resize(env_obs["image"], width, height))
        return {
            "images": {view: image},
            "instruction": instruction,
            "state": np.asarray(env_obs["state"], dtype=np.float32),
            "robot_type": self.robot_type,
        }


def format_instruction(instruction: str) -> str:
    """LIBERO convention: first letter capitalized, ending with a period."""
    text = instruction.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."
