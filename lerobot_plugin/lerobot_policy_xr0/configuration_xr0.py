"""XR0's LeRobot policy configuration, registered as `--policy.type=xr0`.

The XR0 checkpoint to start from (`checkpoint`: a directory in this repository's layout, converted or published)
brings the architecture, the processor and the robot types it knows. `robot_type` names the XR0 robot type the
LeRobot data is: a registered one keeps its camera views and chunk length, a new one is registered from the
dataset's features and statistics. The recipe knobs are `xr0-finetune`'s.
"""

from dataclasses import dataclass, field

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode
from lerobot.optim.optimizers import AdamWConfig
from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig
from lerobot.policies.rtc.configuration_rtc import RTCConfig
from lerobot.utils.constants import ACTION, OBS_STATE

from xr0.recipe_xr0 import RECIPES
from xr0.sampling_xr0 import PREFIX_MODES

# How a real-time chunk uses the previous chunk's leftover actions: the committed ones as a trained clean prefix,
# or guided inpainting toward the whole overlap (any checkpoint).
RTC_PREFIX_MODES = tuple(mode for mode in PREFIX_MODES if mode in ("trained", "guided"))


@PreTrainedConfig.register_subclass("xr0")
@dataclass
class XR0Config(PreTrainedConfig):
    # The XR0 checkpoint a new policy starts from. A saved policy keeps its own copy in `<policy dir>/xr0`.
    checkpoint: str | None = None
    # The XR0 robot type of the data; a new name is registered from the dataset's statistics.
    robot_type: str = "lerobot"
    # LeRobot image key -> XR0 view key, e.g. {"observation.images.top": "base"}. Empty: the robot type's views in
    # the order of the image features (a new robot type: one view per camera, named after it).
    camera_map: dict[str, str] = field(default_factory=dict)
    # T, actions per chunk (training target and prediction); None = the robot type's (or the checkpoint's).
    chunk_size: int | None = None
    # Actions `select_action` executes from each chunk before it predicts the next; None = chunk_size.
    n_action_steps: int | None = None
    num_inference_steps: int | None = None  # Euler steps; None = the checkpoint's (5)
    # Normalize the state with the dataset's statistics (XR0 feeds the state raw by default, as published).
    normalize_state: bool = False

    # xr0-finetune's recipe knobs (see `xr0-finetune --help`).
    recipe: str = "async"
    action_attention_window: int | None = None
    max_action_prefix_length: int | None = None
    frequency_loss_weight: float | None = None
    freeze_vlm: bool = False
    freeze_vision: bool = False
    freeze_embeddings: bool = True
    lora_rank: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0

    # Real-time chunking: `predict_action_chunk(batch, inference_delay=d, prev_chunk_left_over=...)`.
    rtc_config: RTCConfig | None = None
    rtc_prefix_mode: str = "trained"  # "trained" (Λ-prefix checkpoints) or "guided" (any checkpoint)

    # XR0 normalizes actions with mean/std; images and state reach the XR0 processor as they are.
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode.IDENTITY,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )

    # The report's post-training optimizer: AdamW 1e-4, betas (0.9, 0.95), weight decay 0.1, clip 1.0, warmup then
    # cosine.
    optimizer_lr: float = 1e-4
    optimizer_betas: tuple[float, float] = (0.9, 0.95)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 0.1
    optimizer_grad_clip_norm: float = 1.0
    scheduler_warmup_steps: int = 2_000
    scheduler_decay_steps: int = 30_000
    scheduler_decay_lr: float = 1e-5

    def __post_init__(self):
        super().__post_init__()
        if self.recipe not in RECIPES:
            raise ValueError(f"policy.recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}.")
        if not isinstance(self.robot_type, str) or not self.robot_type:
            raise ValueError(f"policy.robot_type must be a non-empty str, got {self.robot_type!r}.")
        if not isinstance(self.camera_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in self.camera_map.items()
        ):
            raise ValueError(
                "policy.camera_map must map LeRobot image keys to XR0 view keys (str -> str), got "
                f"{self.camera_map!r}."
            )
        if len(set(self.camera_map.values())) != len(self.camera_map):
            raise ValueError(f"policy.camera_map maps two cameras onto one view: {self.camera_map!r}.")
        for name in ("chunk_size", "n_action_steps", "num_inference_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"policy.{name} must be an int >= 1 or None, got {value!r}.")
        if (
            self.chunk_size is not None
            and self.n_action_steps is not None
            and self.n_action_steps > self.chunk_size
        ):
            raise ValueError(
                f"policy.n_action_steps ({self.n_action_steps}) cannot exceed policy.chunk_size ({self.chunk_size})."
            )
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(
                f"policy.lora_rank must be an int >= 0 (0 = full fine-tuning), got {self.lora_rank!r}."
            )
        if self.rtc_prefix_mode not in RTC_PREFIX_MODES:
            raise ValueError(
                f"policy.rtc_prefix_mode must be one of {RTC_PREFIX_MODES}, got {self.rtc_prefix_mode!r}."
            )
        if self.chunk_size is None and self.checkpoint is not None:
            self.chunk_size = checkpoint_chunk_length(self.checkpoint, self.robot_type)

    # ---- what LeRobot asks of a policy config ----

    @property
    def observation_delta_indices(self) -> None:
        return None  # one observation per step

    @property
    def action_delta_indices(self) -> list:
        if self.chunk_size is None:
            raise ValueError(
                "policy.chunk_size is unknown: set it, or set policy.checkpoint to read the robot type's."
            )
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    @property
    def executed_steps(self) -> int:
        return self.n_action_steps or self.chunk_size

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.optimizer_lr,
            betas=self.optimizer_betas,
            eps=self.optimizer_eps,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            peak_lr=self.optimizer_lr,
            decay_lr=self.scheduler_decay_lr,
            num_warmup_steps=self.scheduler_warmup_steps,
            num_decay_steps=self.scheduler_decay_steps,
        )

    def validate_features(self) -> None:
        """The features XR0 reads: at least one camera, `observation.state` and `action`, each named when missing."""
        if not self.image_features:
            raise ValueError(
                "policy.input_features has no VISUAL feature: XR0 needs at least one camera image "
                f"(observation.images.<camera>); got {sorted(self.input_features or {})}."
            )
        if self.robot_state_feature is None:
            raise ValueError(
                f"policy.input_features needs a STATE feature `{OBS_STATE}`; got {sorted(self.input_features or {})}."
            )
        if self.action_feature is None:
            raise ValueError(f"policy.output_features needs an ACTION feature `{ACTION}`.")
        unknown = sorted(set(self.camera_map) - set(self.image_features))
        if unknown:
            raise ValueError(
                f"policy.camera_map names cameras {unknown} that are not image features "
                f"{sorted(self.image_features)}."
            )
        for key, feature in {**self.input_features, **self.output_features}.items():
            if feature.type in (FeatureType.STATE, FeatureType.ACTION) and len(feature.shape) != 1:
                raise ValueError(f"feature {key!r} must be a vector (D,), got shape {tuple(feature.shape)}.")


def checkpoint_chunk_length(checkpoint: str, robot_type: str) -> int:
    """T of `robot_type` in the checkpoint's processor, or the checkpoint's `action_length` for a new robot type."""
    from .processor_xr0 import load_xr0_processor

    processor = load_xr0_processor(checkpoint)
    if robot_type in processor.robot_types:
        return processor.chunk_length(robot_type)
    return processor.action_length
