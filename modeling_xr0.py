"""Xiaomi-Robotics-0 (XR0): a Qwen3-VL-4B backbone whose KV cache conditions a DiT action expert
(technical report: arXiv 2602.12684).

Inference, as published:
    1. `encode_observation`: one VLM prefill over images + prompt; keep the KV cache of the last
       `dit_config.num_hidden_layers` VLM layers, the prompt's padding mask, where the DiT's positions start, and
       the [sink, state] tokens.
    2. `sample_actions`: integrate the flow from noise (t=0) to actions (t=1) with `num_inference_steps` Euler
       steps of `velocity`, one DiT pass over [sink, state, T noisy actions] that attends to the cache.
`forward` composes the two. Actions are normalized; the processor de-normalizes them.

This file holds the model: its modules, the observation encoding, the chunk's attention layout and the velocity.
The sampler (`sampler_xr0.py`: prefix modes for real-time execution, guided inpainting, compiled and CUDA-graph
loops; its torch-free options in `sampling_xr0.py`) and the training recipe (`recipe_xr0.py`: draws, the
flow-matching loss with asynchronous post-training, vision-language co-training) are their own files, reached from
the model through `sample_actions`, `optimize_sampler`, `compute_loss` and `forward`.

Shapes: B batch, L prompt length, T chunk length (the robot type's, from `action_mask`), A = action_dim,
S state tokens, Q = 1 + S + T DiT tokens, H = DiT hidden size, h = DiT query heads, D = head_dim.
"""

import inspect
import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLForConditionalGeneration,
    Qwen3VLModel,
    Qwen3VLTextRMSNorm,
)
from transformers.utils import ModelOutput, logging

from .configuration_xr0 import XR0Config
from .recipe_xr0 import XR0TrainingDraws, compute_loss, data_parallel, join_action_loss_sums, language_loss
from .sampler_xr0 import describe, generator_from_seed, optimize_sampler, prefix_positions, sample_actions
from .sampling_xr0 import PrefixGuidance

logger = logging.get_logger(__name__)

# The action expert's top-level submodules, as the published state dict names them (besides `vlm`); training
# checkpoints may wrap every key in one of `_WRAPPER_PREFIXES`.
ACTION_EXPERT_MODULES = (
    "dit",
    "state_projector",
    "action_projector",
    "action_output_layer",
    "t_embedder",
    "t_projector",
    "sink",
)
_TOP_LEVEL_MODULES = ("vlm", *ACTION_EXPERT_MODULES)
_WRAPPER_PREFIXES = ("module.model.", "module.", "model.")


@dataclass
class XR0ActionOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): training loss (when `actions` are given).
        actions (`torch.FloatTensor` of shape `(B, T, A)`): normalized action chunk, float32 (inference).
        flow_loss, frequency_loss, language_loss (`torch.FloatTensor` of shape `()`, *optional*): the loss's
            parts, detached.
    """

    loss: Optional[torch.FloatTensor] = None
    actions: Optional[torch.FloatTensor] = None
    flow_loss: Optional[torch.FloatTensor] = None
    frequency_loss: Optional[torch.FloatTensor] = None
    language_loss: Optional[torch.FloatTensor] = None


@dataclass
class XR0Observation:
    """Everything the DiT needs from one observation; computed once, reused by every Euler step and for any
    chunk length.

    Args:
        cache_keys, cache_values: one (B, h, L, D) tensor per DiT layer: the cached K/V of VLM layer
            (L_vlm - N_dit + i), already rotated and repeated from the VLM's KV heads to the DiT's query heads;
            zero at padded prompt positions.
        cache_mask: (B, L) bool, True at real (non-padded) prompt tokens.
        next_position: (3, B) the first free MRoPE position on each axis (max over the prompt + 1): the DiT
            tokens continue the prompt from there.
        context_tokens: (B, 1 + S, H) the [sink, state] tokens that precede the action tokens.
    """

    cache_keys: tuple[torch.Tensor, ...]
    cache_values: tuple[torch.Tensor, ...]
    cache_mask: torch.Tensor
    next_position: torch.Tensor
    context_tokens: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.context_tokens.shape[0]

    @property
    def state_length(self) -> int:
        return self.context_tokens.shape[1] - 1

    def clone(self) -> "XR0Observation":
        """Copies of every tensor. Made outside inference mode, they are ordinary tensors that autograd accepts,
        even when this observation was computed under `torch.inference_mode()`."""
        return XR0Observation(
            cache_keys=tuple(k.clone() for k in self.cache_keys),
            cache_values=tuple(v.clone() for v in self.cache_values),
            cache_mask=self.cache_mask.clone(),
            next_position=self.next_position.clone(),
            context_tokens=self.context_tokens.clone(),
        )

    def tensors(self) -> list:
        """Every tensor, flat: keys, values, cache_mask, next_position, context_tokens (`from_tensors` inverts)."""
        return [
            *self.cache_keys,
            *self.cache_values,
            self.cache_mask,
            self.next_position,
            self.context_tokens,
        ]

    @classmethod
    def from_tensors(cls, tensors: list) -> "XR0Observation":
        layers = (len(tensors) - 3) // 2
        return cls(
            cache_keys=tuple(tensors[:layers]),
            cache_values=tuple(tensors[layers : 2 * layers]),
            cache_mask=tensors[-3],
            next_position=tensors[-2],
            context_tokens=tensors[-1],
        )

    def repeat_interleave(self, repeats: int) -> "XR0Observation":
        """Each sample `repeats` times in a row along the batch (training_repeat)."""
        if repeats == 1:
            return self

        def rep(tensor, dim=0):
            return tensor.repeat_interleave(repeats, dim=dim)

        return XR0Observation(
            cache_keys=tuple(rep(k) for k in self.cache_keys),
            cache_values=tuple(rep(v) for v in self.cache_values),
            cache_mask=rep(self.cache_mask),
            next_position=rep(self.next_position, dim=1),
            context_tokens=rep(self.context_tokens),
        )


@dataclass
class XR0ChunkLayout:
    """How the DiT lays out one chunk of T action tokens after [sink, state]: who attends to whom and where
    each token sits in MRoPE. Depends on T and on the committed prefix, not on the noisy actions.

    Args:
        attention_mask: (B, 1, Q, L + Q) bool, True = may attend. Keys are [prompt cache | DiT tokens].
        position_ids: (3, B, Q) MRoPE position ids of the DiT tokens.
        position_embeddings: (cos, sin), each (B, Q, D), the rotary tables for `position_ids`.
    """

    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------------------------
# Small functions


def timestep_sinusoid(timestep: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) flow time in [0, 1] -> (B, dim) float32 [cos | sin] features of t·1000."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    )
    args = (timestep.float() * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, h, Q, D); cos/sin (B, Q, D) from the VLM's text rotary module."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def build_dit_attention_mask(
    cache_mask: torch.Tensor,
    state_length: int,
    action_length: int,
    window: Optional[int] = None,
    hidden_actions: Optional[torch.Tensor] = None,
    prefix_lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Args:
        cache_mask: (B, L) bool, True at real (non-padded) prompt tokens.
        window: `None` = causal over all DiT tokens (published inference). An int `w` = the Λ-shaped band of
            the released post-training: action token i sees action tokens i - w .. i (w + 1 tokens, itself
            included); sink and state stay visible to every token.
        hidden_actions: (B, T) bool, committed prefix tokens hidden from the noisy action tokens (training); the
            prefix tokens still see each other.
        prefix_lengths: (B,) with `hidden_actions`: action tokens at positions >= prefix_lengths[b] are noisy.
    Returns:
        (B, 1, Q, L + Q) bool, True = may attend.
    """
    num_tokens = 1 + state_length + action_length
    idx = torch.arange(num_tokens, device=cache_mask.device)
    own = idx[:, None] >= idx[None, :]  # (Q, Q) causal
    if window is not None:
        is_action = idx >= 1 + state_length
        too_old = idx[:, None] - idx[None, :] > window
        own = own & ~(is_action[:, None] & is_action[None, :] & too_old)
    batch_size, prompt_length = cache_mask.shape
    cache_part = cache_mask.bool()[:, None, None, :].expand(batch_size, 1, num_tokens, prompt_length)
    own_part = own[None, None].expand(batch_size, 1, num_tokens, num_tokens)
    if hidden_actions is not None:
        if prefix_lengths is None:
            raise ValueError(
                "`hidden_actions` needs `prefix_lengths`: prefix tokens are hidden from noisy tokens only"
            )
        device = cache_mask.device
        hidden = torch.zeros(batch_size, num_tokens, dtype=torch.bool, device=device)  # as keys
        hidden[:, 1 + state_length :] = hidden_actions.to(device)
        noisy = torch.zeros(batch_size, num_tokens, dtype=torch.bool, device=device)  # as queries
        steps = torch.arange(action_length, device=device)
        noisy[:, 1 + state_length :] = steps[None] >= prefix_lengths.to(device)[:, None]
        own_part = own_part & ~(noisy[:, None, :, None] & hidden[:, None, None, :])
    return torch.cat([cache_part, own_part], dim=-1)


# --------------------------------------------------------------------------------------------------------------
# DiT attention: one dispatch point


def sdpa_attention(query, key, value, mask):
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def eager_attention(query, key, value, mask):
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    return torch.matmul(probs, value)


DIT_ATTENTION_FUNCTIONS = {"eager": eager_attention, "sdpa": sdpa_attention}


def dit_attention_function(implementation: Optional[str]):
    """The DiT's attention for the requested implementation. Its mask (prompt padding + causal/Λ over the DiT
    tokens) is neither a plain causal nor a padding mask, which flash-attention kernels cannot take: any other
    request (flash_attention_2, ...) runs the DiT on PyTorch SDPA and says so once; the VLM honours it."""
    if implementation in DIT_ATTENTION_FUNCTIONS:
        return DIT_ATTENTION_FUNCTIONS[implementation]
    if torch.compiler.is_compiling():  # `optimize_sampler` says it before compiling
        return sdpa_attention
    logger.warning_once(
        f"attn_implementation={implementation!r} is used by the VLM; the DiT action expert runs PyTorch SDPA "
        "(its attention mask is not one flash-attention kernels take)."
    )
    return sdpa_attention


# --------------------------------------------------------------------------------------------------------------
# transformers 4.57 / 5.x differences, in one place


# 5.x needs the token types (text 0, image 1, video 2) to place images in MRoPE; 4.57 reads them off input_ids.
_ROPE_INDEX_TAKES_TOKEN_TYPES = (
    "mm_token_type_ids" in inspect.signature(Qwen3VLModel.get_rope_index).parameters
)


def token_types(input_ids: torch.LongTensor, vlm_config) -> torch.Tensor:
    """(B, L) modality of each token: text 0, image 1, video 2 (what the 5.x processor returns)."""
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == vlm_config.image_token_id] = 1
    types[input_ids == vlm_config.video_token_id] = 2
    return types


def prompt_position_ids(
    vlm: Qwen3VLForConditionalGeneration,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    image_grid_thw: Optional[torch.LongTensor],
    mm_token_type_ids: Optional[torch.Tensor] = None,
) -> torch.LongTensor:
    """(3, B, L) MRoPE position ids of the prompt, the same on 4.57 and 5.x at real tokens. We pass them to the
    VLM ourselves so that neither line recomputes them differently."""
    if _ROPE_INDEX_TAKES_TOKEN_TYPES:
        if mm_token_type_ids is None:
            mm_token_type_ids = token_types(input_ids, vlm.config)
        position_ids, _ = vlm.model.get_rope_index(
            input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
    else:
        position_ids, _ = vlm.model.get_rope_index(
            input_ids, image_grid_thw, None, attention_mask=attention_mask
        )
    return position_ids


def returned_cache(vlm_outputs):
    """The VLM's KV cache: `cache` on 5.x, `past_key_values` on 4.57; read per layer as `.layers[i].keys`."""
    cache = getattr(vlm_outputs, "cache", None)
    return cache if cache is not None else vlm_outputs.past_key_values


def is_checkpointing(model: PreTrainedModel) -> bool:
    # 5.x renamed the property (the old name warns); 4.57 has only the old one.
    if hasattr(type(model), "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


def recompute_keys_values(language_model, hidden_states, position_ids, first_layer: int) -> list:
    """K/V of VLM layers `first_layer`.. rebuilt from their input hidden states as each layer's attention
    computes them (input norm, k/v projections, k_norm, RoPE). Gradient checkpointing makes the VLM return no
    cache (both lines force use_cache off); the last layers' inputs are recorded exactly on both lines."""
    cos, sin = language_model.rotary_emb(hidden_states[first_layer], position_ids)
    layer_kv = []
    for index in range(first_layer, len(language_model.layers)):
        layer = language_model.layers[index]
        attention = layer.self_attn
        x = layer.input_layernorm(hidden_states[index])  # (B, L, hidden)
        shape = (*x.shape[:-1], -1, attention.head_dim)
        keys = attention.k_norm(attention.k_proj(x).view(shape)).transpose(1, 2)  # (B, H_kv, L, D)
        values = attention.v_proj(x).view(shape).transpose(1, 2)
        layer_kv.append((apply_rotary(keys, cos, sin), values))
    return layer_kv


# --------------------------------------------------------------------------------------------------------------
# Modules, smallest first


class XR0Projector(nn.Module):
    """Linear(in -> out) -> GELU(tanh) -> Linear(out -> out), no bias, stored as `layers.0` (out, in) and
    `layers.2` (out, out). The intermediate width is the OUTPUT width: the action head is 1024 -> 32 -> 32."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, out_features, bias=False),
            nn.GELU(approximate="tanh"),
            nn.Linear(out_features, out_features, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class XR0TimestepEmbedder(nn.Module):
    """(B,) flow time -> (B, H)."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size, bias=False),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=False),
        )

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        features = timestep_sinusoid(timestep, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class XR0TimeModulation(nn.Module):
    """(B, H) time embedding -> (B, 6, H) adaLN shifts/scales/gates shared by all DiT layers."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, time_embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(time_embedding).view(time_embedding.shape[0], 6, -1)


class XR0MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class XR0DiTAttention(nn.Module):
    """Self-attention of the DiT tokens whose keys/values are prefixed by one VLM layer's cached K/V."""

    def __init__(self, config: XR0Config):
        super().__init__()
        self.config = config
        dit = config.dit_config
        self.head_dim = dit.head_dim
        self.num_heads = dit.num_attention_heads
        self.qkv_proj = nn.Linear(dit.hidden_size, 3 * dit.hidden_size, bias=True)
        self.o_proj = nn.Linear(dit.hidden_size, dit.hidden_size, bias=False)
        self.q_norm = Qwen3VLTextRMSNorm(self.head_dim, eps=dit.rms_norm_eps)
        self.k_norm = Qwen3VLTextRMSNorm(self.head_dim, eps=dit.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, Q, H)
        cache_key: torch.Tensor,  # (B, h, L, D)
        cache_value: torch.Tensor,  # (B, h, L, D)
        attention_mask: torch.Tensor,  # (B, 1, Q, L + Q) bool
        position_embeddings: tuple[torch.Tensor, torch.Tensor],  # (B, Q, D) each
    ) -> torch.Tensor:
        batch_size, num_tokens, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch_size, num_tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.unbind(dim=2)  # (B, Q, h, D) each
        query = self.q_norm(query).transpose(1, 2)  # (B, h, Q, D)
        key = self.k_norm(key).transpose(1, 2)
        value = value.transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)

        key = torch.cat([cache_key.to(key.dtype), key], dim=2)  # (B, h, L + Q, D)
        value = torch.cat([cache_value.to(value.dtype), value], dim=2)
        attend = dit_attention_function(self.config._attn_implementation)
        output = attend(query, key, value, attention_mask)  # (B, h, Q, D)
        output = output.transpose(1, 2).reshape(batch_size, num_tokens, -1)
        return self.o_proj(output)


class XR0DiTLayer(GradientCheckpointingLayer):
    """adaLN-modulated pre-norm block with an extra norm after each residual branch."""

    def __init__(self, config: XR0Config):
        super().__init__()
        hidden_size, eps = config.dit_config.hidden_size, config.dit_config.rms_norm_eps
        self.attn = XR0DiTAttention(config)
        self.mlp = XR0MLP(hidden_size, config.dit_config.intermediate_size)
        self.input_layernorm = Qwen3VLTextRMSNorm(hidden_size, eps=eps)
        self.middle_layernorm = Qwen3VLTextRMSNorm(hidden_size, eps=eps)
        self.post_layernorm = Qwen3VLTextRMSNorm(hidden_size, eps=eps)
        self.final_layernorm = Qwen3VLTextRMSNorm(hidden_size, eps=eps)
        self.adaln_table = nn.Parameter(torch.zeros(6, hidden_size))

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, Q, H)
        time_modulation: torch.Tensor,  # (B, 6, H)
        cache_key: torch.Tensor,
        cache_value: torch.Tensor,
        attention_mask: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        modulation = (self.adaln_table[None] + time_modulation).unsqueeze(2)  # (B, 6, 1, H)
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = modulation.unbind(dim=1)

        attn_input = modulate(self.input_layernorm(hidden_states), shift_attn, scale_attn)
        attn_output = self.attn(attn_input, cache_key, cache_value, attention_mask, position_embeddings)
        hidden_states = self.middle_layernorm(hidden_states + gate_attn * attn_output)

        mlp_output = self.mlp(modulate(self.post_layernorm(hidden_states), shift_mlp, scale_mlp))
        return self.final_layernorm(hidden_states + gate_mlp * mlp_output)


class XR0DiT(nn.Module):
    """The action expert's layers; layer i attends to the cache of VLM layer (L_vlm - N_dit + i)."""

    def __init__(self, config: XR0Config):
        super().__init__()
        self.layers = nn.ModuleList(XR0DiTLayer(config) for _ in range(config.dit_config.num_hidden_layers))

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, Q, H)
        time_modulation: torch.Tensor,  # (B, 6, H)
        observation: XR0Observation,
        layout: XR0ChunkLayout,
    ) -> torch.Tensor:
        caches = zip(self.layers, observation.cache_keys, observation.cache_values, strict=True)
        for layer, cache_key, cache_value in caches:
            hidden_states = layer(
                hidden_states,
                time_modulation,
                cache_key,
                cache_value,
                layout.attention_mask,
                layout.position_embeddings,
            )
        return hidden_states  # (B, Q, H)


# --------------------------------------------------------------------------------------------------------------
# Models


class XR0PreTrainedModel(PreTrainedModel):
    config_class = XR0Config
    base_model_prefix = "xr0"
    supports_gradient_checkpointing = True
    _no_split_modules = ["XR0DiTLayer", "Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    # The VLM (stock Qwen3-VL) runs any registered attention backend; the DiT's mask is neither causal nor padding,
    # so for a backend other than eager/sdpa it runs SDPA and says so once (`dit_attention_function`).
    _supports_attention_backend = True
    # Trainer must not rescale our loss by the number of items in the batch.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only the action expert lives here; the VLM submodel initializes itself.
        std = self.config.vlm_config.text_config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, Qwen3VLTextRMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, XR0DiTLayer):
            nn.init.normal_(module.adaln_table, mean=0.0, std=std)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *args, allow_missing_weights: bool = False, **kwargs
    ):
        """Loads our layout and the published one (`model_type: "mibot"`, keys possibly wrapped in
        `module.`/`model.` by a training run). Only safetensors are read: nothing is unpickled.

        A checkpoint that lacks any weight (the tied `lm_head` aside) is refused with the missing names: a
        policy must not act with randomly initialized parts. `allow_missing_weights=True` loads it anyway (e.g. to
        fine-tune a new head). Local files are checked against their headers first, so a truncated download names
        its file instead of failing deep inside safetensors."""
        kwargs.setdefault("use_safetensors", True)
        subfolder = kwargs.get("subfolder", "")
        check_safetensors_files(pretrained_model_name_or_path, subfolder)
        if kwargs.get("key_mapping") is None:
            prefix = checkpoint_wrapper_prefix(pretrained_model_name_or_path, subfolder)
            if prefix:
                kwargs["key_mapping"] = {"^" + prefix.replace(".", r"\."): ""}
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        missing = sorted(key for key in info["missing_keys"] if not key.startswith("vlm.lm_head."))
        if missing and not allow_missing_weights:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise OSError(
                f"{pretrained_model_name_or_path} lacks {len(missing)} weight(s) of this model: {shown}. Refusing to "
                "act with randomly initialized weights; pass allow_missing_weights=True to load it anyway."
            )
        return (model, info) if wants_info else model


def check_safetensors_files(path, subfolder: str = "") -> None:
    """Every safetensors file of a local checkpoint is at least as long as its header says (header only: cheap
    for a 9 GB checkpoint). Raises OSError naming the first file that is not."""
    directory = os.path.join(str(path), subfolder)
    if not os.path.isdir(directory):
        return
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".safetensors"):
            continue
        file = os.path.join(directory, name)
        size = os.path.getsize(file)
        try:
            with open(file, "rb") as f:
                header_length = int.from_bytes(f.read(8), "little")
                if not 0 < header_length <= min(size - 8, 100 * 2**20):  # safetensors' own header limit
                    raise ValueError(f"header of {header_length} bytes in a file of {size}")
                header = json.loads(f.read(header_length))
            end = max(
                (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise OSError(f"{file} is not a readable safetensors file ({error})") from None
        if size < 8 + header_length + end:
            raise OSError(
                f"{file} is truncated: {size} bytes, its header describes {8 + header_length + end}"
            )


def checkpoint_wrapper_prefix(path, subfolder: str = "") -> Optional[str]:
    """The wrapper prefix of a local checkpoint's keys (e.g. "module."), read from its index or safetensors
    header, or None when keys are unwrapped or the path is not a local directory."""
    directory = os.path.join(str(path), subfolder)
    if not os.path.isdir(directory):
        return None
    index_file = os.path.join(directory, "model.safetensors.index.json")
    single_file = os.path.join(directory, "model.safetensors")
    if os.path.isfile(index_file):
        with open(index_file) as f:
            keys = list(json.load(f)["weight_map"])
    elif os.path.isfile(single_file):
        with safe_open(single_file, framework="pt") as f:
            keys = list(f.keys())
    else:
        return None
    for prefix in _WRAPPER_PREFIXES:
        if keys and all(
            key.startswith(prefix) and key[len(prefix) :].split(".")[0] in _TOP_LEVEL_MODULES for key in keys
        ):
            return prefix
    return None


class XR0ForActionGeneration(XR0PreTrainedModel):
    """
    The XR0 policy: observation (images + prompt + state) -> normalized action chunk (B, T, A).

    It holds the modules and what everything else composes: `encode_observation` (one VLM prefill) and `velocity`
    (one DiT evaluation). The sampler lives in `sampler_xr0.py`, the training recipe in `recipe_xr0.py`;
    `sample_actions`, `optimize_sampler`, `compute_loss` and `forward` are their entry points on the model.

    Parameter names follow the published checkpoints: `vlm.*` (stock Qwen3VLForConditionalGeneration),
    `dit.layers.{i}.*`, `state_projector`, `action_projector`, `action_output_layer`, `t_embedder`,
    `t_projector`, `sink`. The DiT's rotary tables come from the VLM's own text rotary module.
    """

    def __init__(self, config: XR0Config):
        super().__init__(config)
        hidden_size = config.dit_config.hidden_size
        self.vlm = Qwen3VLForConditionalGeneration(config.vlm_config)
        self.dit = XR0DiT(config)
        self.state_projector = XR0Projector(config.state_dim, hidden_size)
        self.action_projector = XR0Projector(config.action_dim, hidden_size)
        self.action_output_layer = XR0Projector(hidden_size, config.action_dim)
        self.t_embedder = XR0TimestepEmbedder(hidden_size)
        self.t_projector = XR0TimeModulation(hidden_size)
        self.sink = nn.Embedding(1, hidden_size)
        # The Euler loop behind `sample_actions` when `optimize_sampler` built one (a compiled function, a
        # CUDA-graph replayer); None = the eager `sampler_xr0.euler_integrate`.
        self._inference_loop = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.vlm.set_input_embeddings(value)

    # ---- observation -----------------------------------------------------------------------------------------

    def vlm_inputs(self, input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids=None):
        """The VLM's keyword arguments for a prompt (B, L): its images checked against its image tokens, its
        MRoPE position ids computed here (the same on every transformers line)."""
        check_images(self.config, input_ids, attention_mask, pixel_values, image_grid_thw)
        positions = prompt_position_ids(
            self.vlm, input_ids, attention_mask, image_grid_thw, mm_token_type_ids
        )
        images = dict(pixel_values=pixel_values, image_grid_thw=image_grid_thw)
        return dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, **images)

    def encode_observation(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor],
        pixel_values: Optional[torch.Tensor],
        image_grid_thw: Optional[torch.LongTensor],
        state: torch.Tensor,
        mm_token_type_ids: Optional[torch.Tensor] = None,
    ) -> XR0Observation:
        """
        Runs the VLM once over the prompt and prepares everything the DiT reads at every Euler step.

        Args:
            input_ids: (B, L) prompt token ids (left or right padded).
            attention_mask: (B, L), 1 at real tokens; `None` = no padding.
            pixel_values: (N_patches, C·t·p·p) from the Qwen3-VL image processor, or None for a text-only prompt.
            image_grid_thw: (num_images, 3) patch grid per image.
            state: (B, S, state_dim) raw robot state, zero-padded to `state_dim`.
            mm_token_type_ids: (B, L) optional; derived from `input_ids` when absent.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        config = self.config
        check_prompt_and_state(config, input_ids, attention_mask, state)
        vlm_inputs = self.vlm_inputs(
            input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids
        )
        position_ids = vlm_inputs["position_ids"]  # (3, B, L)
        num_vlm_layers = config.vlm_config.text_config.num_hidden_layers
        first_layer = num_vlm_layers - config.dit_config.num_hidden_layers
        if self.training and is_checkpointing(self.vlm):
            outputs = self.vlm.model(**vlm_inputs, use_cache=False, output_hidden_states=True)
            layer_kv = recompute_keys_values(
                self.vlm.model.language_model, outputs.hidden_states, position_ids, first_layer
            )
        else:
            cache = returned_cache(self.vlm.model(**vlm_inputs, use_cache=True))
            layer_kv = [(layer.keys, layer.values) for layer in cache.layers[first_layer:num_vlm_layers]]

        # Padded prompt positions are masked out below; zero their K/V too so that values a padded query
        # produced inside the VLM (possibly NaN for fully masked rows) cannot leak through 0 * NaN.
        cache_mask = attention_mask.bool()  # (B, L)
        keep = cache_mask[:, None, :, None]
        repeats = config.num_dit_attention_heads // config.dit_config.num_key_value_heads
        # (B, H_kv, L, D) -> (B, h, L, D) per layer
        cache_keys = tuple(k.masked_fill(~keep, 0).repeat_interleave(repeats, dim=1) for k, _ in layer_kv)
        cache_values = tuple(v.masked_fill(~keep, 0).repeat_interleave(repeats, dim=1) for _, v in layer_kv)

        # The DiT tokens continue the prompt's positions, each MRoPE axis from its own maximum, as the official
        # forward computes them.
        next_position = position_ids.masked_fill(~cache_mask[None], 0).amax(dim=2) + 1  # (3, B)
        state_tokens = self.state_projector(state.to(self.dtype))  # (B, S, H)
        sink = self.sink.weight[None].expand(state.shape[0], -1, -1)  # (B, 1, H)
        return XR0Observation(
            cache_keys,
            cache_values,
            cache_mask,
            next_position,
            context_tokens=torch.cat([sink, state_tokens], 1),
        )

    def chunk_layout(
        self,
        observation: XR0Observation,
        action_length: int,
        prefix_lengths: Optional[torch.Tensor] = None,
        hidden_actions: Optional[torch.Tensor] = None,
    ) -> XR0ChunkLayout:
        """
        Attention mask and rotary tables of the DiT tokens [sink, S state tokens, T action tokens].

        Args:
            action_length: T.
            prefix_lengths: (B,) the first `prefix_lengths[b]` action tokens are clean (committed) actions: they
                do not get `noisy_action_position_offset`. None = no prefix.
            hidden_actions: (B, T) bool, action tokens hidden as keys (training only).
        """
        config, device = self.config, observation.next_position.device
        first_action = 1 + observation.state_length
        if prefix_lengths is None:
            prefix_lengths = torch.zeros(observation.batch_size, dtype=torch.long, device=device)
        steps = torch.arange(first_action + action_length, device=device)
        position_ids = observation.next_position[..., None] + steps  # (3, B, Q)
        is_noisy = ~prefix_positions(prefix_lengths, action_length).to(device)  # (B, T)
        position_ids[..., first_action:] += (
            config.noisy_action_position_offset * is_noisy.to(position_ids)[None]
        )
        attention_mask = build_dit_attention_mask(
            observation.cache_mask,
            observation.state_length,
            action_length,
            config.action_attention_window,
            hidden_actions=hidden_actions,
            prefix_lengths=prefix_lengths,
        )
        # (cos, sin), each (B, Q, D), in the cache's dtype, from the VLM's text rotary module.
        rotary = self.vlm.model.language_model.rotary_emb(observation.cache_keys[0], position_ids)
        return XR0ChunkLayout(
            attention_mask=attention_mask, position_ids=position_ids, position_embeddings=rotary
        )

    # ---- flow ------------------------------------------------------------------------------------------------

    def velocity(
        self,
        noisy_actions: torch.Tensor,
        timestep: torch.Tensor,
        observation: XR0Observation,
        action_mask: torch.Tensor,
        layout: Optional[XR0ChunkLayout] = None,
    ) -> torch.Tensor:
        """
        One DiT evaluation of the flow's velocity field.

        Args:
            noisy_actions: (B, T, A) x_t.
            timestep: (B,) flow time t in [0, 1] (0 = noise, 1 = data).
            observation: from `encode_observation`.
            action_mask: (B, T, A), 1 at the robot's active action dims.
            layout: from `chunk_layout`; the layout without a committed prefix when None.
        Returns:
            (B, T, A) velocity, in the model's dtype.
        """
        if layout is None:
            layout = self.chunk_layout(observation, noisy_actions.shape[1])
        dtype = self.action_projector.layers[0].weight.dtype
        action_tokens = self.action_projector((noisy_actions * action_mask).to(dtype))  # (B, T, H)
        hidden_states = torch.cat([observation.context_tokens.to(dtype), action_tokens], dim=1)  # (B, Q, H)
        time_modulation = self.t_projector(self.t_embedder(timestep))  # (B, 6, H)
        hidden_states = self.dit(hidden_states, time_modulation, observation, layout)
        return self.action_output_layer(hidden_states[:, -noisy_actions.shape[1] :])

    def sample_actions(self, observation, action_mask, *args, **options) -> torch.Tensor:
        """(B, T, A) float32 normalized actions for `observation` by Euler integration of `velocity`; the other
        arguments (noise, generator, num_steps, action_prefix, prefix_mode, guidance): `sampler_xr0.sample_actions`."""
        return sample_actions(self, observation, action_mask, *args, **options)

    def optimize_sampler(self, *args, **options) -> "XR0ForActionGeneration":
        """Compiles the Euler loop behind `sample_actions` and/or replays it from CUDA graphs; its arguments
        (compile, mode, backend, dynamic, cuda_graphs, max_graphs): `sampler_xr0.optimize_sampler`."""
        # The DiT attention's fallback notice, if any, now: a traced call skips it.
        dit_attention_function(self.config._attn_implementation)
        return optimize_sampler(self, *args, **options)

    def compute_loss(self, observation, actions, action_mask, *args, **options) -> dict:
        """The training recipe's flow-matching loss and its parts for ground-truth `actions` (B, T, A); the other
        arguments (action_is_pad, generator, sample_seeds, draws): `recipe_xr0.compute_loss`."""
        return compute_loss(self, observation, actions, action_mask, *args, **options)

    # ---- the one entry point ---------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor = None,
        attention_mask: Optional[torch.Tensor] = None,
        pixel_values: Optional[torch.Tensor] = None,
        image_grid_thw: Optional[torch.LongTensor] = None,
        state: Optional[torch.Tensor] = None,
        action_mask: Optional[torch.Tensor] = None,
        *,
        mm_token_type_ids: Optional[torch.Tensor] = None,
        actions: Optional[torch.Tensor] = None,
        action_is_pad: Optional[torch.Tensor] = None,
        action_prefix: Optional[torch.Tensor] = None,
        prefix_mode: str = "trained",
        guidance: Optional[PrefixGuidance] = None,
        language_batch: Optional[dict] = None,
        sample_seeds: Optional[torch.Tensor] = None,
        training_draws: Optional[XR0TrainingDraws] = None,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        num_steps: Optional[int] = None,
        **kwargs,
    ) -> XR0ActionOutput:
        """
        Inference (no `actions`): generates a normalized action chunk, called like the official model:
        `model(**processor_outputs, state=state, action_mask=action_mask, seed=seed)`.
        Training (`actions` given): returns the flow-matching `loss` of `compute_loss` and its parts.

        Args:
            input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids: processor outputs.
            state: (B, S, state_dim) raw state, zero-padded (S = 1 for the published checkpoints).
            action_mask: (B, T, A), 1 at the robot's active action dims; T is the robot type's chunk length.
            actions, action_is_pad, sample_seeds, training_draws: (B, T, A) normalized ground truth, (B, T) bool
                padded steps, and the step's draws or their seeds (training; see `recipe_xr0.compute_loss`).
            language_batch: vision-language co-training samples (training; the processor's
                `encode_conversations`, with `labels`); their next-token loss is added with
                `config.language_loss_weight`. The robot inputs may then be absent (a language-only batch).
            action_prefix, prefix_mode, guidance, noise, num_steps: inference (see `sampler_xr0.sample_actions`).
            generator: a `torch.Generator` for all randomness. seed: an int, the same as
                `generator=torch.Generator(action_mask.device).manual_seed(seed)`: the noise of the official
                forward for that seed. Neither touches the global RNG.
        Returns:
            `XR0ActionOutput` with `actions` (B, T, A), float32, normalized; or `loss`, `flow_loss`,
            `frequency_loss` (and `language_loss`) when training.
        """
        unexpected = set(kwargs) - {"return_dict", "num_items_in_batch", "use_cache", "token_type_ids"}
        if unexpected:
            raise TypeError(f"XR0ForActionGeneration.forward got unexpected arguments {sorted(unexpected)}.")
        config = self.config
        language = None if language_batch is None else language_loss(self, **language_batch)
        if input_ids is None and language is not None:
            if data_parallel(self):
                join_action_loss_sums(self)
            return XR0ActionOutput(
                loss=config.language_loss_weight * language, language_loss=language.detach()
            )
        check_forward_inputs(config, input_ids, state, action_mask)
        if seed is not None:
            if generator is not None:
                raise ValueError("Pass either `seed` or `generator`, not both.")
            generator = generator_from_seed(
                seed, action_mask.device if torch.is_tensor(action_mask) else "cpu"
            )
        observation = self.encode_observation(
            input_ids,
            attention_mask,
            pixel_values,
            image_grid_thw,
            state,
            mm_token_type_ids=mm_token_type_ids,
        )
        if actions is not None:
            if action_prefix is not None or noise is not None or guidance is not None:
                raise ValueError(
                    "`action_prefix`, `guidance` and `noise` are inference inputs; training draws its own."
                )
            losses = compute_loss(
                self,
                observation,
                actions,
                action_mask,
                action_is_pad,
                generator,
                sample_seeds,
                training_draws,
            )
            if language is not None:
                losses["loss"] = losses["loss"] + config.language_loss_weight * language
                losses["language_loss"] = language.detach()
            return XR0ActionOutput(**losses)
        if language is not None:
            raise ValueError("`language_batch` is a training input: pass it with `actions`, or alone.")
        if training_draws is not None or sample_seeds is not None:
            raise ValueError(
                "`training_draws` and `sample_seeds` are training inputs: pass them with `actions`."
            )
        actions = sample_actions(
            self, observation, action_mask, noise, generator, num_steps, action_prefix, prefix_mode, guidance
        )
        return XR0ActionOutput(actions=actions)


# --------------------------------------------------------------------------------------------------------------
# Input checks: every tensor a caller hands in, with the field named


def check_forward_inputs(config: XR0Config, input_ids, state, action_mask) -> None:
    """The robot inputs `forward` needs, named with what to pass when one is missing."""
    if input_ids is None:
        raise ValueError("`input_ids` is required: (B, L) prompt token ids from the XR0 processor.")
    if state is None:
        raise ValueError(f"`state` is required: (B, S, {config.state_dim}) raw robot state, zero-padded.")
    if action_mask is None:
        raise ValueError(
            f"`action_mask` is required: (B, T, {config.action_dim}), 1 at the robot's active action dims "
            "for each of the T steps of its chunk (see the processor's `get_action_mask`)."
        )


def check_prompt_and_state(config: XR0Config, input_ids, attention_mask, state) -> None:
    """The prompt's token ids and padding mask, and the robot state; the images are checked by `check_images`."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(f"`input_ids` must be a non-empty (B, L) tensor, got {describe(input_ids)}.")
    vocab_size = config.vlm_config.text_config.vocab_size
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"`input_ids` must be an integer tensor, got {input_ids.dtype}.")
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size:
        raise ValueError(
            f"`input_ids` must be token ids in [0, {vocab_size}), got values in [{int(input_ids.min())}, "
            f"{int(input_ids.max())}]."
        )
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
            f"got {describe(attention_mask)}."
        )
    if not attention_mask.bool().any(dim=1).all():
        raise ValueError("`attention_mask` has a row with no real token.")
    batch_size = input_ids.shape[0]
    if (
        not isinstance(state, torch.Tensor)
        or state.ndim != 3
        or state.shape[0] != batch_size
        or state.shape[1] < 1
        or state.shape[2] != config.state_dim
    ):
        raise ValueError(
            f"`state` must have shape (B, S, state_dim) = ({batch_size}, S >= 1, {config.state_dim}) (zero-pad the "
            f"robot state to state_dim), got {describe(state)}."
        )
    if not torch.isfinite(state).all():
        raise ValueError("`state` contains NaN or infinite values.")


def check_images(config: XR0Config, input_ids, attention_mask, pixel_values, image_grid_thw) -> None:
    """The images against the prompt's image tokens: each image's patches and the tokens that stand for them."""
    vision_config = config.vlm_config.vision_config
    merge = vision_config.spatial_merge_size**2
    num_image_tokens = int(((input_ids == config.vlm_config.image_token_id) & attention_mask.bool()).sum())
    if pixel_values is None or image_grid_thw is None:
        if num_image_tokens:
            raise ValueError(
                f"The prompt holds {num_image_tokens} image tokens but `pixel_values`/`image_grid_thw` are "
                "missing: pass the images through the processor."
            )
        if pixel_values is not None or image_grid_thw is not None:
            raise ValueError("`pixel_values` and `image_grid_thw` must be given together.")
        return
    if (
        not isinstance(image_grid_thw, torch.Tensor)
        or image_grid_thw.ndim != 2
        or image_grid_thw.shape[1] != 3
    ):
        raise ValueError(
            f"`image_grid_thw` must be a (num_images, 3) tensor, got {describe(image_grid_thw)}."
        )
    if (
        image_grid_thw.dtype.is_floating_point
        or image_grid_thw.dtype == torch.bool
        or bool((image_grid_thw < 1).any())
    ):
        raise ValueError(
            f"`image_grid_thw` must hold positive integers (patches per image), got {image_grid_thw.dtype} "
            f"{image_grid_thw.tolist()}."
        )
    patch_features = (
        vision_config.in_channels * vision_config.temporal_patch_size * vision_config.patch_size**2
    )
    num_patches = int(image_grid_thw.prod(dim=-1).sum())
    if not isinstance(pixel_values, torch.Tensor) or tuple(pixel_values.shape) != (
        num_patches,
        patch_features,
    ):
        raise ValueError(
            f"`pixel_values` must have shape (num_patches, C·t·p·p) = ({num_patches}, {patch_features}) for "
            f"`image_grid_thw` {image_grid_thw.tolist()}, got {describe(pixel_values)}."
        )
    if num_image_tokens != num_patches // merge:
        raise ValueError(
            f"The prompt holds {num_image_tokens} image tokens but `image_grid_thw` {image_grid_thw.tolist()} "
            f"gives {num_patches // merge} ({num_patches} patches / {merge} merged): each image needs "
            "t·h·w/merge² `<|image_pad|>` tokens."
        )


XR0Config.register_for_auto_class()
XR0ForActionGeneration.register_for_auto_class("AutoModel")

__all__ = [
    "XR0PreTrainedModel",
    "XR0ForActionGeneration",
    "XR0Observation",
    "XR0ChunkLayout",
    "XR0ActionOutput",
    "XR0TrainingDraws",
    "generator_from_seed",
]
