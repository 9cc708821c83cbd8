"""The XR0 policy apart from any transport: the observation request, its validation, and model + processor
turning a validated request into actions in robot units. The websocket server (`xr0.deploy.server`) and in-process
users (`xr0_client.LocalChunkSource`) share it.

An observation is

    {"images": {view: uint8 (H, W, 3)}, "instruction": str, "state": float (D,), "robot_type": str,
     "seed": int (optional), "action_prefix": float (p, active dims) (optional, robot units),
     "prefix_mode": "trained" | "guided" (optional), "inference_delay": int (optional)}

or openpi's form of it, unchanged (what openpi's LIBERO example sends; `openpi_keys` maps it per robot type):

    {"observation/image": uint8 (H, W, 3), "observation/wrist_image": uint8 (H, W, 3),
     "observation/state": float (D,), "prompt": str, + optionally robot_type, seed, action_prefix}

and the reply `{"actions": float32 (T, active dims)}`, T = the robot type's chunk length. `robot_type` may be left
out when the checkpoint serves exactly one robot type.

`action_prefix` holds the previous chunk's actions for this chunk's first p steps, of which the first
`inference_delay` d (default: all p) are committed: they run while this chunk is inferred and come back as sent.
`prefix_mode` says how the chunk is conditioned on them (`XR0ForActionGeneration.sample_actions`): "trained" (the
committed steps as clean tokens, as checkpoints post-trained with prefixes learned it; steps after them are not
used) or "guided" (guided inpainting of the whole prefix: any checkpoint). Its default is the checkpoint's own
(`default_prefix_mode`).

Importing this module loads neither torch nor the model (they load with `load_policy` and the processor), so the
commands that take its options print `--help` at once.
"""

import json
import logging
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from xr0_client.benchmarks import official_instruction
from xr0_common.protocol import field_name, shown

from ..robot_types_xr0 import (
    OPENPI_PROMPT_KEY,
    OPENPI_STATE_KEY,
    OPENPI_VIEW_KEYS,
    ROBOT_TYPES,
    openpi_key_map,
)
from ..sampling_xr0 import GUIDANCE_JACOBIANS, MASK_SCHEDULES, PREFIX_MODES, PrefixGuidance

if TYPE_CHECKING:  # loaded where used: --help and requests parse without torch
    import torch

logger = logging.getLogger("xr0.policy")

PREFIX_KEYS = {"action_prefix", "prefix_mode", "inference_delay"}
OBSERVATION_KEYS = {"images", "instruction", "state", "robot_type", "seed", *PREFIX_KEYS}
REQUIRED_KEYS = {"images", "instruction", "state"}  # and robot_type, unless the server serves only one
OPTIONAL_KEYS = {"robot_type", "seed", *PREFIX_KEYS}
MAX_IMAGE_SIDE = 4096  # the floor is the processor's; the ceiling bounds pixels and aspect ratio
# Magnitude bounds: a finite but huge input (3.4e38 fits float32) overflows inside the model into NaN actions.
MAX_ABS_STATE = 1e4  # robot units, and after the robot type's normalization
MAX_ABS_NORMALIZED_ACTION = 100.0  # committed prefix, in std units of the robot type's statistics


class RequestError(ValueError):
    def __init__(self, field: Optional[str], message: str):
        super().__init__(message)
        self.field = field


@dataclass
class Request:
    images: dict
    instruction: str
    state: np.ndarray
    robot_type: str
    seed: Optional[int]
    action_prefix: Optional[np.ndarray]
    prefix_mode: Optional[str] = None  # None: the policy's default
    inference_delay: Optional[int] = None  # None: the whole prefix is committed


def parse_request(message, processor) -> Request:
    """Checks every field of an observation message (ours or openpi's form) against the processor's robot
    registry; errors name the field as the client sent it."""
    if not isinstance(message, dict) or not all(isinstance(key, str) for key in message):
        raise RequestError(None, "the observation must be a map with string keys")
    if not is_openpi_observation(message):
        return _parse(message, processor)
    ours, openpi_names = _from_openpi(message, processor)
    try:
        return _parse(ours, processor)
    except RequestError as error:
        raise RequestError(openpi_names.get(error.field, error.field), str(error)) from None


def _refuse_unknown(message: dict, allowed: set, schema: str) -> None:
    unknown = sorted(set(message) - allowed)
    if unknown:
        names = ", ".join(field_name(key) for key in unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise RequestError(
            field_name(unknown[0]), f"unknown fields {names}; {schema} takes {sorted(allowed)}"
        )


def _robot_type(message: dict, processor) -> str:
    """The request's robot type: as named, or the server's only one when it serves exactly one."""
    servable = servable_robot_types(processor)
    if "robot_type" not in message:
        if len(servable) == 1:
            return next(iter(servable))
        raise RequestError("robot_type", f"missing robot_type: this server serves {sorted(servable)}")
    robot_type = message["robot_type"]
    if not isinstance(robot_type, str) or robot_type not in servable:
        raise RequestError(
            "robot_type", f"unknown robot_type {shown(robot_type)}; this server serves {sorted(servable)}"
        )
    return robot_type


def is_openpi_observation(message: dict) -> bool:
    return OPENPI_PROMPT_KEY in message or any(key.startswith("observation/") for key in message)


def openpi_keys(processor, robot_type: str) -> Optional[dict]:
    """{openpi key: our field} for `robot_type`, or None when its views have no openpi name."""
    return openpi_key_map([key for key, _ in processor.robot_spec(robot_type).views])


def _from_openpi(message: dict, processor) -> tuple:
    """openpi's observation -> (the same in our schema, {our field: openpi key} to name fields in errors).

    The prompt of a published robot type becomes the instruction its checkpoint was trained on, as the official
    XR0 client writes it (`official_instruction`: LIBERO/CALVIN capitalized, SimplerEnv first letter upper, "."
    appended); a registered robot type's prompt is used as sent."""
    robot_type = _robot_type(message, processor)
    keys = openpi_keys(processor, robot_type)
    if keys is None:
        views = [key for key, _ in processor.robot_spec(robot_type).views]
        raise RequestError(
            "robot_type",
            f"robot_type {robot_type!r} takes the views {views}, which openpi's keys {sorted(OPENPI_VIEW_KEYS)} "
            "do not name: send this server's form ({'images': {view: ...}, 'instruction', 'state', 'robot_type'})",
        )
    _refuse_unknown(message, set(keys) | OPTIONAL_KEYS, f"an openpi-style observation of {robot_type!r}")
    missing = sorted(set(keys) - set(message))
    if missing:
        raise RequestError(missing[0], f"missing fields {missing}")
    prompt = message[OPENPI_PROMPT_KEY]
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError(OPENPI_PROMPT_KEY, "expected a non-empty string")
    if robot_type in ROBOT_TYPES:
        prompt = official_instruction(robot_type, prompt)
    ours = {
        "images": {
            field.split(".", 1)[1]: message[key] for key, field in keys.items() if field.startswith("images.")
        },
        "instruction": prompt,
        "state": message[OPENPI_STATE_KEY],
        "robot_type": robot_type,
        **{key: message[key] for key in OPTIONAL_KEYS if key in message and key != "robot_type"},
    }
    return ours, {field: key for key, field in keys.items()}


def _parse(message: dict, processor) -> Request:
    from ..processing_xr0 import MAX_INSTRUCTION_CHARS, MIN_IMAGE_SIDE  # loaded with the processor

    _refuse_unknown(message, OBSERVATION_KEYS, "an observation")
    missing = REQUIRED_KEYS - set(message)
    if missing:
        raise RequestError(sorted(missing)[0], f"missing fields {sorted(missing)}")
    robot_type = _robot_type(message, processor)
    spec = processor.robot_spec(robot_type)

    images = message["images"]
    views = [key for key, _ in spec.views]
    if not isinstance(images, dict) or sorted(map(str, images)) != sorted(views):
        got = shown(sorted(map(str, images))) if isinstance(images, dict) else type(images).__name__
        raise RequestError("images", f"expected a map with the views {views} of {robot_type!r}, got {got}")
    for view, image in images.items():
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            described = (
                f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            )
            raise RequestError(f"images.{view}", f"expected a uint8 (H, W, 3) array, got {described}")
        low, high = MIN_IMAGE_SIDE, MAX_IMAGE_SIDE
        if not (low <= image.shape[0] <= high and low <= image.shape[1] <= high):
            raise RequestError(
                f"images.{view}", f"image sides must be in [{low}, {high}], got {image.shape[:2]}"
            )

    instruction = message["instruction"]
    if (
        not isinstance(instruction, str)
        or not instruction.strip()
        or len(instruction) > MAX_INSTRUCTION_CHARS
    ):
        raise RequestError(
            "instruction", f"expected a non-empty string of at most {MAX_INSTRUCTION_CHARS} characters"
        )

    state = _float_array("state", message["state"], ndim=1, limit=MAX_ABS_STATE)
    if not 1 <= state.shape[0] <= processor.state_dim:
        raise RequestError("state", f"expected 1 to {processor.state_dim} values, got {state.shape[0]}")
    padded = np.pad(state, (0, processor.state_dim - state.shape[0]))
    if np.abs(spec.normalize_state(padded)).max() > MAX_ABS_STATE:
        raise RequestError("state", f"normalized by {robot_type!r}'s statistics it exceeds {MAX_ABS_STATE:g}")

    seed = message.get("seed")
    if seed is not None:
        if isinstance(seed, np.integer):
            seed = int(seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise RequestError("seed", f"expected an int in [0, 2**63), got {shown(seed)}")

    prefix = message.get("action_prefix")
    if prefix is not None:
        prefix = _float_array("action_prefix", prefix, ndim=2)
        dims = processor.active_action_dims(robot_type)
        length = processor.chunk_length(robot_type)
        if not 1 <= prefix.shape[0] < length or prefix.shape[1] != dims:
            raise RequestError(
                "action_prefix",
                f"expected (p, {dims}) with 1 <= p < {length} (the chunk length of {robot_type!r}), got {prefix.shape}",
            )
        normalized = processor.normalize_action(prefix, robot_type)
        if not np.isfinite(normalized).all() or np.abs(normalized).max() > MAX_ABS_NORMALIZED_ACTION:
            raise RequestError(
                "action_prefix",
                f"normalized by {robot_type!r}'s statistics it exceeds {MAX_ABS_NORMALIZED_ACTION:g} standard deviations",
            )
    prefix_mode, delay = message.get("prefix_mode"), message.get("inference_delay")
    if prefix is None and (prefix_mode is not None or delay is not None):
        named = "prefix_mode" if prefix_mode is not None else "inference_delay"
        raise RequestError(named, f"{named} describes an action_prefix: send one with it, or leave it out")
    if prefix_mode is not None and prefix_mode not in PREFIX_MODES:
        raise RequestError("prefix_mode", f"expected one of {list(PREFIX_MODES)}, got {shown(prefix_mode)}")
    if delay is not None:
        if isinstance(delay, np.integer):
            delay = int(delay)
        if isinstance(delay, bool) or not isinstance(delay, int) or not 1 <= delay <= prefix.shape[0]:
            raise RequestError(
                "inference_delay",
                f"expected an int in [1, {prefix.shape[0]}] (the committed steps of the {prefix.shape[0]}-step "
                f"action_prefix), got {shown(delay)}",
            )
    return Request(dict(images), instruction, state, robot_type, seed, prefix, prefix_mode, delay)


def _float_array(field: str, value, ndim: int, limit: float = float(np.finfo(np.float32).max)) -> np.ndarray:
    if isinstance(value, list):
        try:
            value = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise RequestError(field, f"expected a {ndim}-D array of numbers") from None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf" or value.ndim != ndim:
        described = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise RequestError(field, f"expected a {ndim}-D numeric array, got {described}")
    value = value.astype(np.float64)
    if not np.isfinite(value).all():
        raise RequestError(field, "contains NaN or infinite values")
    if value.size and np.abs(value).max() > limit:
        raise RequestError(field, f"values must be within ±{limit:g}, got {np.abs(value).max():g}")
    return value.astype(np.float32)


def servable_robot_types(processor) -> dict:
    """Robot types with camera views and action statistics: the ones a request can name."""
    return {
        name: spec
        for name, spec in processor.robot_types.items()
        if spec.views is not None and spec.has_action_statistics
    }


def default_prefix_mode(config) -> str:
    """How a checkpoint uses an action prefix unless told: as it was trained to ("trained") when its training
    drew prefixes, else by guided inpainting, which needs no training."""
    return "trained" if config.action_prefix_probability > 0 else "guided"


class XR0Policy:
    """Model + processor: a decoded observation -> a reply or a refusal, counted; what a client learns on
    connecting (`metadata`). A transport only frames, authenticates and bounds messages (`xr0.deploy.server`);
    in-process users call it directly.

    Args:
        guidance: the guided prefix mode's settings (mask schedule, maximum weight, Jacobian); each request's
            `inference_delay` replaces its delay.
        checkpoint: what the metadata reports as the checkpoint (`checkpoint_identity`).
    """

    def __init__(
        self, model, processor, guidance: Optional[PrefixGuidance] = None, checkpoint: Optional[dict] = None
    ):
        self.model = model.eval()
        self.processor = processor
        self.guidance = guidance or PrefixGuidance()
        self.default_prefix_mode = default_prefix_mode(model.config)
        self.checkpoint = checkpoint or {"name": "xr0"}
        # Answers given, requests refused, inferences that failed.
        self.served = self.refused = self.failed = 0

    def metadata(self) -> dict:
        """The robot types this policy serves (views, active dims, chunk length), how it uses action prefixes and
        openpi's keys per robot type: sent to every client on connect."""
        servable = servable_robot_types(self.processor)
        return {
            "server": "xr0",
            "protocol_version": 1,
            "model": self.checkpoint["name"],
            "checkpoint": self.checkpoint,
            "robot_types": {
                name: {
                    "views": [key for key, _ in spec.views],
                    "active_action_dims": self.processor.active_action_dims(name),
                    "chunk_length": self.processor.chunk_length(name),
                }
                for name, spec in servable.items()
            },
            "observation_keys": sorted(OBSERVATION_KEYS),
            # How an action_prefix is used: per request (`prefix_mode`), else the checkpoint's default.
            "prefix_modes": list(PREFIX_MODES),
            "default_prefix_mode": self.default_prefix_mode,
            "guidance": guidance_settings(self.guidance),
            "openpi_keys": {
                name: keys for name in servable if (keys := openpi_keys(self.processor, name)) is not None
            },
        }

    def parse(self, message) -> Request:
        """A decoded message -> a validated `Request`; raises `RequestError` naming the field at fault."""
        return parse_request(message, self.processor)

    def answer(self, request: Request) -> dict:
        """
        A validated request -> `{"actions": float32 (T, active dims), "robot_type"}`, or `{"error": {"field",
        "message"}}` when the request is refused (non-finite actions included: they never reach a robot) or the
        inference fails (logged with its traceback; the message says only that). Never raises.
        """
        try:
            actions = self(request)
        except RequestError as error:
            return self.refusal(error)
        except (ValueError, TypeError) as error:  # a request the processor or model still refuses
            return self.refusal(RequestError(None, str(error)))
        except Exception:  # noqa: BLE001 - the caller (a server) must outlive a failed inference
            logger.exception("inference failed")
            self.failed += 1
            return {
                "error": {"field": None, "message": "internal error during inference (logged on the server)"}
            }
        self.served += 1
        return {"actions": actions, "robot_type": request.robot_type}

    def refusal(self, error) -> dict:
        """`{"error": {"field", "message"}}` of a refused request (the message bounded to 1000 characters),
        counted."""
        self.refused += 1
        return {"error": {"field": getattr(error, "field", None), "message": str(error)[:1000]}}

    def summary(self) -> str:
        return f"served {self.served} requests ({self.refused} refused, {self.failed} failed)"

    def infer(self, observation: dict) -> dict:
        """openpi's policy interface: an observation dict -> {"actions": (T, active dims)}, validated first
        (RequestError names the field at fault)."""
        return {"actions": self(parse_request(observation, self.processor))}

    def __call__(self, request: Request) -> np.ndarray:
        import torch

        inputs = self.processor(
            images=request.images,
            instruction=request.instruction,
            state=request.state,
            robot_type=request.robot_type,
        ).to(self.model.device)
        # As the official server does: the mask in the model's dtype, so that a seed draws the official noise.
        inputs["action_mask"] = inputs["action_mask"].to(self.model.dtype)
        prefix, mode, guidance = None, "trained", None
        if request.action_prefix is not None:
            prefix = torch.from_numpy(
                self.processor.normalize_action(request.action_prefix, request.robot_type)
            )[None]
            mode = request.prefix_mode or self.default_prefix_mode
            if mode == "trained" and request.inference_delay is not None:
                prefix = prefix[:, : request.inference_delay]  # the committed steps are the trained prefix
            if mode == "guided":
                guidance = replace(self.guidance, inference_delay=request.inference_delay)
        with torch.inference_mode():
            actions = self.model(
                **inputs, seed=request.seed, action_prefix=prefix, prefix_mode=mode, guidance=guidance
            ).actions
        decoded = self.processor.decode_action(actions, request.robot_type)[0].numpy().astype(np.float32)
        if not np.isfinite(decoded).all():  # nothing non-finite ever reaches a robot
            raise RequestError(
                "actions", "the model produced non-finite actions for this observation; refused"
            )
        return decoded


def executor_prefix_mode(requested: Optional[str], mode: str, config) -> str:
    """The real-time executor's prefix mode ("none" | "trained" | "guided") for an evaluation in `mode` ("sync" |
    "async") of a checkpoint with `config`: `requested`, or when None the checkpoint's own ("trained" when its
    training drew prefixes, else "none": blind chunk switching). A synchronous robot commits nothing."""
    if mode == "sync":
        if requested not in (None, "none"):
            raise ValueError(
                f"prefix_mode {requested!r} needs --mode async: a synchronous robot commits nothing"
            )
        return "none"
    if requested is None:
        return "trained" if config.action_prefix_probability > 0 else "none"
    return requested


def add_guidance_arguments(parser) -> None:
    """The guided prefix mode's settings as command-line options (server and evaluators)."""
    defaults = PrefixGuidance()
    parser.add_argument(
        "--guidance_jacobian",
        choices=GUIDANCE_JACOBIANS,
        default=defaults.jacobian,
        help="guided mode: the vector-Jacobian product through the DiT (the paper) or the identity (cheaper)",
    )
    parser.add_argument(
        "--max_guidance_weight", type=float, default=defaults.max_weight, help="guided mode: the clip β"
    )
    parser.add_argument(
        "--mask_schedule",
        choices=MASK_SCHEDULES,
        default=defaults.mask_schedule,
        help="guided mode: the weights of the overlap after the committed steps",
    )


def add_prefix_mode_arguments(parser, executor_prefix_modes) -> None:
    """The simulated evaluators' `--prefix_mode` (the executor's modes) and the guided mode's options."""
    parser.add_argument(
        "--prefix_mode",
        choices=executor_prefix_modes,
        default=None,
        help="async: how the next chunk uses the committed actions (default: trained for a checkpoint trained "
        "with prefixes, else none)",
    )
    add_guidance_arguments(parser)


def guidance_from_arguments(args) -> PrefixGuidance:
    """`PrefixGuidance` of the options `add_guidance_arguments` added (ValueError names a bad one)."""
    return PrefixGuidance(
        mask_schedule=args.mask_schedule, max_weight=args.max_guidance_weight, jacobian=args.guidance_jacobian
    )


def guidance_settings(guidance: PrefixGuidance) -> dict:
    """The guided mode's settings as metadata and results files record them (the delay is per request)."""
    return {
        "jacobian": guidance.jacobian,
        "max_weight": guidance.max_weight,
        "mask_schedule": guidance.mask_schedule,
    }


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_policy(
    model_dir: str,
    device: Optional[str] = None,
    dtype: Optional["torch.dtype"] = None,
    guidance: Optional[PrefixGuidance] = None,
) -> "XR0Policy":
    """The policy of a checkpoint directory, with this package's classes: a server never runs Python code that
    came with a checkpoint (no trust_remote_code), and reads only its safetensors and JSON files. Defaults: CUDA
    in bfloat16 when available, else the CPU in float32. The metadata names the checkpoint
    (`checkpoint_identity`)."""
    import torch

    from ..modeling_xr0 import XR0ForActionGeneration
    from ..processing_xr0 import XR0Processor

    device = device or default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = XR0ForActionGeneration.from_pretrained(model_dir, dtype=dtype).to(device)
    processor = XR0Processor.from_pretrained(model_dir)
    return XR0Policy(model, processor, guidance, checkpoint_identity(model_dir))


def checkpoint_identity(model_dir) -> dict:
    """What names a checkpoint to clients (server metadata, evaluation results files): its folder name and, when
    known, the source and revision it came from: xr0-convert's conversion.json (published repo id and commit), a
    Hub cache snapshot folder (`models--org--name/snapshots/<commit>`), or the git commit that last changed the
    folder when it lives in a repository (e.g. the shipped fixtures; `modified` when it differs from it)."""
    directory = Path(model_dir).resolve()
    identity = {"name": directory.name, "source": None, "revision": None}
    conversion = directory / "conversion.json"
    if conversion.is_file():
        report = json.loads(conversion.read_text())
        return {
            **identity,
            "source": report.get("source"),
            "revision": report.get("revision"),
            "variant": report.get("variant"),
        }
    snapshot = re.fullmatch(r"models--(.+)", directory.parent.parent.name)
    if directory.parent.name == "snapshots" and snapshot:
        return {**identity, "source": snapshot.group(1).replace("--", "/"), "revision": directory.name}
    try:

        def git(*args):
            return subprocess.run(
                ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()

        commit = git("log", "-1", "--format=%H", "--", ".")
        if commit:
            modified = bool(git("status", "--porcelain", "--", "."))
            return {**identity, "source": "git", "revision": commit, "modified": modified}
    except (OSError, subprocess.SubprocessError):
        pass  # not in a repository, or no git: the name is all there is
    return identity
