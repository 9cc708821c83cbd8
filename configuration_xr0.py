"""Configuration of Xiaomi-Robotics-0 (XR0): a Qwen3-VL backbone plus a DiT action expert.

The schema is a superset of the published `MiBoTConfig`: `vlm_config`, `dit_config`, `action_length`,
`action_dim`, `state_dim` carry the same meaning, so a `config.json` written by the official code loads
here unchanged. The extra fields default to the published inference behaviour.
"""

import copy
from typing import Any, Optional, Union

from transformers import PretrainedConfig
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig

# Values of the public Qwen3-VL-4B-Instruct config, written out so the default config is the real model.
QWEN3_VL_4B_TEXT_CONFIG = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144,
    "rope_theta": 5000000,
    "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
    "use_cache": True,
}
QWEN3_VL_4B_VISION_CONFIG = {
    "depth": 24,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_heads": 16,
    "out_hidden_size": 2560,
    "in_channels": 3,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [5, 11, 17],
    "hidden_act": "gelu_pytorch_tanh",
    "initializer_range": 0.02,
}
QWEN3_VL_4B_CONFIG = {
    "model_type": "qwen3_vl",
    "text_config": QWEN3_VL_4B_TEXT_CONFIG,
    "vision_config": QWEN3_VL_4B_VISION_CONFIG,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": True,
}

# What the official code writes into config.json.
OFFICIAL_MODEL_TYPE = "mibot"


# --------------------------------------------------------------------------------------------------------------
# transformers 4.57 / 5.x differences and the official file's bookkeeping, in one place

# What a saved PretrainedConfig carries besides its own fields: transformers 4.57's generation and bookkeeping
# defaults (the official code saves on 4.57.1) and the identity keys of a saved sub-config.
_PRETRAINED_CONFIG_BOOKKEEPING_KEYS = frozenset(
    """_name_or_path add_cross_attention architectures bad_words_ids begin_suppress_tokens bos_token_id
    chunk_size_feed_forward cross_attention_hidden_size decoder_start_token_id diversity_penalty do_sample dtype
    early_stopping encoder_no_repeat_ngram_size eos_token_id exponential_decay_length_penalty finetuning_task
    forced_bos_token_id forced_eos_token_id id2label is_decoder is_encoder_decoder label2id length_penalty
    max_length min_length model_type no_repeat_ngram_size num_beam_groups num_beams num_return_sequences
    output_attentions output_hidden_states output_scores pad_token_id prefix problem_type pruned_heads
    remove_invalid_values repetition_penalty return_dict return_dict_in_generate sep_token_id suppress_tokens
    task_specific_params temperature tf_legacy_loss tie_encoder_decoder tie_word_embeddings tokenizer_class top_k
    top_p torchscript transformers_version typical_p use_bfloat16 torch_dtype _attn_implementation_autoset
    attn_implementation _commit_hash""".split()
)


def _config_bookkeeping_keys() -> frozenset:
    """Keys a saved PretrainedConfig writes that say nothing about the architecture, on 4.57 and on the
    installed transformers."""
    return _PRETRAINED_CONFIG_BOOKKEEPING_KEYS | frozenset(PretrainedConfig().to_dict())


def _rope_fields_for_both_lines(text_config: dict) -> dict:
    """Make a Qwen3-VL text config dict readable by transformers 4.57 (`rope_scaling` + `rope_theta`) and
    5.x (`rope_parameters`), whichever of the two forms it was written in."""
    text_config = dict(text_config)
    rope_parameters = text_config.get("rope_parameters")
    if isinstance(rope_parameters, dict):
        if text_config.get("rope_scaling") is None:
            text_config["rope_scaling"] = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
        if text_config.get("rope_theta") is None and "rope_theta" in rope_parameters:
            text_config["rope_theta"] = rope_parameters["rope_theta"]
    return text_config


def _vlm_config_dict(vlm_config: Union[None, dict, Qwen3VLConfig]) -> dict:
    if vlm_config is None:
        return copy.deepcopy(QWEN3_VL_4B_CONFIG)
    if isinstance(vlm_config, Qwen3VLConfig):
        vlm_config = vlm_config.to_dict()
    if not isinstance(vlm_config, dict):
        raise TypeError(f"`vlm_config` must be a dict or a Qwen3VLConfig, got {type(vlm_config).__name__}.")
    vlm_config = copy.deepcopy(vlm_config)
    text_config = _rope_fields_for_both_lines(vlm_config.get("text_config") or {})
    # 4.57 reads the tie flag from the text config, 5.x from the top level: keep both in agreement.
    tie = vlm_config.get("tie_word_embeddings", text_config.get("tie_word_embeddings", True))
    text_config["tie_word_embeddings"] = vlm_config["tie_word_embeddings"] = tie
    vlm_config["text_config"] = text_config
    vlm_config.pop("model_type", None)
    return vlm_config


class XR0DiTConfig(PretrainedConfig):
    r"""
    The DiT action expert of XR0. Its dict form is the published `dit_config` (`model_type: "dit"`).

    Args:
        hidden_size (`int`, defaults to 1024), num_hidden_layers (`int`, defaults to 16),
        head_dim (`int`, defaults to 128), num_key_value_heads (`int`, defaults to 8): the published keys.
            `head_dim` and `num_key_value_heads` must equal the VLM's, because every DiT layer attends to the KV
            cache of one of the VLM's last `num_hidden_layers` layers (checked by `XR0Config`).
        intermediate_size (`int`, *optional*): SwiGLU width, 4·hidden_size in the published architecture.
        rms_norm_eps (`float`, defaults to 1e-6): the published RMSNorm epsilon.
    """

    model_type = "dit"
    ARCHITECTURE_KEYS = (
        "hidden_size",
        "num_hidden_layers",
        "head_dim",
        "num_key_value_heads",
        "intermediate_size",
        "rms_norm_eps",
    )

    def __init__(
        self,
        hidden_size: int = 1024,
        num_hidden_layers: int = 16,
        head_dim: int = 128,
        num_key_value_heads: int = 8,
        intermediate_size: Optional[int] = None,
        rms_norm_eps: float = 1e-6,
        **kwargs,
    ):
        # The official DiTConfig is a PretrainedConfig too: its saved dict carries `model_type: "dit"` and the
        # bookkeeping PretrainedConfig writes. Those keys say nothing about the architecture; any other key is a
        # mistake worth naming.
        unknown = sorted(set(kwargs) - _config_bookkeeping_keys())
        if unknown:
            raise ValueError(
                f"`dit_config` has unknown keys {unknown}; expected keys are {sorted(self.ARCHITECTURE_KEYS)}."
            )
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.head_dim = head_dim
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.rms_norm_eps = rms_norm_eps
        super().__init__()
        for name in self.ARCHITECTURE_KEYS[:-1]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`dit_config.{name}` must be a positive int, got {value!r}.")
        if self.hidden_size % self.head_dim:
            raise ValueError(
                f"`dit_config.hidden_size` ({self.hidden_size}) must be a multiple of "
                f"`dit_config.head_dim` ({self.head_dim})."
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"The DiT's query heads ({self.num_attention_heads} = hidden_size / head_dim) must be a "
                f"multiple of `dit_config.num_key_value_heads` ({self.num_key_value_heads})."
            )

    @property
    def num_attention_heads(self) -> int:
        return self.hidden_size // self.head_dim

    def to_dict(self) -> dict:
        """The published dict form plus the two explicit architecture facts; no PretrainedConfig bookkeeping."""
        output = super().to_dict()
        keep = {"model_type", "transformers_version", *self.ARCHITECTURE_KEYS}
        return {key: value for key, value in output.items() if key in keep}

    def to_diff_dict(self) -> dict:
        return self.to_dict()


class XR0Config(PretrainedConfig):
    r"""
    Configuration of [`XR0ForActionGeneration`]. Defaults build the published 4.7B model.

    Args:
        vlm_config (`dict` or `Qwen3VLConfig`, *optional*):
            The Qwen3-VL backbone. Defaults to the Qwen3-VL-4B-Instruct values.
        dit_config (`dict` or `XR0DiTConfig`, *optional*):
            The action expert (see `XR0DiTConfig`); the published dict, as the official code saves it, is read
            unchanged.
        action_length (`int`, defaults to 30): the longest chunk of the pre-training robot types (1 s at 30 Hz),
            kept as published. The model acts with the chunk length of the `action_mask` it is given: each robot
            type has its own T (its statistics are (T, action_dim)): 10 for LIBERO and CALVIN, 4 for SimplerEnv.
        action_dim (`int`, defaults to 32): width of the (padded) action vector.
        state_dim (`int`, defaults to 32): width of the (padded) proprioceptive state.
        state_length (`int`, defaults to 1): number of state tokens the processor produces; the model takes S
            from the `state` it is given.
        num_inference_steps (`int`, defaults to 5): Euler steps of the flow integration.
        action_attention_window (`int`, *optional*):
            `None` (published inference): action tokens attend causally to all earlier action tokens. An int `w`:
            the Λ-shaped band of the released post-training, action token i sees action tokens i - w .. i (w + 1
            tokens, itself included; it always sees the VLM cache, the sink and the state).
        noisy_action_position_offset (`int`, defaults to 0):
            Added to the position ids of noisy (non-prefix) action tokens; 10 after asynchronous
            post-training, 0 for the published checkpoints.

        Training recipe (technical report and released post-training code; saved with the checkpoint so inference
        knows how it was post-trained):
        time_sampling_alpha (`float`, defaults to 1.5), time_max (`float`, defaults to 0.999):
            flow time t = (1 - u)·time_max with u ~ Beta(alpha, 1), so most samples are near the noise (t=0).
        training_repeat (`int`, defaults to 1): copies of each sample per batch, each with its own noise and t
            (the released post-training uses 4).
        action_prefix_probability (`float`, defaults to 0.0): probability that a sample is trained with a clean
            prefix of p ~ U{1..min(max_action_prefix_length, T)} ground-truth actions (0.5 for asynchronous
            post-training; 0 = synchronous training).
        max_action_prefix_length (`int`, defaults to 6).
        prefix_hide_probability (`float`, defaults to 0.5), prefix_keep_last (`int`, defaults to 2): during
            training, each prefix token but the last `prefix_keep_last` is hidden from the noisy action tokens with
            this probability (the prefix tokens still see each other).
        loss_reweighting (`bool`, defaults to False): weight the loss of prefixed samples by the L1 error of the
            actions the model generates with that prefix, divided by its masked mean, clamped to
            `loss_reweight_range` (defaults to (0.5, 5.0)).
        frequency_loss_weight (`float`, defaults to 0.0): c in loss = 0.5·(weighted mse) + c·(frequency term),
            the released form (1.0 in the released configs; 0 switches the term off).
        language_loss_weight (`float`, defaults to 1.0): weight of the next-token loss of vision-language
            co-training batches (`forward(language_batch=...)`), added to the action loss.
    """

    model_type = "xr0"
    sub_configs = {"vlm_config": Qwen3VLConfig, "dit_config": XR0DiTConfig}

    def __init__(
        self,
        vlm_config: Union[None, dict, Qwen3VLConfig] = None,
        dit_config: Union[None, dict, XR0DiTConfig] = None,
        action_length: int = 30,
        action_dim: int = 32,
        state_dim: int = 32,
        state_length: int = 1,
        num_inference_steps: int = 5,
        action_attention_window: Optional[int] = None,
        noisy_action_position_offset: int = 0,
        time_sampling_alpha: float = 1.5,
        time_max: float = 0.999,
        training_repeat: int = 1,
        action_prefix_probability: float = 0.0,
        max_action_prefix_length: int = 6,
        prefix_hide_probability: float = 0.5,
        prefix_keep_last: int = 2,
        loss_reweighting: bool = False,
        loss_reweight_range: tuple = (0.5, 5.0),
        frequency_loss_weight: float = 0.0,
        language_loss_weight: float = 1.0,
        **kwargs,
    ):
        self.vlm_config = Qwen3VLConfig(**_vlm_config_dict(vlm_config))

        if isinstance(dit_config, PretrainedConfig):  # ours, or the official DiTConfig object
            dit_config = dit_config.to_dict()
        if dit_config is not None and not isinstance(dit_config, dict):
            raise TypeError(
                f"`dit_config` must be a dict or an XR0DiTConfig, got {type(dit_config).__name__}."
            )
        self.dit_config = XR0DiTConfig(**(dit_config or {}))

        self.action_length = action_length
        self.action_dim = action_dim
        self.state_dim = state_dim
        self.state_length = state_length
        self.num_inference_steps = num_inference_steps
        self.action_attention_window = action_attention_window
        self.noisy_action_position_offset = noisy_action_position_offset
        self.time_sampling_alpha = time_sampling_alpha
        self.time_max = time_max
        self.training_repeat = training_repeat
        self.action_prefix_probability = action_prefix_probability
        self.max_action_prefix_length = max_action_prefix_length
        self.prefix_hide_probability = prefix_hide_probability
        self.prefix_keep_last = prefix_keep_last
        self.loss_reweighting = loss_reweighting
        self.loss_reweight_range = list(loss_reweight_range)
        self.frequency_loss_weight = frequency_loss_weight
        self.language_loss_weight = language_loss_weight
        kwargs.setdefault("tie_word_embeddings", self.vlm_config.tie_word_embeddings)
        super().__init__(**kwargs)
        self.validate_fields()

    def validate_fields(self) -> None:
        """Checks every XR0 field (ranges, types, the DiT's fit to the VLM); raises ValueError naming the field.
        Called on construction, and by whoever changes fields afterwards (e.g. `xr0-finetune`'s recipes)."""

        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")

        for name in (
            "action_length",
            "action_dim",
            "state_dim",
            "state_length",
            "num_inference_steps",
            "training_repeat",
            "max_action_prefix_length",
        ):
            positive_int(name, getattr(self, name))
        if not isinstance(self.prefix_keep_last, int) or self.prefix_keep_last < 0:
            raise ValueError(f"`prefix_keep_last` must be an int >= 0, got {self.prefix_keep_last!r}.")
        for name in ("action_prefix_probability", "prefix_hide_probability"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1], got {value!r}.")
        if not isinstance(self.time_sampling_alpha, (int, float)) or self.time_sampling_alpha <= 0:
            raise ValueError(f"`time_sampling_alpha` must be > 0, got {self.time_sampling_alpha!r}.")
        if not isinstance(self.time_max, (int, float)) or not 0.0 < self.time_max <= 1.0:
            raise ValueError(f"`time_max` must be in (0, 1], got {self.time_max!r}.")
        low, high = self.loss_reweight_range if len(self.loss_reweight_range) == 2 else (None, None)
        if low is None or not 0 < low <= high:
            raise ValueError(
                f"`loss_reweight_range` must be (low, high) with 0 < low <= high, got {self.loss_reweight_range!r}."
            )
        for name in ("frequency_loss_weight", "language_loss_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")
        if self.action_attention_window is not None:
            positive_int("action_attention_window", self.action_attention_window)
        offset = self.noisy_action_position_offset
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"`noisy_action_position_offset` must be an int >= 0, got {offset!r}.")

        dit, text = self.dit_config, self.vlm_config.text_config
        vlm_head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        if dit.head_dim != vlm_head_dim:
            raise ValueError(
                f"`dit_config.head_dim` ({dit.head_dim}) must equal the VLM's head_dim ({vlm_head_dim}): "
                "DiT queries attend to the VLM's cached keys."
            )
        if dit.num_key_value_heads != text.num_key_value_heads:
            raise ValueError(
                f"`dit_config.num_key_value_heads` ({dit.num_key_value_heads}) must equal the VLM's "
                f"num_key_value_heads ({text.num_key_value_heads})."
            )
        if dit.num_hidden_layers > text.num_hidden_layers:
            raise ValueError(
                f"`dit_config.num_hidden_layers` ({dit.num_hidden_layers}) must be <= the VLM's "
                f"num_hidden_layers ({text.num_hidden_layers}): DiT layer i reads the cache of VLM layer "
                f"(L_vlm - N_dit + i)."
            )

    @property
    def num_dit_attention_heads(self) -> int:
        return self.dit_config.num_attention_heads

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["dit_config"] = {
            k: v for k, v in self.dit_config.to_dict().items() if k != "transformers_version"
        }
        # Keep the 4.57 rope fields next to 5.x's `rope_parameters`, so a config saved on either line loads on both.
        vlm = output["vlm_config"]
        vlm = vlm.to_dict() if isinstance(vlm, PretrainedConfig) else dict(vlm)
        vlm["text_config"] = _rope_fields_for_both_lines(vlm["text_config"])
        output["vlm_config"] = vlm
        return output

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == OFFICIAL_MODEL_TYPE:
            config_dict = from_official_config_dict(config_dict)
        return config_dict, kwargs


def from_official_config_dict(config_dict: dict) -> dict:
    """Translate a `config.json` written by the official code (`model_type: "mibot"`) into ours. The shared
    fields mean the same; the official class names and remote-code map would point at code we do not ship."""
    config_dict = dict(config_dict)
    config_dict["model_type"] = XR0Config.model_type
    for key in ("auto_map", "architectures"):
        config_dict.pop(key, None)
    return config_dict


__all__ = ["XR0Config", "XR0DiTConfig"]
