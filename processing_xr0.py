"""Processor of Xiaomi-Robotics-0 (XR0): observation -> model inputs, and normalized actions -> robot actions.

It owns what the published checkpoints were trained with: the multi-view prompt, the Qwen3-VL image pipeline
(patch 16, merge 2, temporal patch 2, mean/std 0.5), state padding, and a registry of robot types with their
camera views and action statistics (the published `action_config` is read as is).

Two ways to call it:
    # as published: a prompt with one <|image_pad|> per image
    processor(text=[prompt], images=[img_base, img_wrist], padding=True, return_tensors="pt")
    # one observation (or a list of them): everything `XR0ForActionGeneration.forward` needs
    processor(images={"base": img, "wrist_left": img}, instruction="pick up the bowl", state=q, robot_type="libero_all")
"""

import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, Qwen3VLConfig
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import cached_file

from .robot_types_xr0 import processor_robot_types

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
# Prompt of training and evaluation (the official clients and server): a titled block per camera view, then the task.
PROMPT_HEADER = "<|im_start|>user\nThe following observations are captured from multiple views.\n"
PROMPT_VIEW = "# {title} View\n" + IMAGE_PLACEHOLDER + "\n"
ASSISTANT_START = "<|im_start|>assistant\n"
PROMPT_TASK = (
    "Generate robot actions for the task:\n{instruction} /no_cot<|im_end|>\n"
    + ASSISTANT_START
    + "<cot></cot><|im_end|>\n"
)
# Dims whose std is at most this are padding (the published rule for the action mask).
ACTIVE_STD_THRESHOLD = 1e-5

# The published robot types as the processor keeps them (camera views as the official clients send them, chunk
# lengths, what each action dim means), from the one registry of their facts. Their statistics come with each
# checkpoint (`action_config`), and their (T, 32) shape is what sets T.
PUBLISHED_ROBOT_TYPES = processor_robot_types()
# Pixel bounds of the image resize when a checkpoint's preprocessor_config.json states no `min_pixels` /
# `max_pixels`: the Qwen2-VL image processor's defaults. The official runtime (transformers 4.57.1, slow image
# processor, as the official server loads it) discards a saved `size` and uses these, so a file that carries only
# Qwen3-VL's released `size` (256²..4096²) still acts with 56²..1003520: a 224² view stays 224² (49 tokens), a 200²
# view becomes 192² (36 tokens), an 84² view 96² (9 tokens). We resolve the bounds the same way on every
# transformers line; a checkpoint that wants another floor states `min_pixels`.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


def format_prompt(instruction: str, view_titles: list) -> str:
    """The published XR0 prompt for one observation, one image placeholder per view title."""
    views = "".join(PROMPT_VIEW.format(title=title) for title in view_titles)
    return PROMPT_HEADER + views + PROMPT_TASK.format(instruction=instruction)


def _as_list(value):
    return value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else value


@dataclass(frozen=True)
class RobotSpec:
    """
    One robot type: its camera views, chunk length, action layout and statistics, and the normalization they
    define. Statistics are float32 arrays padded to the model's widths (mean 0 / std 0 past a robot's dims);
    action statistics are (T, A) when they vary over the chunk (the published form, which sets T) or (A,).

    Args:
        name: the robot type.
        views: ((view key, prompt title), ...) in prompt order, or None (no camera contract yet).
        active_action_dims: how many leading action dims the robot uses, or None (taken from the statistics).
        chunk_length: T, or None (the processor's `action_length`).
        action_mean, action_std: (T, A) or (A,), or None.
        state_mean, state_std: (state_dim,), or None: the published checkpoints feed the state raw.
        action_names: (name, ...) of the leading action dims, e.g. ("Δx", ..., "gripper"), or None (unknown).
        action_units: (unit, ...), one per name, e.g. ("m", ...), or None (unknown).
        state_names: (name, ...) of the leading state dims, e.g. ("hand_x", ...), or None (unknown).
    """

    name: str
    views: Optional[tuple] = None
    active_action_dims: Optional[int] = None
    chunk_length: Optional[int] = None
    action_mean: Optional[np.ndarray] = None
    action_std: Optional[np.ndarray] = None
    state_mean: Optional[np.ndarray] = None
    state_std: Optional[np.ndarray] = None
    action_names: Optional[tuple] = None
    action_units: Optional[tuple] = None
    state_names: Optional[tuple] = None

    FIELDS = (
        "views",
        "active_action_dims",
        "chunk_length",
        "action_mean",
        "action_std",
        "state_mean",
        "state_std",
        "action_names",
        "action_units",
        "state_names",
    )

    @classmethod
    def create(cls, name: str, action_dim: int, state_dim: int, **fields) -> "RobotSpec":
        """A validated spec from user or file values (lists, arrays, tensors); every error names the field."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"robot type name must be a non-empty str, got {name!r}.")
        unknown = sorted(set(fields) - set(cls.FIELDS))
        if unknown:
            raise ValueError(
                f"robot_types[{name!r}] has unknown keys {unknown}; keys are among {list(cls.FIELDS)}."
            )
        views = fields.get("views")
        if views is not None:
            if not views or not all(
                isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, str) and x for x in v)
                for v in views
            ):
                raise ValueError(
                    f"robot type {name!r}: `views` must be a list of [view_key, title] pairs, got {views!r}."
                )
            views = tuple(tuple(v) for v in views)
        active = fields.get("active_action_dims")
        if active is not None and (
            isinstance(active, bool) or not isinstance(active, int) or not 1 <= active <= action_dim
        ):
            raise ValueError(
                f"robot type {name!r}: `active_action_dims` must be an int in [1, {action_dim}], got {active!r}."
            )
        length = fields.get("chunk_length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"robot type {name!r}: `chunk_length` must be an int >= 1, got {length!r}.")
        names, units = (
            _label_tuple(name, key, fields.get(key), action_dim) for key in ("action_names", "action_units")
        )
        state_names = _label_tuple(name, "state_names", fields.get("state_names"), state_dim)
        if units is not None and (names is None or len(units) != len(names)):
            raise ValueError(
                f"robot type {name!r}: `action_units` needs `action_names` and one unit per name, got "
                f"{0 if names is None else len(names)} names and {len(units)} units."
            )
        stats = {
            key: _statistic_array(
                name, key, fields.get(key), action_dim if key.startswith("action") else state_dim
            )
            for key in ("action_mean", "action_std", "state_mean", "state_std")
        }
        for kind in ("action", "state"):
            if (stats[f"{kind}_mean"] is None) != (stats[f"{kind}_std"] is None):
                raise ValueError(f"robot type {name!r}: give `{kind}_mean` and `{kind}_std` together.")
        # (T, A) statistics set the chunk length: they are what the checkpoint was trained with.
        lengths = sorted(
            {
                len(stats[k])
                for k in ("action_mean", "action_std")
                if stats[k] is not None and stats[k].ndim == 2
            }
        )
        if len(lengths) > 1:
            raise ValueError(
                f"robot type {name!r}: `action_mean` and `action_std` have different lengths {lengths}."
            )
        if lengths:
            if length is not None and length != lengths[0]:
                raise ValueError(
                    f"robot type {name!r}: `chunk_length` {length} disagrees with its (T, A) statistics, T = {lengths[0]}."
                )
            length = lengths[0]
        return cls(
            name,
            views,
            active,
            length,
            **stats,
            action_names=names,
            action_units=units,
            state_names=state_names,
        )

    def updated(self, action_dim: int, state_dim: int, **changes) -> "RobotSpec":
        """This spec with the non-None fields of `changes` replaced, validated again. New (T, A) statistics set
        T; a new `chunk_length` drops per-step statistics of another length, new `action_names` units of another
        count."""
        fields = {key: getattr(self, key) for key in self.FIELDS}
        changes = {key: value for key, value in changes.items() if value is not None}
        new_table = (
            "action_mean" in changes
            and np.ndim(np.asarray(_as_list(changes["action_mean"]), dtype=object)) == 2
        )
        if new_table and "chunk_length" not in changes:
            fields["chunk_length"] = None
        if "chunk_length" in changes and "action_mean" not in changes:
            for key in ("action_mean", "action_std"):
                if (
                    fields[key] is not None
                    and fields[key].ndim == 2
                    and len(fields[key]) != changes["chunk_length"]
                ):
                    fields[key] = None
        if "action_names" in changes and "action_units" not in changes:
            units = fields["action_units"]
            if units is not None and len(units) != len(changes["action_names"]):
                fields["action_units"] = None
        fields.update(changes)
        return RobotSpec.create(self.name, action_dim, state_dim, **fields)

    # ---- what the statistics define ----

    def length(self, default: int) -> int:
        return self.chunk_length if self.chunk_length is not None else default

    @property
    def has_action_statistics(self) -> bool:
        return self.action_std is not None

    def action_statistics(self, length: int) -> tuple:
        """(mean, std), each (T, A) float32."""
        if not self.has_action_statistics:
            raise ValueError(
                f"robot_type {self.name!r} has no `action_mean`: register its statistics (register_robot_type, or "
                "the checkpoint's action_config)."
            )
        width = self.action_std.shape[-1]
        return tuple(
            np.broadcast_to(a, (length, width)).astype(np.float32)
            for a in (self.action_mean, self.action_std)
        )

    def action_mask(self, length: int, action_dim: int) -> np.ndarray:
        """(T, A) float32: 1 where the action std exceeds 1e-5 (the published rule); without statistics, 1 on the
        first `active_action_dims` dims."""
        if self.has_action_statistics:
            return (self.action_statistics(length)[1] > ACTIVE_STD_THRESHOLD).astype(np.float32)
        if self.active_action_dims is None:
            raise ValueError(
                f"robot_type {self.name!r} has neither action statistics nor `active_action_dims`."
            )
        mask = np.zeros((length, action_dim), np.float32)
        mask[:, : self.active_action_dims] = 1
        return mask

    def active_dims(self, length: int, action_dim: int) -> int:
        """How many leading action dims the robot uses: `active_action_dims`, or up to the last active dim."""
        if self.active_action_dims is not None:
            return self.active_action_dims
        return int(np.nonzero(self.action_mask(length, action_dim).max(axis=0))[0].max()) + 1

    def action_labels(self, count: int) -> list:
        """[(name, unit), ...] of the first `count` action dims: the registered ones, ("dim i", None) past them and
        None where no unit is registered."""
        names, units = self.action_names or (), self.action_units or ()
        return [
            (names[i] if i < len(names) else f"dim {i}", units[i] if i < len(units) else None)
            for i in range(count)
        ]

    def normalize_actions(self, actions: np.ndarray, length: int) -> np.ndarray:
        """(..., n, A) robot actions, the first n <= T steps of a chunk -> normalized; inactive dims become 0."""
        mean, std = self.action_statistics(length)
        steps = actions.shape[-2]
        mean, std = mean[:steps], std[:steps]
        active = std > ACTIVE_STD_THRESHOLD
        return np.where(active, (actions - mean) / np.where(active, std, 1.0), 0.0).astype(np.float32)

    def denormalize_actions(self, actions: np.ndarray, length: int) -> np.ndarray:
        """(..., T, A) normalized -> robot units: actions·std + mean."""
        mean, std = self.action_statistics(length)
        return (actions * std + mean).astype(np.float32)

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        """(state_dim,) zero-padded raw state -> what the model reads: raw (published), or normalized where this
        robot type has state statistics (inactive dims become 0)."""
        if self.state_std is None:
            return state.astype(np.float32)
        active = self.state_std > ACTIVE_STD_THRESHOLD
        return np.where(
            active, (state - self.state_mean) / np.where(active, self.state_std, 1.0), 0.0
        ).astype(np.float32)

    # ---- (de)serialization ----

    def to_dict(self) -> dict:
        """The JSON form saved in processor_config.json (fields that are set)."""
        output = {}
        for key in self.FIELDS:
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif key == "views":
                value = [list(view) for view in value]
            elif isinstance(value, tuple):
                value = list(value)
            output[key] = value
        return output

    def __eq__(self, other) -> bool:
        return isinstance(other, RobotSpec) and self.name == other.name and self.to_dict() == other.to_dict()

    __hash__ = None


def _label_tuple(name: str, key: str, value, width: int) -> Optional[tuple]:
    """`action_names` / `action_units` / `state_names`: a list of at most `width` strings (names non-empty), as a
    tuple."""
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or not 1 <= len(value) <= width
        or not all(isinstance(v, str) and (v or key == "action_units") for v in value)
    ):
        raise ValueError(
            f"robot type {name!r}: `{key}` must be a list of 1 to {width} strings"
            f"{' (non-empty)' if key != 'action_units' else ''}, got {value!r}."
        )
    return tuple(value)


def _statistic_array(name: str, key: str, value, width: int) -> Optional[np.ndarray]:
    """A statistic as float32, vectors of at most `width` values padded with 0 (mean 0 / std 0 = inactive);
    action statistics may also be (T, width)."""
    if value is None:
        return None
    try:
        array = np.asarray(_as_list(value), dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"robot type {name!r}: `{key}` must be a numeric array: {error}") from None
    if key.startswith("action") and array.ndim == 2:
        if array.shape[0] < 1 or array.shape[1] != width:
            raise ValueError(
                f"robot type {name!r}: `{key}` must be (T, {width}) with T >= 1 or a vector of at most {width} "
                f"values, got shape {array.shape}."
            )
    elif array.ndim != 1 or not 1 <= array.shape[0] <= width:
        raise ValueError(
            f"robot type {name!r}: `{key}` must be a vector of at most {width} values"
            f"{' or (T, ' + str(width) + ')' if key.startswith('action') else ''}, got shape {array.shape}."
        )
    if not np.isfinite(array).all():
        raise ValueError(f"robot type {name!r}: `{key}` contains NaN or infinite values.")
    if key.endswith("std") and (array < 0).any():
        raise ValueError(f"robot type {name!r}: `{key}` has negative values.")
    if array.ndim == 1:
        array = np.pad(array, (0, width - array.shape[0]))
    return array.astype(np.float32)


# transformers 4.x / 5.x differences in how a processor and its parts load.
# 4.x finds a processor's parts through `attributes` and `<part>_class`; 5.x through `__init__`'s signature, and
# warns on every load that `image_processor_class` is deprecated.
_NAMES_SUB_PROCESSOR_CLASSES = hasattr(ProcessorMixin, "attributes")
# 4.x warns that `use_fast` is unset when the saved image processor is the slow one (ours, as published: the fast
# one needs torchvision); 5.x deprecates `use_fast`.
_IMAGE_PROCESSOR_LOAD_KWARGS = {"use_fast": False} if _NAMES_SUB_PROCESSOR_CLASSES else {}
# 4.57.3+ warns that any local tokenizer whose config.json is not from <= 4.57.2 or >= 5.0 may have Mistral's
# broken pre-tokenizer regex; Qwen's regex is right as it is, which `fix_mistral_regex=False` says.
_TOKENIZER_LOAD_KWARGS = (
    {"fix_mistral_regex": False} if hasattr(PreTrainedTokenizerBase, "_patch_mistral_regex") else {}
)


class XR0Processor(ProcessorMixin):
    r"""
    Args:
        image_processor: a Qwen2-VL/Qwen3-VL image processor (patch 16, merge 2, temporal patch 2, mean/std 0.5).
        tokenizer: the Qwen3-VL tokenizer.
        robot_types (`dict`, *optional*): registry `{robot_type: spec}`, each spec a `RobotSpec` or its dict form
            (`views` as `[view_key, title]` pairs in prompt order, `active_action_dims`, `chunk_length`,
            `action_mean`/`action_std` ((T, action_dim), which sets T, or a vector of at most action_dim values),
            optional `state_mean`/`state_std`, `action_names`/`action_units` of the leading action dims,
            `state_names` of the leading state dims). The
            published robot types are always known with their view layouts, chunk lengths and action names.
        action_config (`dict`, *optional*): the published `{robot_type: {"mean", "std"}}` statistics, merged
            into the registry.
        action_length (`int`): the chunk length of robot types that state neither `chunk_length` nor (T, A)
            statistics. action_dim, state_dim (`int`): the padded widths of the model.
    """

    # transformers 4.x only: 5.x reads the parts from `__init__` and calls these deprecated.
    if _NAMES_SUB_PROCESSOR_CLASSES:
        attributes = ["image_processor", "tokenizer"]
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        robot_types: Optional[dict] = None,
        action_config: Optional[dict] = None,
        action_length: int = 30,
        action_dim: int = 32,
        state_dim: int = 32,
        chat_template: Optional[str] = None,
        **kwargs,
    ):
        self.action_length = action_length
        self.action_dim = action_dim
        self.state_dim = state_dim
        self.robot_types = {
            name: RobotSpec.create(name, action_dim, state_dim, **fields)
            for name, fields in PUBLISHED_ROBOT_TYPES.items()
        }
        for name, spec in (robot_types or {}).items():
            if isinstance(spec, RobotSpec):
                spec = spec.to_dict()
            if not isinstance(spec, dict):
                raise ValueError(
                    f"robot_types[{name!r}] must be a RobotSpec or a dict, got {type(spec).__name__}."
                )
            unknown = sorted(set(spec) - set(RobotSpec.FIELDS))
            if unknown:
                raise ValueError(
                    f"robot_types[{name!r}] has unknown keys {unknown}; keys are among {list(RobotSpec.FIELDS)}."
                )
            self.register_robot_type(name, **spec)
        # The published statistics are folded into the registry, which is what gets saved.
        self.action_config = None
        self.merge_action_config(action_config or {})
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    # ---- robot registry --------------------------------------------------------------------------------------

    def register_robot_type(
        self,
        name: str,
        views: Optional[list] = None,
        active_action_dims: Optional[int] = None,
        chunk_length: Optional[int] = None,
        action_mean=None,
        action_std=None,
        state_mean=None,
        state_std=None,
        action_names: Optional[list] = None,
        action_units: Optional[list] = None,
        state_names: Optional[list] = None,
    ) -> RobotSpec:
        """Add or update a robot type (see `RobotSpec`). Fields left as None keep their current value."""
        changes = dict(
            views=views,
            active_action_dims=active_action_dims,
            chunk_length=chunk_length,
            action_mean=action_mean,
            action_std=action_std,
            state_mean=state_mean,
            state_std=state_std,
            action_names=action_names,
            action_units=action_units,
            state_names=state_names,
        )
        current = self.robot_types.get(name)
        if current is None:
            spec = RobotSpec.create(
                name, self.action_dim, self.state_dim, **{k: v for k, v in changes.items() if v is not None}
            )
        else:
            spec = current.updated(self.action_dim, self.state_dim, **changes)
        self.robot_types[name] = spec
        return spec

    def merge_action_config(self, action_config: dict) -> None:
        """Fold the published `action_config` ({robot_type: {"mean": (T, 32), "std": (T, 32)}}) into the registry."""
        for name, stats in action_config.items():
            if not isinstance(stats, dict) or "mean" not in stats or "std" not in stats:
                raise ValueError(f"action_config[{name!r}] must be a dict with `mean` and `std`.")
            self.register_robot_type(name, action_mean=stats["mean"], action_std=stats["std"])

    def robot_spec(self, robot_type: str) -> RobotSpec:
        if robot_type not in self.robot_types:
            raise ValueError(
                f"Unknown robot_type {robot_type!r}; known robot types: {sorted(self.robot_types)}."
            )
        return self.robot_types[robot_type]

    def chunk_length(self, robot_type: str) -> int:
        """T, the number of actions in one chunk of this robot type: from its (T, A) statistics, else its
        `chunk_length`, else the processor's `action_length`."""
        return self.robot_spec(robot_type).length(self.action_length)

    def get_action_mask(self, robot_type: str) -> torch.Tensor:
        """(T, action_dim) float32, T = the robot type's chunk length: 1 where the action std exceeds 1e-5 (the
        published rule); without statistics, 1 on the first `active_action_dims` dims."""
        return torch.from_numpy(
            self.robot_spec(robot_type).action_mask(self.chunk_length(robot_type), self.action_dim)
        )

    def decode_action(self, actions, robot_type: str, active_only: bool = True):
        """Normalized model actions (B, T, action_dim) or (T, action_dim) -> robot actions = actions·std + mean.

        With `active_only`, only the robot's first `active_action_dims` columns are returned. Returns the input's
        type (torch tensor or numpy array), float32.
        """
        is_tensor = isinstance(actions, torch.Tensor)
        array = actions.detach().float().cpu().numpy() if is_tensor else np.asarray(actions, dtype=np.float32)
        length = self.chunk_length(robot_type)
        if array.ndim not in (2, 3) or array.shape[-2:] != (length, self.action_dim):
            raise ValueError(
                f"`actions` must be (B, T, A) or (T, A) with T={length} (robot type {robot_type!r}), "
                f"A={self.action_dim}, got {array.shape}."
            )
        decoded = self.robot_spec(robot_type).denormalize_actions(array, length)
        if active_only:
            decoded = decoded[..., : self.active_action_dims(robot_type)]
        return torch.from_numpy(np.ascontiguousarray(decoded)) if is_tensor else decoded

    def normalize_action(self, actions, robot_type: str):
        """Robot actions (B, n, D) or (n, D), n <= T steps from the chunk's start, D <= action_dim -> normalized
        (…, n, action_dim): training targets (n = T) or a committed action prefix (n = p). Dims with std <= 1e-5
        become 0."""
        is_tensor = isinstance(actions, torch.Tensor)
        array = actions.detach().float().cpu().numpy() if is_tensor else np.asarray(actions, dtype=np.float32)
        length = self.chunk_length(robot_type)
        if (
            array.ndim not in (2, 3)
            or not 1 <= array.shape[-2] <= length
            or array.shape[-1] > self.action_dim
        ):
            raise ValueError(
                f"`actions` must be (B, n, D) or (n, D) with n <= T={length} (robot type {robot_type!r}), "
                f"D <= {self.action_dim}, got {array.shape}."
            )
        if not np.isfinite(array).all():
            raise ValueError("`actions` contains NaN or infinite values.")
        padding = [(0, 0)] * (array.ndim - 1) + [(0, self.action_dim - array.shape[-1])]
        normalized = self.robot_spec(robot_type).normalize_actions(np.pad(array, padding), length)
        return torch.from_numpy(normalized) if is_tensor else normalized

    def active_action_dims(self, robot_type: str) -> int:
        """How many leading action dims the robot uses: `active_action_dims`, or the last active dim of the mask."""
        return self.robot_spec(robot_type).active_dims(self.chunk_length(robot_type), self.action_dim)

    # ---- calls -----------------------------------------------------------------------------------------------

    def __call__(
        self,
        images=None,
        text=None,
        videos=None,
        *,
        instruction=None,
        state=None,
        robot_type=None,
        return_tensors: Optional[str] = "pt",
        **kwargs,
    ) -> BatchFeature:
        """With `robot_type`: observations -> model inputs (see `prepare_observations`). Otherwise the published
        low-level call: `text` prompts holding one `<|image_pad|>` per image in `images`."""
        if robot_type is not None or instruction is not None or state is not None:
            if text is not None or videos is not None:
                raise ValueError(
                    "Pass either `text` (low-level call) or `instruction`/`state`/`robot_type`, not both."
                )
            return self.prepare_observations(images, instruction, state, robot_type)
        if videos is not None:
            raise ValueError("XR0 takes camera images, not videos.")
        return self.encode_prompts(text, images, return_tensors=return_tensors, **kwargs)

    def encode_prompts(
        self, text, images=None, return_tensors="pt", padding=True, padding_side=None, **tokenizer_kwargs
    ) -> BatchFeature:
        """Prompts with `<|image_pad|>` placeholders + their images (in order) -> input_ids, attention_mask,
        pixel_values, image_grid_thw, mm_token_type_ids."""
        if isinstance(text, str):
            text = [text]
        if not isinstance(text, (list, tuple)) or not text or not all(isinstance(t, str) for t in text):
            raise ValueError(f"`text` must be a str or a non-empty list of str, got {type(text).__name__}.")
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        images = list(images or [])
        num_placeholders = sum(t.count(IMAGE_PAD) for t in text)
        if num_placeholders != len(images):
            raise ValueError(
                f"The prompts hold {num_placeholders} `{IMAGE_PAD}` placeholders but {len(images)} images were given: "
                "each image needs exactly one placeholder."
            )
        if any(VIDEO_PAD in t for t in text):
            raise ValueError(f"`{VIDEO_PAD}` placeholders are not supported: XR0 takes camera images.")

        image_inputs = {}
        if images:
            arrays = [_to_hwc_uint8(image, f"images[{i}]") for i, image in enumerate(images)]
            # Our arrays are (H, W, 3): say so, or a 3-pixel-high image would be read as channels-first.
            image_inputs = dict(
                self.image_processor(images=arrays, return_tensors="pt", input_data_format="channels_last")
            )
            merge = self.image_processor.merge_size**2
            tokens_per_image = iter((image_inputs["image_grid_thw"].prod(dim=-1) // merge).tolist())
            expanded = []
            for prompt in text:
                pieces = prompt.split(IMAGE_PAD)
                prompt = pieces[0] + "".join(
                    IMAGE_PAD * next(tokens_per_image) + piece for piece in pieces[1:]
                )
                expanded.append(prompt)
            text = expanded

        if padding_side is not None:
            tokenizer_kwargs["padding_side"] = padding_side
        encoding = self.tokenizer(text, padding=padding, return_tensors="pt", **tokenizer_kwargs)
        input_ids = encoding["input_ids"]
        token_types = torch.zeros_like(input_ids, dtype=torch.int32)
        token_types[input_ids == self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)] = 1
        data = {
            "input_ids": input_ids,
            "attention_mask": encoding["attention_mask"],
            **image_inputs,
            "mm_token_type_ids": token_types,
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    def encode_conversations(self, images: list, prompts: list, answers: list) -> BatchFeature:
        """Vision-language samples for co-training -> `encode_prompts` outputs plus `labels` (B, L): the answer
        tokens (and the closing `<|im_end|>` and newline) as targets, -100 elsewhere. `images[i]` is the list of
        images of sample i; they precede its prompt in the user turn. Padded on the right."""
        if not (len(images) == len(prompts) == len(answers)) or not prompts:
            raise ValueError("`images`, `prompts` and `answers` must be non-empty lists of the same length.")
        texts, flat_images = [], []
        for i, (sample_images, prompt, answer) in enumerate(zip(images, prompts, answers, strict=True)):
            if not isinstance(prompt, str) or not isinstance(answer, str) or not answer:
                raise ValueError(f"conversation {i}: `prompt` must be a str and `answer` a non-empty str.")
            texts.append(
                "<|im_start|>user\n"
                + IMAGE_PLACEHOLDER * len(sample_images)
                + prompt
                + "<|im_end|>\n"
                + ASSISTANT_START
                + answer
                + "<|im_end|>\n"
            )
            flat_images += list(sample_images)
        inputs = self.encode_prompts(texts, flat_images or None, padding_side="right")
        marker = self.tokenizer(ASSISTANT_START, add_special_tokens=False)["input_ids"]
        labels = torch.full_like(inputs["input_ids"], -100)
        for row, ids in enumerate(inputs["input_ids"].tolist()):
            starts = [k for k in range(len(ids) - len(marker) + 1) if ids[k : k + len(marker)] == marker]
            end = int(inputs["attention_mask"][row].sum())
            labels[row, starts[-1] + len(marker) : end] = inputs["input_ids"][
                row, starts[-1] + len(marker) : end
            ]
        inputs["labels"] = labels
        return inputs

    def prepare_observations(self, images, instruction, state, robot_type) -> BatchFeature:
        """
        One observation or a list of them -> everything `XR0ForActionGeneration.forward` needs.

        Args:
            images: `{view_key: image}` (or a list of such dicts), the robot type's views; an image is a PIL image,
                a uint8 (H, W, 3) array or a uint8 (3, H, W) tensor.
            instruction: the task (str, or a list of str).
            state: the raw robot state, (D,) or (B, D) with D <= state_dim (array, tensor or list).
            robot_type: a registered robot type (str, or a list of str, one per observation).
        Returns:
            `BatchFeature` with input_ids/attention_mask (B, L) padded on the left, pixel_values, image_grid_thw,
            mm_token_type_ids, `state` (B, 1, state_dim) float32 and `action_mask` (B, T, action_dim) float32,
            T = the robot type's chunk length (one T per batch).
        """
        batched = isinstance(images, (list, tuple))
        image_rows = list(images) if batched else [images]
        batch_size = len(image_rows)
        if batch_size == 0:
            raise ValueError("`images` is an empty list: give one {view_key: image} dict per observation.")
        for i, views in enumerate(image_rows):
            if not isinstance(views, dict):
                where = f"images[{i}]" if batched else "images"
                raise ValueError(
                    f"`{where}` must be a dict {{view_key: image}}; `images` is one such dict per observation, or a "
                    f"list of them for a batch. Got {type(views).__name__}."
                )
        instructions = _per_row("instruction", instruction, batch_size, batched, str)
        robot_types = _per_row("robot_type", robot_type, batch_size, batched, str)
        states = self._state_rows(state, batch_size, batched)

        prompts, ordered_images, masks, state_rows = [], [], [], []
        for i, (views, task, robot, raw_state) in enumerate(
            zip(image_rows, instructions, robot_types, states, strict=True)
        ):
            spec = self.robot_spec(robot)
            if spec.views is None:
                raise ValueError(
                    f"robot_type {robot!r} has no camera `views` registered (register_robot_type)."
                )
            keys = [key for key, _ in spec.views]
            where = f"images[{i}]" if batched else "images"
            if sorted(views) != sorted(keys):
                raise ValueError(
                    f"`{where}` has views {sorted(views)} but robot_type {robot!r} takes {len(keys)} camera images "
                    f"with keys {keys}."
                )
            check_instruction(task, i, self.tokenizer)
            prompts.append(format_prompt(task, [title for _, title in spec.views]))
            ordered_images += [_to_hwc_uint8(views[key], f"{where}[{key!r}]") for key in keys]
            masks.append(self.get_action_mask(robot))
            state_rows.append(self._prepare_state(raw_state, robot, i))

        lengths = {robot: self.chunk_length(robot) for robot in robot_types}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"`robot_type`: one batch must share one chunk length, got {lengths}; batch each robot type apart."
            )
        inputs = self.encode_prompts(prompts, ordered_images, padding_side="left")
        inputs["state"] = torch.from_numpy(np.stack(state_rows))[:, None, :]  # (B, 1, state_dim)
        inputs["action_mask"] = torch.stack(masks)  # (B, T, action_dim)
        return inputs

    def _state_rows(self, state, batch_size: int, batched: bool) -> list:
        if state is None:
            raise ValueError(
                f"`state` is required: the raw robot state, (D,) or (B, D) with D <= {self.state_dim}."
            )
        try:
            array = state.detach().cpu().numpy() if isinstance(state, torch.Tensor) else np.asarray(state)
        except ValueError:  # ragged nested lists
            raise ValueError("`state` must be a rectangular array of numbers: (D,) or (B, D).") from None
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise ValueError(f"`state` must hold real numbers, got dtype {array.dtype}.")
        if not batched and array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[0] != batch_size:
            raise ValueError(
                f"`state` must be (D,) for one observation or (B, D) for B={batch_size}, got shape {array.shape}."
            )
        if array.shape[1] == 0:
            raise ValueError("`state` is empty: give the robot's state values (nothing is assumed zero).")
        if array.shape[1] > self.state_dim:
            raise ValueError(
                f"`state` has {array.shape[1]} values, more than state_dim={self.state_dim}: nothing is truncated, "
                "reduce it to the robot's state layout."
            )
        return list(array.astype(np.float32))

    def _prepare_state(self, raw_state: np.ndarray, robot_type: str, index: int) -> np.ndarray:
        if not np.isfinite(raw_state).all():
            raise ValueError(f"`state` of observation {index} contains NaN or infinite values.")
        state = np.pad(raw_state, (0, self.state_dim - raw_state.shape[0]))
        return self.robot_spec(robot_type).normalize_state(state)

    # ---- saving / loading ------------------------------------------------------------------------------------

    def to_dict(self, *args, **kwargs) -> dict:
        robot_types, self.robot_types = self.robot_types, {}
        try:
            output = super().to_dict(*args, **kwargs)
        finally:
            self.robot_types = robot_types
        output["robot_types"] = {name: spec.to_dict() for name, spec in robot_types.items()}
        output.pop("action_config", None)  # folded into robot_types
        return output

    def save_pretrained(self, save_directory, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        _write_image_bounds(save_directory, self.image_processor)
        _write_special_tokens_for_both_lines(save_directory)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Loads our saved processors and the published layout, whose per-robot statistics sit in
        `preprocessor_config.json` under `action_config`."""
        # Our parts are stock transformers classes: a published directory's `auto_map` (pointing at the official
        # processor) must neither run nor prompt.
        kwargs["trust_remote_code"] = False
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        check_tokenizer(processor.tokenizer, pretrained_model_name_or_path)
        image_processor_dict = _saved_image_processor_dict(
            pretrained_model_name_or_path, kwargs.get("subfolder", "")
        )
        if image_processor_dict.get("action_config"):
            processor.merge_action_config(image_processor_dict["action_config"])
        set_image_bounds(
            processor.image_processor,
            image_processor_dict.get("min_pixels") or DEFAULT_MIN_PIXELS,
            image_processor_dict.get("max_pixels") or DEFAULT_MAX_PIXELS,
        )
        return processor

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """[image processor, tokenizer], loaded without the warnings each transformers line would print for an
        XR0 directory; the caller's keyword arguments win (both lines call this hook; 5.x passes
        `processor_dict`, unused here)."""
        image_processor = AutoImageProcessor.from_pretrained(
            pretrained_model_name_or_path, **{**_IMAGE_PROCESSOR_LOAD_KWARGS, **kwargs}
        )
        tokenizer = cls._load_tokenizer_from_pretrained("tokenizer", pretrained_model_name_or_path, **kwargs)
        return [image_processor, tokenizer]

    @classmethod
    def _load_tokenizer_from_pretrained(cls, sub_processor_type, pretrained_model_name_or_path, **kwargs):
        """The Qwen3-VL backbone's tokenizer (our one tokenizer attribute), loaded without a warning; 5.25+ calls
        this hook itself, older lines through `_get_arguments_from_pretrained`.

        Given the backbone's config, AutoTokenizer does not read config.json, whose class (ours or the official
        one) it cannot import without remote code: it would fall back to a bare PretrainedConfig and warn "a model
        of type `xr0` to instantiate a model of type ``"."""
        tokenizer = AutoTokenizer.from_pretrained(
            pretrained_model_name_or_path,
            **{"config": Qwen3VLConfig(), **_TOKENIZER_LOAD_KWARGS, **kwargs},
        )
        # Our load-time switches are not tokenizer settings: keep them out of what save_pretrained writes.
        for key in set(_TOKENIZER_LOAD_KWARGS) - set(kwargs):
            tokenizer.init_kwargs.pop(key, None)
        return tokenizer

    @property
    def model_input_names(self) -> list:
        return [
            "input_ids",
            "attention_mask",
            "pixel_values",
            "image_grid_thw",
            "mm_token_type_ids",
            "state",
            "action_mask",
        ]


# --------------------------------------------------------------------------------------------------------------
# transformers 4.57 / 5.x differences, in one place


def _saved_image_processor_dict(path, subfolder: str = "") -> dict:
    """The image processor's saved dict: 4.57 and the published repos write preprocessor_config.json, 5.x
    nests it in processor_config.json under `image_processor`."""
    merged = {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        file = cached_file(path, name, subfolder=subfolder, _raise_exceptions_for_missing_entries=False)
        if file:
            with open(file) as f:
                saved = json.load(f)
            merged.update(saved.get("image_processor", saved) if name.startswith("processor") else saved)
    return merged


def _write_special_tokens_for_both_lines(save_directory) -> None:
    """5.x writes `extra_special_tokens` as a list, which 4.57 cannot read (it expects a dict);
    `additional_special_tokens` means the same to both lines."""
    path = os.path.join(save_directory, "tokenizer_config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        tokenizer_config = json.load(f)
    if isinstance(tokenizer_config.get("extra_special_tokens"), list):
        tokenizer_config["additional_special_tokens"] = tokenizer_config.pop("extra_special_tokens")
        with open(path, "w") as f:
            json.dump(tokenizer_config, f, indent=2, ensure_ascii=False)


def set_image_bounds(image_processor, min_pixels: int, max_pixels: int) -> None:
    """Pixel bounds of the Qwen2-VL/Qwen3-VL resize (a view is resized to multiples of patch·merge within them);
    both transformers lines read `size`, older code paths `min_pixels`/`max_pixels`."""
    size_type = type(image_processor.size) if image_processor.size is not None else dict
    image_processor.size = size_type(shortest_edge=min_pixels, longest_edge=max_pixels)  # 5.x: a SizeDict
    if hasattr(image_processor, "min_pixels"):  # 4.57 keeps them as attributes too
        image_processor.min_pixels, image_processor.max_pixels = min_pixels, max_pixels


def _write_image_bounds(save_directory, image_processor) -> None:
    """State `min_pixels`/`max_pixels` in the saved image-processor dict (4.57 writes them, 5.x only `size`), so
    every transformers line resolves the same bounds from the directory (see `DEFAULT_MIN_PIXELS`)."""
    size = image_processor.size
    bounds = {"min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]}
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = os.path.join(save_directory, name)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            saved = json.load(f)
        target = saved.get("image_processor") if name == "processor_config.json" else saved
        if isinstance(target, dict):
            target.update(bounds)
            with open(path, "w") as f:
                json.dump(saved, f, indent=2, ensure_ascii=False)


MIN_IMAGE_SIDE = 32  # one merged patch (16 x 2): the Qwen3-VL resize refuses smaller sides
MAX_ASPECT_RATIO = 200
MAX_INSTRUCTION_CHARS = 2000


def check_instruction(instruction: str, index: int, tokenizer) -> None:
    """A task instruction is plain text: non-empty, bounded, and free of the tokenizer's special tokens (an
    "<|im_end|>" inside it would be read as a control token and end the user turn early)."""
    if not instruction.strip():
        raise ValueError(f"`instruction` of observation {index} is empty.")
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise ValueError(
            f"`instruction` of observation {index} has {len(instruction)} characters; at most {MAX_INSTRUCTION_CHARS}."
        )
    special = sorted(
        {token for token in [*tokenizer.all_special_tokens, *REQUIRED_SPECIAL_TOKENS] if token in instruction}
    )
    if special:
        raise ValueError(
            f"`instruction` of observation {index} contains the special token(s) {special}: remove them (they would "
            "be read as prompt structure, not text)."
        )


# The Qwen3-VL special tokens the prompt is built from, with their published ids.
REQUIRED_SPECIAL_TOKENS = {
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
}


def check_tokenizer(tokenizer, source) -> None:
    """Refuse, at load, a tokenizer that cannot build the XR0 prompt (a missing or foreign vocabulary would
    otherwise surface later as "0 image tokens")."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in REQUIRED_SPECIAL_TOKENS}
    wrong = {token: got for token, got in ids.items() if got != REQUIRED_SPECIAL_TOKENS[token]}
    if wrong:
        raise OSError(
            f"{source}: the tokenizer does not hold the Qwen3-VL vocabulary XR0 was trained with (special tokens "
            f"{wrong}, expected {REQUIRED_SPECIAL_TOKENS}); check tokenizer.json / vocab.json / merges.txt."
        )
    if len(tokenizer("Hello world")["input_ids"]) != 2:
        raise OSError(
            f"{source}: the tokenizer's regular vocabulary is missing or foreign ('Hello world' must be 2 tokens)."
        )


# --------------------------------------------------------------------------------------------------------------
# Input helpers


def _per_row(name: str, value, batch_size: int, batched: bool, kind: type) -> list:
    if isinstance(value, kind):
        return [value] * batch_size
    if (
        batched
        and isinstance(value, (list, tuple))
        and len(value) == batch_size
        and all(isinstance(v, kind) for v in value)
    ):
        return list(value)
    expected = f"a {kind.__name__}" + (f" or a list of {batch_size} {kind.__name__}" if batched else "")
    raise ValueError(f"`{name}` must be {expected}, got {value!r}.")


def _to_hwc_uint8(image, name: str) -> np.ndarray:
    """A camera image -> uint8 (H, W, 3). Accepted: PIL images; uint8 arrays/tensors; float arrays/tensors with
    values in [0, 1] (LeRobot's convention); (H, W, 3) or (3, H, W) (a (3, W, 3) array is read as (H, W, 3), a
    (3, H, 3) tensor as (3, H, W), each library's own convention)."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        is_tensor = isinstance(image, torch.Tensor)
        array = image.detach().cpu().numpy() if is_tensor else image
        if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
            raise ValueError(
                f"`{name}`: an image must be (H, W, 3) or (3, H, W), got shape {tuple(array.shape)}."
            )
        channels_first = array.shape[0] == 3 and (array.shape[-1] != 3 or is_tensor)
        if channels_first:
            array = np.moveaxis(array, 0, -1)
        if array.dtype == np.uint8:
            pass
        elif array.dtype.kind == "f":
            if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
                raise ValueError(f"`{name}`: a float image must hold finite values in [0, 1].")
            array = np.round(array * 255.0).astype(np.uint8)
        else:
            raise ValueError(f"`{name}`: an image must be uint8 or float in [0, 1], got dtype {array.dtype}.")
    else:
        raise ValueError(
            f"`{name}` must be a PIL image, or an (H, W, 3) / (3, H, W) array or tensor (uint8, or float in [0, 1]), "
            f"got {type(image).__name__}."
        )
    height, width = array.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE or max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ValueError(
            f"`{name}`: image of {height}x{width} pixels; sides must be at least {MIN_IMAGE_SIDE} and the aspect "
            f"ratio at most {MAX_ASPECT_RATIO} (the Qwen3-VL resize refuses others)."
        )
    return np.ascontiguousarray(array)


XR0Processor.register_for_auto_class()

__all__ = ["XR0Processor", "RobotSpec", "format_prompt"]
