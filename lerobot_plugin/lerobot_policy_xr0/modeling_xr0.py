"""XR0 as a LeRobot policy: `XR0ForActionGeneration` and `XR0Processor` behind LeRobot's policy interface.

The math is XR0's own (one sampler, one loss); this class only maps LeRobot's batches onto it:

    batch["observation.images.<camera>"]  (B, 3, H, W) float in [0, 1]  -> the robot type's views (uint8)
    batch["observation.state"]            (B, D_s)                      -> the raw state, zero-padded by XR0
    batch["task"]                         list of B str                 -> the instruction
    batch["action"]                       (B, T, D_a) normalized        -> the flow-matching target (training)
    batch["action_is_pad"]                (B, T) bool                   -> steps past the episode's end

A saved policy directory holds LeRobot's `config.json` and, in `xr0/`, a complete XR0 checkpoint (config, remote
code, processor with the robot type, weights): `AutoModel.from_pretrained(<dir>/xr0, trust_remote_code=True)`
loads what LeRobot trained, and `--policy.checkpoint=<any XR0 checkpoint>` starts a policy from one.
"""

import copy
import logging
from collections import deque
from dataclasses import fields
from pathlib import Path

import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.policies.rtc.configuration_rtc import RTCConfig
from lerobot.utils.constants import ACTION, OBS_STATE

from xr0.modeling_xr0 import PrefixGuidance, XR0ForActionGeneration
from xr0.training.finetune import ModelArguments, add_lora, apply_recipe, freeze

from .configuration_xr0 import XR0Config
from .processor_xr0 import load_xr0_processor, robot_statistics

logger = logging.getLogger(__name__)

XR0_SUBFOLDER = "xr0"  # where a saved policy keeps its XR0 checkpoint
# `predict_action_chunk`'s keyword arguments: XR0's noise, and real-time chunking's as LeRobot passes them.
PREDICT_KWARGS = ("noise", "generator", "inference_delay", "prev_chunk_left_over", "execution_horizon")


class XR0Policy(PreTrainedPolicy):
    config_class = XR0Config
    name = "xr0"

    def __init__(self, config: XR0Config, dataset_stats: dict | None = None, **kwargs):
        super().__init__(config)
        config.validate_features()
        if config.checkpoint is None:
            raise ValueError(
                "policy.checkpoint is required: the XR0 checkpoint directory to start from (this repository's "
                "fixtures/tiny-xr0, a converted variant, a fine-tuned or a published directory)."
            )
        # fp32 master weights, as xr0-finetune loads them; `use_amp` is autocast on top.
        model = XR0ForActionGeneration.from_pretrained(config.checkpoint, dtype=torch.float32)
        self.processor = load_xr0_processor(config.checkpoint)
        self.camera_map = self._register_robot_type(dataset_stats)
        self.action_dim = config.action_feature.shape[0]
        self.state_dim = config.robot_state_feature.shape[0]
        for name, width, limit in (
            (ACTION, self.action_dim, model.config.action_dim),
            (OBS_STATE, self.state_dim, model.config.state_dim),
        ):
            if width > limit:
                raise ValueError(
                    f"feature {name!r} is {width} wide; this XR0 checkpoint takes at most {limit}."
                )

        recipe = self._recipe_arguments()
        apply_recipe(model, recipe)
        freeze(model, recipe)
        self.model = add_lora(model, recipe) if config.lora_rank > 0 else model
        self.reset()

    # ---- set-up ----

    def _recipe_arguments(self) -> ModelArguments:
        """xr0-finetune's arguments from this config: one implementation of recipe, freezing and LoRA."""
        names = {f.name for f in fields(ModelArguments)}
        values = {name: getattr(self.config, name) for name in names if hasattr(self.config, name)}
        return ModelArguments(**{**values, "model": self.config.checkpoint})

    def _register_robot_type(self, dataset_stats: dict | None) -> dict:
        """Registers (a new) or updates (a known) robot type from the dataset's features and statistics and returns
        {LeRobot image key: XR0 view key}. Without dataset statistics the robot type must be registered already."""
        config, processor = self.config, self.processor
        cameras = list(config.image_features)
        known = processor.robot_types.get(config.robot_type)
        if known is None and dataset_stats is None:
            raise ValueError(
                f"policy.robot_type {config.robot_type!r} is not registered in {config.checkpoint} (known: "
                f"{sorted(processor.robot_types)}): train on a dataset, whose statistics register it."
            )
        views = [list(view) for view in known.views] if known is not None and known.views else None
        camera_map = dict(config.camera_map)
        if not camera_map:
            if views is not None:
                if len(views) != len(cameras):
                    raise ValueError(
                        f"robot type {config.robot_type!r} takes {len(views)} camera views "
                        f"{[key for key, _ in views]}, the data has {len(cameras)} images {cameras}: set "
                        "policy.camera_map."
                    )
                camera_map = {camera: key for camera, (key, _) in zip(cameras, views, strict=True)}
            else:
                camera_map = {camera: camera.rsplit(".", 1)[-1] for camera in cameras}
        if views is None:
            views = [[key, key.replace("_", " ").title().replace(" ", "-")] for key in camera_map.values()]
        if sorted(camera_map.values()) != sorted(key for key, _ in views):
            raise ValueError(
                f"policy.camera_map maps onto views {sorted(camera_map.values())}; robot type "
                f"{config.robot_type!r} takes {[key for key, _ in views]}."
            )
        if dataset_stats is not None:
            stats = robot_statistics(config, dataset_stats)
            state = stats.get(OBS_STATE) if config.normalize_state else None
            if config.normalize_state and state is None:
                raise ValueError(
                    "policy.normalize_state needs dataset_stats['observation.state'] (mean, std)."
                )
            processor.register_robot_type(
                config.robot_type,
                views=views,
                active_action_dims=config.action_feature.shape[0],
                chunk_length=config.chunk_size,
                action_mean=stats[ACTION]["mean"].numpy(),
                action_std=stats[ACTION]["std"].numpy(),
                **({"state_mean": state["mean"].numpy(), "state_std": state["std"].numpy()} if state else {}),
            )
        elif processor.chunk_length(config.robot_type) != config.chunk_size:
            raise ValueError(
                f"policy.chunk_size {config.chunk_size} differs from robot type {config.robot_type!r}'s "
                f"{processor.chunk_length(config.robot_type)}, and there are no dataset statistics to register it anew."
            )
        return camera_map

    @property
    def xr0_model(self) -> XR0ForActionGeneration:
        """The XR0 model under LoRA adapters, if any."""
        return self.model.get_base_model() if self.config.lora_rank > 0 else self.model

    def get_optim_params(self):
        return [p for p in self.parameters() if p.requires_grad]

    def reset(self):
        self._action_queue = deque([], maxlen=self.config.executed_steps)

    # ---- LeRobot batch -> XR0 inputs ----

    def _model_inputs(self, batch: dict) -> dict:
        """The XR0 processor's inputs for a LeRobot batch, on the model's device."""
        images = {}
        batch_size = None
        for camera, view in self.camera_map.items():
            if camera not in batch:
                raise ValueError(
                    f"the batch has no image {camera!r} (XR0 view {view!r}); it has {sorted(batch)}. Map the "
                    "cameras with policy.camera_map (or lerobot's --rename_map)."
                )
            image = batch[camera]
            if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
                raise ValueError(
                    f"batch[{camera!r}] must be a (B, 3, H, W) float tensor in [0, 1], got "
                    f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}."
                )
            if not torch.isfinite(image).all():
                raise ValueError(f"batch[{camera!r}] contains NaN or infinite values.")
            batch_size = image.shape[0] if batch_size is None else batch_size
            if image.shape[0] != batch_size:
                raise ValueError(
                    f"batch[{camera!r}] holds {image.shape[0]} images, the other cameras {batch_size}."
                )
            # (B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8: the camera's pixels as recorded.
            pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
            images[view] = pixels.cpu().numpy()
        state = batch.get(OBS_STATE)
        if (
            not isinstance(state, torch.Tensor)
            or state.ndim != 2
            or tuple(state.shape) != (batch_size, self.state_dim)
        ):
            raise ValueError(
                f"batch[{OBS_STATE!r}] must be a (B, D) = ({batch_size}, {self.state_dim}) tensor, got "
                f"{tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__}."
            )
        task = batch.get("task")
        if isinstance(task, str):
            task = [task] * batch_size
        if not isinstance(task, (list, tuple)) or len(task) != batch_size:
            raise ValueError(
                f"batch['task'] must hold one instruction (str) per sample, {batch_size} in all; got {task!r}."
            )
        inputs = self.processor(
            images=[{view: pixels[i] for view, pixels in images.items()} for i in range(batch_size)],
            instruction=list(task),
            state=state.detach().float().cpu(),
            robot_type=self.config.robot_type,
        )
        device = self.xr0_model.device
        return {key: value.to(device) for key, value in inputs.items()}

    def _padded_actions(self, actions: torch.Tensor, name: str) -> torch.Tensor:
        """(B, n, D_a) normalized -> (B, n, A) with zeros past the robot's dims (XR0's padding)."""
        if actions.ndim != 3 or actions.shape[-1] != self.action_dim:
            raise ValueError(f"`{name}` must be (B, n, {self.action_dim}), got {tuple(actions.shape)}.")
        width = self.xr0_model.config.action_dim
        return torch.nn.functional.pad(actions.float(), (0, width - self.action_dim)).to(
            self.xr0_model.device
        )

    # ---- training ----

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """The flow-matching loss of XR0's recipe, and its parts for LeRobot's log."""
        inputs = self._model_inputs(batch)
        actions = batch.get(ACTION)
        if (
            not isinstance(actions, torch.Tensor)
            or actions.ndim != 3
            or actions.shape[1] != self.config.chunk_size
        ):
            raise ValueError(
                f"batch['action'] must be (B, T, D) with T = policy.chunk_size = {self.config.chunk_size}, got "
                f"{tuple(actions.shape) if isinstance(actions, torch.Tensor) else type(actions).__name__}."
            )
        is_pad = batch.get("action_is_pad")
        if is_pad is None:
            is_pad = torch.zeros(actions.shape[:2], dtype=torch.bool)
        output = self.model(
            **inputs,
            actions=self._padded_actions(actions, "batch['action']"),
            action_is_pad=is_pad.to(self.xr0_model.device),
        )
        parts = {
            name: float(getattr(output, name))
            for name in ("flow_loss", "frequency_loss")
            if getattr(output, name) is not None
        }
        return output.loss, parts

    # ---- inference ----

    def supports_rtc(self) -> bool:
        """Real-time chunking: `predict_action_chunk` takes `inference_delay` and `prev_chunk_left_over`."""
        return True

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict, **kwargs) -> torch.Tensor:
        """(B, T, D_a) normalized actions (the post-processor unnormalizes them).

        Keyword arguments: `noise` (B, T, A) initial noise or `generator`; for real-time chunking
        `inference_delay` d and `prev_chunk_left_over` (B, n, D_a) or (n, D_a), the previous chunk's actions not yet
        executed when this one was asked for: "trained" mode commits their first d as XR0's clean prefix, "guided"
        mode guides the sampler toward them (d committed, the rest of the overlap with the schedule's weights). The
        overlap is the leftover's first `execution_horizon` actions (default: `rtc_config.execution_horizon`); an
        `rtc_config` with `enabled=False` ignores the leftover, as LeRobot's own policies do."""
        unexpected = set(kwargs) - set(PREDICT_KWARGS)
        if unexpected:
            raise TypeError(f"predict_action_chunk got unexpected arguments {sorted(unexpected)}.")
        self.eval()
        inputs = self._model_inputs(batch)
        prefix = self._real_time_prefix(
            kwargs.get("prev_chunk_left_over"),
            kwargs.get("inference_delay"),
            kwargs.get("execution_horizon"),
            inputs["state"].shape[0],
        )
        actions = self.xr0_model(
            **inputs,
            noise=kwargs.get("noise"),
            generator=kwargs.get("generator"),
            num_steps=self.config.num_inference_steps,
            **prefix,
        ).actions  # (B, T, A)
        return actions[..., : self.action_dim]

    def _real_time_prefix(self, left_over, inference_delay, execution_horizon, batch_size: int) -> dict:
        rtc = self.config.rtc_config
        if rtc is not None and not rtc.enabled:
            return {}
        if left_over is None:
            if inference_delay:
                raise ValueError("`inference_delay` needs `prev_chunk_left_over`, the actions it overlaps.")
            return {}
        if (
            inference_delay is None
            or isinstance(inference_delay, bool)
            or not isinstance(inference_delay, int)
        ):
            raise ValueError(f"`inference_delay` must be an int >= 0 with a prefix, got {inference_delay!r}.")
        if left_over.ndim == 2:
            left_over = left_over[None].expand(batch_size, -1, -1)
        left_over = self._padded_actions(left_over, "prev_chunk_left_over")
        if not torch.isfinite(left_over).all():
            raise ValueError("`prev_chunk_left_over` contains NaN or infinite values.")
        rtc = rtc or RTCConfig()
        if execution_horizon is None:
            execution_horizon = rtc.execution_horizon
        if (
            isinstance(execution_horizon, bool)
            or not isinstance(execution_horizon, int)
            or execution_horizon < 1
        ):
            raise ValueError(f"`execution_horizon` must be an int >= 1, got {execution_horizon!r}.")
        overlap = left_over[:, : min(execution_horizon, self.config.chunk_size)]
        delay = min(inference_delay, overlap.shape[1])
        if self.config.rtc_prefix_mode == "trained":
            return {"action_prefix": overlap[:, :delay], "prefix_mode": "trained"}
        guidance = PrefixGuidance(
            inference_delay=delay,
            mask_schedule=rtc.prefix_attention_schedule.value.lower(),
            max_weight=float(rtc.max_guidance_weight),
        )
        return {"action_prefix": overlap, "prefix_mode": "guided", "guidance": guidance}

    @torch.no_grad()
    def select_action(self, batch: dict, **kwargs) -> torch.Tensor:
        """(B, D_a) normalized: the next of the queued chunk's first `n_action_steps` actions."""
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch, **kwargs)[:, : self.config.executed_steps]
            self._action_queue.extend(chunk.transpose(0, 1))  # n_action_steps x (B, D_a)
        return self._action_queue.popleft()

    # ---- saving / loading ----

    def save_xr0_checkpoint(self, directory, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """A complete XR0 checkpoint of this policy (LoRA merged into a copy): config, remote code, processor with
        the robot type, weights. `state_dict`, keyed as `self.state_dict()` (e.g. the full one FSDP gathers on one
        rank, where the modules hold shards), is written instead of the modules' weights."""
        if state_dict is not None:
            model = self._model_from_state_dict(state_dict)
        elif self.config.lora_rank > 0:
            model = copy.deepcopy(self.model).merge_and_unload()
        else:
            model = self.xr0_model
        model.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    def _model_from_state_dict(self, state_dict: dict[str, torch.Tensor]) -> XR0ForActionGeneration:
        """An XR0 model that holds `state_dict`'s tensors (LoRA merged), built on the meta device and given the
        tensors: no module of this policy is read. Keys that are not exactly this policy's are a named error."""
        prefix = "model."
        weights = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
        foreign = sorted(key for key in state_dict if not key.startswith(prefix))
        lora = self.config.lora_rank > 0
        with torch.device("meta"):
            model = XR0ForActionGeneration(self.xr0_model.config)
            if lora:
                model = add_lora(model, self._recipe_arguments())
        if lora:  # merging adds the adapters to the base weights in place: not to the caller's tensors
            weights = {key: value.clone() for key, value in weights.items()}
        missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
        if foreign or missing or unexpected:
            unexpected = foreign + [prefix + key for key in unexpected]
            raise ValueError(
                f"the state dict to save is not this XR0 policy's (keys as policy.state_dict()): missing "
                f"{[prefix + key for key in missing[:5]]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
                f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})."
            )
        return model.merge_and_unload() if lora else model

    def _save_pretrained(
        self, save_directory: Path, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """LeRobot's `save_pretrained`: its `config.json` and, in `xr0/`, the XR0 checkpoint. lerobot 0.6 passes
        `state_dict` (None, or under FSDP the gathered full one), which is what gets written."""
        self.config._save_pretrained(save_directory)
        self.save_xr0_checkpoint(Path(save_directory) / XR0_SUBFOLDER, state_dict=state_dict)

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path, *, config: XR0Config | None = None, **kwargs):
        """A saved policy directory (its `xr0/` checkpoint holds the weights), in evaluation mode."""
        directory = Path(pretrained_name_or_path)
        if not (directory / XR0_SUBFOLDER / "config.json").is_file():
            raise FileNotFoundError(
                f"{directory} is not a saved XR0 policy (no {XR0_SUBFOLDER}/config.json); start a new policy from an "
                "XR0 checkpoint with --policy.type=xr0 --policy.checkpoint=DIR."
            )
        hub_options = {
            "force_download",
            "resume_download",
            "proxies",
            "token",
            "cache_dir",
            "local_files_only",
            "revision",
            "strict",
        }
        kwargs = {key: value for key, value in kwargs.items() if key not in hub_options}
        if config is None:
            config = PreTrainedConfig.from_pretrained(directory)  # the registry reads `type`
        if not isinstance(config, XR0Config):
            raise ValueError(f"{directory} holds a {type(config).__name__} policy, not an XR0 one.")
        config.checkpoint = str(directory / XR0_SUBFOLDER)
        # The recipe was applied when the policy was made; applying it again sets the same layout.
        policy = cls(config, **{key: value for key, value in kwargs.items() if key != "dataset_meta"})
        policy.to(config.device)
        policy.eval()
        return policy


__all__ = ["XR0Policy", "XR0Config"]
