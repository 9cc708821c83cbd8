"""Benchmark clients for LIBERO, CALVIN and SimplerEnv that follow the official evaluation clients' conventions
and talk to an XR0 policy: the websocket server (`XR0Client`) or anything with `infer(observation)`.

Each client turns a simulator observation into the official request (camera views under `base` /
`wrist_left`, raw state layout, instruction), derives the request's seed from it exactly as the official
clients do (`official_request_seed`), sends it in the server's format, executes each chunk whole, as the official
clients do (or its first `steps_per_chunk` actions), and post-processes them for the simulator. The chunk length T
is the server's: its metadata names it per robot type, and every reply carries it. With the same observation, our clients therefore ask
for the same seed, and so the same noise, as the official ones.
"""

import hashlib
import json
import math
from collections import deque
from typing import Optional, Protocol

import numpy as np
from PIL import Image

from .robot_types import ROBOT_TYPES


class Policy(Protocol):
    def infer(self, observation: dict) -> dict: ...


# ---- the official request seed ----------------------------------------------------------------------------------


def _canonical_json_value(value):
    """How the official clients serialize what JSON cannot: numpy arrays by their bytes, PIL images by a digest
    of their pixels, sets as sorted lists."""
    if isinstance(value, np.ndarray):
        return {
            "__type__": "numpy",
            "dtype": str(value.dtype),
            "shape": value.shape,
            "data": value.tobytes().hex(),
        }
    if isinstance(value, Image.Image):
        digest = hashlib.md5(value.tobytes()).hexdigest()
        return {"__type__": "PIL.Image", "mode": value.mode, "size": value.size, "content_hash": digest}
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"cannot hash a {type(value).__name__} into a request seed")


def official_request_seed(request: dict, max_bytes: int = 4) -> int:
    """The seed the official LIBERO/CALVIN/SimplerEnv clients derive from a request dict (built before its
    "seed" key is added): SHA-256 of its canonical JSON (sorted keys, no spaces, non-ASCII kept), as an integer
    modulo 2**(8 * max_bytes)."""
    text = json.dumps(
        request, default=_canonical_json_value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    seed = int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)
    return seed % (2 ** (8 * max_bytes)) if max_bytes > 0 else seed


# ---- image and rotation conventions -----------------------------------------------------------------------------


def center_crop_resize(image: Image.Image, scale: float = 0.95) -> Image.Image:
    """The official clients' crop: keep the central int(side · scale) pixels of each side, then resize back to the
    original size (bilinear)."""
    width, height = image.size
    crop_w, crop_h = int(width * scale), int(height * scale)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BILINEAR)


def quaternion_to_axis_angle(quaternion_xyzw: np.ndarray) -> np.ndarray:
    """(x, y, z, w) -> axis · angle with angle = 2·acos(w) in [0, 2π], as robosuite computes it (and so as the
    LIBERO training data holds it): no normalization, no sign flip."""
    quaternion = np.asarray(quaternion_xyzw, dtype=np.float64).copy()
    w = min(max(quaternion[3], -1.0), 1.0)
    sin_half = math.sqrt(1.0 - w * w)
    if math.isclose(sin_half, 0.0):
        return np.zeros(3)
    return quaternion[:3] * 2.0 * math.acos(w) / sin_half


def quaternion_to_matrix(quaternion_wxyz: np.ndarray) -> np.ndarray:
    """(w, x, y, z), any norm -> 3x3 rotation matrix (identity for a near-zero quaternion)."""
    w, x, y, z = np.asarray(quaternion_wxyz, dtype=np.float64)
    norm2 = w * w + x * x + y * y + z * z
    if norm2 < np.finfo(np.float64).eps:
        return np.eye(3)
    s = 2.0 / norm2
    return np.array(
        [
            [1 - s * (y * y + z * z), s * (x * y - w * z), s * (x * z + w * y)],
            [s * (x * y + w * z), 1 - s * (x * x + z * z), s * (y * z - w * x)],
            [s * (x * z - w * y), s * (y * z + w * x), 1 - s * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(matrix: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> unit (w, x, y, z) with w >= 0 (the eigenvector of the symmetric K matrix with the
    largest eigenvalue, Bar-Itzhack's method)."""
    m = np.asarray(matrix, dtype=np.float64)
    k = (
        np.array(
            [
                [m[0, 0] - m[1, 1] - m[2, 2], 0, 0, 0],
                [m[0, 1] + m[1, 0], m[1, 1] - m[0, 0] - m[2, 2], 0, 0],
                [m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], m[2, 2] - m[0, 0] - m[1, 1], 0],
                [m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1], m[0, 0] + m[1, 1] + m[2, 2]],
            ]
        )
        / 3.0
    )
    values, vectors = np.linalg.eigh(k)  # eigh reads the lower triangle
    x, y, z, w = vectors[:, np.argmax(values)]
    quaternion = np.array([w, x, y, z])
    return -quaternion if quaternion[0] < 0 else quaternion


def matrix_to_euler_xyz(matrix: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> (roll, pitch, yaw) of static-axes x-y-z rotations (R = Rz(yaw)·Ry(pitch)·Rx(roll))."""
    m = np.asarray(matrix, dtype=np.float64)
    cos_pitch = math.hypot(m[0, 0], m[1, 0])
    if cos_pitch > np.finfo(np.float64).eps * 4.0:
        return np.array(
            [math.atan2(m[2, 1], m[2, 2]), math.atan2(-m[2, 0], cos_pitch), math.atan2(m[1, 0], m[0, 0])]
        )
    return np.array([math.atan2(-m[1, 2], m[1, 1]), math.atan2(-m[2, 0], cos_pitch), 0.0])


def euler_xyz_to_axis_angle(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Static-axes x-y-z Euler angles -> axis · angle (the rotation SimplerEnv's controllers take)."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    w = cr * cp * cy + sr * sp * sy
    xyz = np.array([sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy])
    norm = np.linalg.norm(xyz)
    if norm < 1e-12:
        return np.zeros(3)
    return xyz / norm * 2.0 * math.atan2(norm, w)


# ---- instructions -------------------------------------------------------------------------------------------------


def official_task_text(robot_type: str, task: str) -> str:
    """A task description as the official client of `robot_type` writes it, before it appends ".": the robot
    type's `instruction` convention, "first_upper" (SimplerEnv: the first letter upper-cased) or "capitalize"
    (LIBERO, CALVIN, and any robot type the registry does not name: str.capitalize, first letter upper, the rest
    lowered)."""
    task = str(task)
    if ROBOT_TYPES.get(robot_type, {}).get("instruction") == "first_upper":
        return task[:1].upper() + task[1:]
    return task.capitalize()


def official_instruction(robot_type: str, task: str) -> str:
    """The instruction the checkpoints were trained on: `official_task_text` + "." (appended unconditionally, as
    the official clients do)."""
    return official_task_text(robot_type, task) + "."


# ---- clients ------------------------------------------------------------------------------------------------------


class BenchmarkClient:
    """Queries a chunk when its queue is empty and executes it whole, or its first `steps_per_chunk` actions."""

    robot_type: str = ""
    action_dims: int = 7

    def __init__(self, policy: Policy, steps_per_chunk: Optional[int] = None):
        if steps_per_chunk is not None and (
            isinstance(steps_per_chunk, bool) or not isinstance(steps_per_chunk, int) or steps_per_chunk < 1
        ):
            raise ValueError(
                f"steps_per_chunk must be an int >= 1 or None (the whole chunk), got {steps_per_chunk!r}"
            )
        self.policy = policy
        self.steps_per_chunk = steps_per_chunk
        self.queue: deque = deque()

    def reset(self) -> None:
        self.queue.clear()

    def requests(self, env_obs, instruction: str) -> tuple[dict, dict]:
        """(the request dict the official client hashes into the seed, with its keys, types and values;
        the same observation in our server's format, without the seed)."""
        raise NotImplementedError

    def postprocess(self, action: np.ndarray) -> np.ndarray:
        return action

    def act(self, env_obs, instruction: str) -> np.ndarray:
        """The simulator action for this step; queries a new chunk when the last one is executed."""
        if not self.queue:
            request, observation = self.requests(env_obs, instruction)
            observation["seed"] = official_request_seed(request)
            chunk = np.asarray(self.policy.infer(observation)["actions"])
            least = self.steps_per_chunk or 1
            if chunk.ndim != 2 or chunk.shape[0] < least or chunk.shape[1] < self.action_dims:
                raise ValueError(f"expected a (T >= {least}, >= {self.action_dims}) chunk, got {chunk.shape}")
            self.queue.extend(chunk[: self.steps_per_chunk, : self.action_dims])
        return self.postprocess(np.asarray(self.queue.popleft(), dtype=np.float64))


class LiberoClient(BenchmarkClient):
    """LIBERO (robosuite observations): agent-view and wrist images rotated 180 degrees (256x256 as rendered);
    state = end-effector position (3) + axis-angle (3) + gripper joint positions (2) + 24 zeros; instruction
    through str.capitalize (first letter upper, the rest lowered), a "." appended after the seed is derived."""

    robot_type = "libero_all"

    def requests(self, env_obs: dict, instruction: str) -> tuple[dict, dict]:
        def view(key):
            return Image.fromarray(np.ascontiguousarray(np.asarray(env_obs[key])[::-1, ::-1]))

        state = np.concatenate(
            [
                env_obs["robot0_eef_pos"],
                quaternion_to_axis_angle(env_obs["robot0_eef_quat"]),
                env_obs["robot0_gripper_qpos"],
                np.zeros(24),
            ]
        )
        request = {
            "task_id": self.robot_type,
            "state": state,
            "base": view("agentview_image"),
            "wrist_left": view("robot0_eye_in_hand_image"),
            "language": official_task_text(self.robot_type, instruction),
        }
        return request, _two_view_observation(request)


class CalvinClient(BenchmarkClient):
    """CALVIN: static and gripper cameras, each center-cropped to 0.95 and resized back; state = robot_obs[:7] +
    25 zeros; instruction capitalized, "." appended after the seed; the gripper action becomes +1 when positive,
    else -1."""

    robot_type = "calvin_abc_orig"
    ROBOT_TYPE_CHOICES = sorted(
        name for name, facts in ROBOT_TYPES.items() if facts.get("benchmark") == "CALVIN"
    )

    def __init__(
        self, policy: Policy, robot_type: str = "calvin_abc_orig", steps_per_chunk: Optional[int] = None
    ):
        super().__init__(policy, steps_per_chunk)
        if robot_type not in self.ROBOT_TYPE_CHOICES:
            raise ValueError(
                f"CALVIN robot_type must be {' or '.join(self.ROBOT_TYPE_CHOICES)}, got {robot_type!r}"
            )
        self.robot_type = robot_type

    def requests(self, env_obs: dict, annotation: str) -> tuple[dict, dict]:
        rgb = env_obs["rgb_obs"]
        request = {
            "task_id": self.robot_type,
            "state": np.concatenate([np.asarray(env_obs["robot_obs"])[:7], np.zeros(25)]),
            "base": center_crop_resize(_as_pil(rgb["rgb_static"])),
            "wrist_left": center_crop_resize(_as_pil(rgb["rgb_gripper"])),
            "language": official_task_text(self.robot_type, annotation),
        }
        return request, _two_view_observation(request)

    def postprocess(self, action: np.ndarray) -> np.ndarray:
        action = action.copy()
        action[6] = 1.0 if action[6] > 0 else -1.0
        return action


class SimplerEnvClient(BenchmarkClient):
    """SimplerEnv (ManiSkill2 observations): one camera image resized with PIL's default filter to 256x256
    (WidowX/Bridge, title "Base") or 320x256 (Google Robot/Fractal, title "Ego"), center crop 0.95 and resized
    back; the state from the end-effector pose `eef_pos` (position, quaternion w-x-y-z, gripper) as each
    dataset recorded it, zero-padded to 32; instruction with its first letter upper-cased and a "." appended;
    roll-pitch-yaw actions become axis-angle, the gripper as each robot expects."""

    IMAGE_SIZES = {  # (width, height)
        name: tuple(facts["image"]["size"])
        for name, facts in ROBOT_TYPES.items()
        if facts.get("benchmark") == "SimplerEnv"
    }
    TITLES = {name: ROBOT_TYPES[name]["views"][0][1] for name in IMAGE_SIZES}
    # Bridge's end-effector frame relative to SimplerEnv's (a top-down gripper).
    BRIDGE_DEFAULT_ROTATION = np.array([[0, 0, 1.0], [0, 1.0, 0], [-1.0, 0, 0]])

    def __init__(self, policy: Policy, robot_type: str, steps_per_chunk: Optional[int] = None):
        super().__init__(policy, steps_per_chunk)
        if robot_type not in self.IMAGE_SIZES:
            raise ValueError(
                f"SimplerEnv robot_type must be one of {sorted(self.IMAGE_SIZES)}, got {robot_type!r}"
            )
        self.robot_type = robot_type

    def robot_state(self, eef_pos: np.ndarray) -> np.ndarray:
        """SimplerEnv's (x, y, z, qw, qx, qy, qz, gripper) -> the 8 state values the checkpoint was trained on."""
        eef_pos = np.asarray(eef_pos, dtype=np.float64)
        rotation = quaternion_to_matrix(eef_pos[3:7])
        gripper = eef_pos[7]
        if self.robot_type == "bridge_delta":
            rpy = matrix_to_euler_xyz(rotation @ self.BRIDGE_DEFAULT_ROTATION.T)
            return np.concatenate([eef_pos[:3], rpy, [0.0], [gripper]])  # a zero before the gripper openness
        w, x, y, z = matrix_to_quaternion(rotation)
        return np.concatenate([eef_pos[:3], [x, y, z, w], [1.0 - gripper]])  # quaternion x-y-z-w, closedness

    def requests(self, env_obs: dict, instruction: str) -> tuple[dict, dict]:
        """env_obs: {"image": uint8 (H, W, 3) camera image, "eef_pos": (8,) SimplerEnv end-effector pose}."""
        image = _as_pil(env_obs["image"]).resize(self.IMAGE_SIZES[self.robot_type])
        state = np.zeros((1, 1, 32))
        robot_state = self.robot_state(env_obs["eef_pos"])
        state[0, 0, : robot_state.shape[0]] = robot_state
        text = official_instruction(self.robot_type, instruction)
        request = {
            "task_id": self.robot_type,
            "state": state,
            # The official client sends the whole prompt; our server builds the same one from `text`.
            "language": single_view_prompt(self.TITLES[self.robot_type], text),
            "base": center_crop_resize(image),
        }
        observation = {
            "images": {"base": np.asarray(request["base"])},
            "instruction": text,
            "state": robot_state.astype(np.float32),
            "robot_type": self.robot_type,
        }
        return request, observation

    def postprocess(self, action: np.ndarray) -> np.ndarray:
        rotation = euler_xyz_to_axis_angle(*action[3:6])
        if (
            self.robot_type == "bridge_delta"
        ):  # trained with 0 = closed, 1 = open; WidowX takes -1 close / +1 open
            gripper = 1.0 if action[6] > 0.5 else -1.0
        else:  # Google Robot takes +1 close / -1 open
            gripper = float(np.clip(-(2.0 * action[6] - 1.0), -1.0, 1.0))
        return np.concatenate([action[:3], rotation, [gripper]])


def single_view_prompt(title: str, instruction: str) -> str:
    """The whole prompt the official SimplerEnv client sends (the text our processor builds; a test holds the two
    equal: this module must not import torch)."""
    return (
        "<|im_start|>user\nThe following observations are captured from multiple views.\n"
        f"# {title} View\n<|vision_start|><|image_pad|><|vision_end|>\n"
        f"Generate robot actions for the task:\n{instruction} /no_cot<|im_end|>\n<|im_start|>assistant\n<cot></cot><|im_end|>\n"
    )


def _two_view_observation(request: dict) -> dict:
    return {
        "images": {"base": np.asarray(request["base"]), "wrist_left": np.asarray(request["wrist_left"])},
        "instruction": request["language"] + ".",  # official_instruction: the hashed text + "."
        "state": np.asarray(request["state"], dtype=np.float32),
        "robot_type": request["task_id"],
    }


def _as_pil(image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
