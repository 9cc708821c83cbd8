"""Xiaomi-Robotics-0 (XR0): a Qwen3-VL-4B backbone whose KV cache conditions a DiT action expert
(technical report: arXiv 2602.12684).

Inference, as published:
    1. `encode_observation`: one VLM prefill over images + prompt; keep the KV cache of the last
       `dit_config.num_hidden_layers` VLM layers, the prompt's padding mask, where the DiT's positions start, and
       the [sink, state] tokens.
    2. `sample_actions`: integrate the flow from noise (t=0) to actions (t=1) with `num_inference_steps` Euler
       steps of `velocity`, one DiT pass over [sink, state, T noisy actions] that attends to the cache.
`forward` composes the two. Actions are normalized; the processor de-normalizes them.

Beyond the published code: `sample_actions(action_prefix=...)` keeps committed actions clean and conditions the
rest of the chunk on them (the report's asynchronous execution, `prefix_mode="trained"`), or, for any checkpoint,
steers every Euler step toward the previous chunk by guided inpainting (`prefix_mode="guided"`, real-time
chunking of Black et al. 2025, arXiv 2506.07339); `forward(actions=...)` returns the
flow-matching loss of the training recipe (`compute_loss`, asynchronous post-training included) and
`forward(language_batch=...)` adds vision-language co-training. One Euler loop (`_integrate`) and one velocity
function serve all of them.

Shapes: B batch, L prompt length, T chunk length (the robot type's, from `action_mask`), A = action_dim,
S state tokens, Q = 1 + S + T DiT tokens, H = DiT hidden size, h = DiT query heads, D = head_dim.
"""

import inspect
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np
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
from .sampling_xr0 import (  # noqa: F401  (part of this module's API)
    GUIDANCE_JACOBIANS,
    MASK_SCHEDULES,
    PREFIX_MODES,
    PrefixGuidance,
)

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


@dataclass
class XR0TrainingDraws:
    """
    The random draws of one training step, one row per row of the repeated batch: B samples x R =
    `config.training_repeat` repeats, sample i's repeats in rows i·R .. i·R + R - 1.

    `compute_loss` samples them (`sample_training_draws`); pass your own as `forward(actions=...,
    training_draws=...)` or `compute_loss(..., draws=...)` to compute the loss of given draws, e.g. to hold it
    against another implementation of the recipe.

    Args:
        noise: (B·R, T, A) float, the flow's x_0 (standard normal).
        timestep: (B·R,) float, the flow time t in [0, 1] (0 = noise, 1 = data).
        prefix_lengths: (B·R,) int, p: the row's first p actions are committed (clean, excluded from the loss);
            0 = no prefix, at most T.
        hidden_actions: (B·R, T) bool, the prefix tokens hidden from the row's noisy tokens; only inside its
            prefix.
    """

    noise: torch.Tensor
    timestep: torch.Tensor
    prefix_lengths: torch.Tensor
    hidden_actions: torch.Tensor

    def check(self, rows: int, action_length: int, action_dim: int) -> None:
        """Raises a ValueError naming the first field that does not fit a repeated batch of `rows` rows."""
        expected = {
            "noise": (rows, action_length, action_dim),
            "timestep": (rows,),
            "prefix_lengths": (rows,),
            "hidden_actions": (rows, action_length),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                raise ValueError(
                    f"`training_draws.{name}` must be a tensor of shape {shape} (B·R rows: the batch times "
                    f"config.training_repeat), got {_describe(value)}."
                )
        if not self.noise.is_floating_point() or not self.timestep.is_floating_point():
            raise ValueError("`training_draws.noise` and `training_draws.timestep` must be floating point.")
        if self.prefix_lengths.is_floating_point() or self.prefix_lengths.dtype == torch.bool:
            raise ValueError(
                f"`training_draws.prefix_lengths` must be integers, got {self.prefix_lengths.dtype}."
            )
        if self.hidden_actions.dtype != torch.bool:
            raise ValueError(
                f"`training_draws.hidden_actions` must be bool, got {self.hidden_actions.dtype}."
            )
        check_finite("training_draws.noise", self.noise)
        check_finite("training_draws.timestep", self.timestep)
        if ((self.timestep < 0) | (self.timestep > 1)).any():
            raise ValueError("`training_draws.timestep` must lie in [0, 1].")
        if ((self.prefix_lengths < 0) | (self.prefix_lengths > action_length)).any():
            raise ValueError(f"`training_draws.prefix_lengths` must lie in [0, T = {action_length}].")
        outside = ~prefix_positions(self.prefix_lengths, action_length).to(self.hidden_actions.device)
        if (self.hidden_actions & outside).any():
            raise ValueError(
                "`training_draws.hidden_actions` may hide prefix tokens only (steps < prefix_lengths)."
            )

    def to(self, device) -> "XR0TrainingDraws":
        return XR0TrainingDraws(
            noise=self.noise.to(device=device, dtype=torch.float32),
            timestep=self.timestep.to(device=device, dtype=torch.float32),
            prefix_lengths=self.prefix_lengths.to(device=device, dtype=torch.long),
            hidden_actions=self.hidden_actions.to(device),
        )


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


def prefix_positions(prefix_lengths: torch.Tensor, action_length: int) -> torch.Tensor:
    """(B,) prefix lengths -> (B, T) bool, True at committed (clean) action positions."""
    steps = torch.arange(action_length, device=prefix_lengths.device)
    return steps[None] < prefix_lengths[:, None]


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


def frequency_terms(loss_mask: torch.Tensor, prefix_lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """How many magnitudes the frequency term averages: over the samples, each sample's active dims x the
    ((T - p) // 2 + 1) frequencies of its T - p steps after its prefix of p. A sample none of whose steps count
    (all padded or committed) has no active dim. `loss_mask` (B, T, A) is 0 at prefix steps; `prefix_lengths`
    (B,), None = no prefix."""
    action_length = loss_mask.shape[1]
    active_dims = loss_mask.amax(dim=1).sum(dim=1)  # (B,)
    if prefix_lengths is None:
        prefix_lengths = torch.zeros_like(active_dims, dtype=torch.long)
    frequencies = (action_length - prefix_lengths.to(loss_mask.device)) // 2 + 1  # (B,)
    return (active_dims * frequencies).sum()


def frequency_loss(
    velocity: torch.Tensor,
    target: torch.Tensor,
    loss_mask: torch.Tensor,
    sample_weight: Optional[torch.Tensor] = None,
    normalizer: Optional[torch.Tensor] = None,
    prefix_lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The released frequency term: the mean magnitude of rfft(prediction) - rfft(target) along time (default
    norm) over each sample's steps after its prefix (a DFT of length T - p), each sample's magnitudes weighted by
    `sample_weight` (B,) (its mean loss weight). Unlike the release, the mean runs over the robot's active dims
    only, and padded steps are zeroed before the transform. `prefix_lengths` (B,): None = no prefix.
    `normalizer`: the count to divide by (`frequency_terms` of this batch when None; data-parallel training
    passes the mean over the ranks)."""
    batch_size, action_length, _ = velocity.shape
    if prefix_lengths is None:
        prefix_lengths = torch.zeros(batch_size, dtype=torch.long, device=velocity.device)
    prefix_lengths = prefix_lengths.to(velocity.device)
    error = (velocity - target) * loss_mask  # (B, T, A); rfft is linear: rfft(v) - rfft(t) = rfft(v - t)
    active_dims = loss_mask.amax(dim=1, keepdim=True)  # (B, 1, A)
    if sample_weight is None:
        sample_weight = torch.ones(batch_size, device=velocity.device)
    total = error.new_zeros(())
    # Samples with the same prefix length share a DFT length: one transform per length present.
    for length in sorted(set(prefix_lengths.tolist())):
        if length >= action_length:  # the whole chunk is committed: nothing to transform
            continue
        rows = prefix_lengths == length
        magnitude = torch.fft.rfft(error[rows, length:], dim=1).abs()  # (b, (T - p) // 2 + 1, A)
        total = total + (magnitude * active_dims[rows] * sample_weight[rows, None, None]).sum()
    if normalizer is None:
        normalizer = frequency_terms(loss_mask, prefix_lengths)
    return total / normalizer.clamp(min=1.0)


def guidance_mask(
    inference_delay: int, overlap: int, action_length: int, schedule: str, device=None
) -> torch.Tensor:
    """(T,) soft mask W of guided inpainting: 1 on the first d = `inference_delay` steps, the schedule's decay on
    steps d .. p - 1 (p = `overlap`, the previous chunk's steps that this chunk overlaps), 0 from p on."""
    steps = torch.arange(action_length, dtype=torch.float32, device=device)
    c = ((overlap - steps) / (overlap - inference_delay + 1)).clamp(min=0.0)
    decay = {
        "exp": c * torch.expm1(c) / math.expm1(1.0),
        "linear": c,
        "ones": torch.ones_like(c),
        "zeros": torch.zeros_like(c),
    }[schedule]
    committed, overlapping = steps < inference_delay, steps < overlap
    return torch.where(committed, 1.0, torch.where(overlapping, decay, 0.0))


def guidance_weight(timestep: float, max_weight: float) -> float:
    """min(β, (1 - τ) / (τ · r²)), r² = (1 - τ)² / (τ² + (1 - τ)²): the ΠGDM weight, infinite at τ = 0 and τ = 1."""
    if timestep <= 0.0 or timestep >= 1.0:
        return max_weight
    return min(max_weight, (timestep**2 + (1.0 - timestep) ** 2) / (timestep * (1.0 - timestep)))


def generator_from_seed(seed, device) -> torch.Generator:
    """A fresh generator on `device` seeded with `seed`: the draw of the official forward's
    `torch.manual_seed(seed)`, without touching the global RNG."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__} {seed!r}.")
    seed = int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"`seed` must be in [-2**63, 2**64), got {seed}.")
    return torch.Generator(device=device).manual_seed(seed)


def data_parallel_sum(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over the ranks of data-parallel training (see `data_parallel`), as a detached copy.
    The loss's batch-wide normalizers (the masked MSE's and the frequency term's counts, the reweighting's mean
    error) use these sums, so the ranks' averaged gradient equals the gradient of their whole global batch as one
    process computes it, however unevenly padding and prefixes spread over the ranks."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    total = value.detach().float().clone()
    torch.distributed.all_reduce(total)
    return total


def data_parallel(model: torch.nn.Module) -> bool:
    """Whether `model` trains (training mode) in a process group of several ranks, which all run its loss."""
    return (
        model.training
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def uniform(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (so a CPU generator drives a GPU model), returned on `device`."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


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
        # The Euler loop behind `sample_actions` (plain and trained-prefix sampling): `_integrate` when None, else
        # what `optimize_sampler` built from it (a compiled function, a CUDA-graph replayer).
        self._inference_loop = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.vlm.set_input_embeddings(value)

    # ---- observation -----------------------------------------------------------------------------------------

    def _vlm_inputs(self, input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids) -> dict:
        position_ids = prompt_position_ids(
            self.vlm, input_ids, attention_mask, image_grid_thw, mm_token_type_ids
        )
        return dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            return_dict=True,
        )

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
        check_observation(self.config, input_ids, attention_mask, pixel_values, image_grid_thw, state)
        config = self.config
        vlm_inputs = self._vlm_inputs(
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
        cache_keys, cache_values = [], []
        for keys, values in layer_kv:
            # (B, H_kv, L, D) -> (B, h, L, D)
            cache_keys.append(keys.masked_fill(~keep, 0).repeat_interleave(repeats, dim=1))
            cache_values.append(values.masked_fill(~keep, 0).repeat_interleave(repeats, dim=1))

        # The DiT tokens continue the prompt's positions, each MRoPE axis from its own maximum, as the official
        # forward computes them.
        next_position = position_ids.masked_fill(~cache_mask[None], 0).amax(dim=2) + 1  # (3, B)

        state_tokens = self.state_projector(state.to(self.dtype))  # (B, S, H)
        sink = self.sink.weight[None].expand(state.shape[0], -1, -1)  # (B, 1, H)
        return XR0Observation(
            cache_keys=tuple(cache_keys),
            cache_values=tuple(cache_values),
            cache_mask=cache_mask,
            next_position=next_position,
            context_tokens=torch.cat([sink, state_tokens], dim=1),
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
        config = self.config
        first_action = 1 + observation.state_length
        device = observation.next_position.device
        steps = torch.arange(first_action + action_length, device=device)
        position_ids = observation.next_position[..., None] + steps  # (3, B, Q)
        is_noisy = torch.ones(observation.batch_size, action_length, dtype=torch.bool, device=device)
        if prefix_lengths is not None:
            is_noisy = ~prefix_positions(prefix_lengths, action_length).to(device)
        position_ids[..., first_action:] += (
            config.noisy_action_position_offset * is_noisy.to(position_ids)[None]
        )
        attention_mask = build_dit_attention_mask(
            observation.cache_mask,
            observation.state_length,
            action_length,
            config.action_attention_window,
            hidden_actions=hidden_actions,
            prefix_lengths=prefix_lengths
            if prefix_lengths is not None
            else torch.zeros(observation.batch_size, dtype=torch.long, device=device),
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

    def sample_noise(self, like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """
        Standard normal noise of `like`'s shape, drawn in `like`'s dtype on the generator's device (`like`'s
        device without one), returned as float32 on the model's device.

        Drawn this way, `generator=torch.Generator(action_mask.device).manual_seed(s)` gives exactly the noise of
        the official forward with `seed=s` (which seeds the global RNG and calls `randn_like(action_mask)`).
        """
        device = generator.device if generator is not None else like.device
        noise = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
        return noise.to(device=self.device, dtype=torch.float32)

    def sample_actions(
        self,
        observation: XR0Observation,
        action_mask: torch.Tensor,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        num_steps: Optional[int] = None,
        action_prefix: Optional[torch.Tensor] = None,
        prefix_mode: str = "trained",
        guidance: Optional[PrefixGuidance] = None,
    ) -> torch.Tensor:
        """
        Euler integration of the flow from noise (t=0) to actions (t=1): x <- x + v(x, k/N)·(1/N), k = 0..N-1,
        in float32 whatever the model's dtype.

        Args:
            observation: from `encode_observation`.
            action_mask: (B, T, A); T (the chunk length) is the robot type's, taken from this mask.
            noise: (B, T, A) initial x_0; drawn like `action_mask` from `generator` (or fresh) when None.
            num_steps: N, defaults to `config.num_inference_steps`.
            action_prefix: (B, p, A) normalized actions of the previous chunk for the first p steps of this one
                (real-time execution), p <= T. How they condition the chunk is `prefix_mode`:
                - "trained" (a checkpoint post-trained with prefixes, `config.action_prefix_probability` > 0): the
                  p actions are committed; they stay clean through every step (zero velocity), the DiT attends to
                  them as it learned to, and they are returned as given.
                - "guided" (any checkpoint): every Euler step's velocity is corrected toward them by guided
                  inpainting (`PrefixGuidance`): the committed `guidance.inference_delay` steps with weight 1,
                  the rest of the overlap with the mask's decaying weight. The committed steps are returned as
                  given, the others as sampled.
            guidance: the guided mode's settings; `PrefixGuidance()` when None.
        Returns:
            (B, T, A) float32 normalized actions.
        """
        num_steps = self.config.num_inference_steps if num_steps is None else num_steps
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}.")
        if prefix_mode not in PREFIX_MODES:
            raise ValueError(f"`prefix_mode` must be one of {PREFIX_MODES}, got {prefix_mode!r}.")
        if guidance is not None and prefix_mode != "guided":
            raise ValueError(f"`guidance` applies to prefix_mode='guided', not {prefix_mode!r}.")
        batch_size = observation.batch_size
        action_length = check_action_tensor("action_mask", action_mask, batch_size, self.config.action_dim)
        if noise is None:
            noise = self.sample_noise(action_mask, generator)
        else:
            check_action_tensor("noise", noise, batch_size, self.config.action_dim, action_length)
        loop = self._integrate if self._inference_loop is None else self._inference_loop
        if action_prefix is None:
            return loop(observation, action_mask, noise, num_steps)
        clean_actions, prefix_lengths = prefix_as_chunk(
            action_prefix, batch_size, action_length, self.config.action_dim
        )
        if prefix_mode == "trained":
            if not self.config.action_prefix_probability > 0 and not torch.compiler.is_compiling():
                logger.warning_once(
                    "This checkpoint was trained without action prefixes (config.action_prefix_probability = 0), "
                    "so prefix_mode='trained' conditions it on inputs it never saw. Use prefix_mode='guided' "
                    "(guided inpainting, for any checkpoint) or sample without a prefix."
                )
            return loop(observation, action_mask, noise, num_steps, clean_actions, prefix_lengths)

        guidance = PrefixGuidance() if guidance is None else guidance
        overlap = action_prefix.shape[1]
        delay = overlap if guidance.inference_delay is None else guidance.inference_delay
        if delay > overlap:
            raise ValueError(
                f"`guidance.inference_delay` d = {delay} is beyond the prefix's p = {overlap} steps: the committed "
                "steps are the front of the previous chunk's overlap, so d <= p."
            )
        weights = guidance_mask(delay, overlap, action_length, guidance.mask_schedule, self.device)
        actions = self._integrate_guided(
            observation, action_mask, noise, num_steps, clean_actions, weights, guidance
        )
        actions[:, :delay] = clean_actions[:, :delay].to(actions)
        return actions

    def _integrate(
        self,
        observation,
        action_mask,
        noise,
        num_steps,
        clean_actions=None,
        prefix_lengths=None,
        hidden_actions=None,
    ):
        """The Euler loop shared by inference, prefix-conditioned inference and training's reweighting pass.
        Positions below `prefix_lengths` (B,) hold `clean_actions` (B, T, A) throughout; `hidden_actions` (B, T)
        (training's reweighting pass only): prefix tokens the noisy tokens do not see."""
        actions = noise.to(device=self.device, dtype=torch.float32)
        action_mask = action_mask.to(self.device)
        action_length = actions.shape[1]
        layout = self.chunk_layout(observation, action_length, prefix_lengths, hidden_actions)
        is_prefix = None
        if prefix_lengths is not None:
            is_prefix = prefix_positions(prefix_lengths, action_length).to(self.device)[
                ..., None
            ]  # (B, T, 1)
            actions = torch.where(is_prefix, clean_actions.to(actions), actions)
        dt = 1.0 / num_steps
        for step in range(num_steps):
            timestep = torch.full(
                (observation.batch_size,), step * dt, device=self.device, dtype=torch.float32
            )
            velocity = self.velocity(actions, timestep, observation, action_mask, layout).float()
            if is_prefix is not None:
                velocity = velocity.masked_fill(is_prefix, 0.0)
            actions = actions + dt * velocity
        return actions

    def optimize_sampler(
        self,
        compile: bool = True,
        mode: Optional[str] = None,
        backend: str = "inductor",
        dynamic: Optional[bool] = None,
        cuda_graphs: bool = False,
        max_graphs: int = 16,
    ) -> "XR0ForActionGeneration":
        """
        Opt-in fast path for the Euler loop of `sample_actions` (plain and trained-prefix sampling; guided sampling
        needs autograd and stays eager). The input checks keep running eagerly before the loop; the VLM prefill
        (`encode_observation`) is not touched. Call it after moving the model to its device and dtype.

        Args:
            compile: `torch.compile(..., fullgraph=True)` the loop: the 5 DiT evaluations, the chunk layout and
                the Euler updates in one graph. The first call per input geometry compiles (seconds to minutes).
            mode, backend, dynamic: passed to `torch.compile`. With `dynamic=None` a second prompt length makes
                torch recompile once with a dynamic prompt dimension.
            cuda_graphs: capture the loop as a CUDA graph per input geometry (batch, T, prompt length, prefix or
                not, dtypes, number of steps) and replay it: on a GPU the 5 steps are otherwise bound by kernel
                launches. CUDA only. Inputs are copied into static buffers and the output copied out, so results
                never alias the graph's memory.
            max_graphs: captured geometries kept (least recently used dropped first).
        Returns:
            self. `optimize_sampler(compile=False, cuda_graphs=False)` restores the eager loop.
        """
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"`cuda_graphs=True` needs the model on a CUDA device; it is on {self.device}.")
        # The DiT's fallback notice, if any, now: a traced call skips it.
        dit_attention_function(self.config._attn_implementation)
        loop = self._integrate
        if compile:
            loop = torch.compile(loop, fullgraph=True, mode=mode, backend=backend, dynamic=dynamic)
        if cuda_graphs:
            loop = CUDAGraphLoop(loop, max_graphs)
        self._inference_loop = loop if compile or cuda_graphs else None
        return self

    def _integrate_guided(self, observation, action_mask, noise, num_steps, target, weights, guidance):
        """The Euler loop of guided inpainting: x <- x + (v + w(τ)·g)·(1/N), g from `guided_velocity`, toward
        `target` (B, T, A) with the soft mask `weights` (T,). Every DiT token is noisy: no clean prefix."""
        # Gradients are needed even under a caller's torch.inference_mode(); tensors made there cannot enter
        # autograd, so the loop then works on ordinary copies of them.
        with torch.inference_mode(False), torch.enable_grad():
            if torch.is_inference(observation.context_tokens):
                observation = observation.clone()
            action_mask = action_mask.to(self.device).clone()
            target = target.to(device=self.device, dtype=torch.float32).clone()
            weights = weights.to(self.device).clone()[None, :, None]  # (1, T, 1)
            actions = noise.to(device=self.device, dtype=torch.float32).clone()
            layout = self.chunk_layout(observation, actions.shape[1])
            dt = 1.0 / num_steps
            for step in range(num_steps):
                timestep = torch.full(
                    (observation.batch_size,), step * dt, device=self.device, dtype=torch.float32
                )
                weight = guidance_weight(step * dt, guidance.max_weight)
                if weight == 0.0:
                    with torch.no_grad():
                        velocity = self.velocity(actions, timestep, observation, action_mask, layout).float()
                    actions = actions + dt * velocity
                    continue
                velocity, correction = self.guided_velocity(
                    actions, timestep, observation, action_mask, target, weights, guidance.jacobian, layout
                )
                actions = actions + dt * (velocity + weight * correction)
        return actions

    def guided_velocity(
        self,
        noisy_actions: torch.Tensor,
        timestep: torch.Tensor,
        observation: XR0Observation,
        action_mask: torch.Tensor,
        target: torch.Tensor,
        weights: torch.Tensor,
        jacobian: str = "vjp",
        layout: Optional[XR0ChunkLayout] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The velocity and guided inpainting's correction at one Euler step (`PrefixGuidance`), before the weight.

        Args:
            noisy_actions: (B, T, A) A^τ. timestep: (B,) τ.
            target: (B, T, A) Y, the previous chunk's actions in front. weights: broadcastable to (B, T, A), W.
            jacobian: "vjp": g = (W ⊙ (Y - Â¹))ᵀ ∂Â¹/∂A^τ through the DiT; "identity": g = W ⊙ (Y - Â¹).
        Returns:
            (velocity v, correction g), each (B, T, A) float32 and detached; the model's parameters get no `.grad`.
        """
        one_minus_t = (1.0 - timestep.float())[:, None, None]
        if jacobian == "identity":
            with torch.no_grad():
                velocity = self.velocity(noisy_actions, timestep, observation, action_mask, layout).float()
                denoised = noisy_actions + one_minus_t * velocity  # Â¹
                return velocity, weights * action_mask * (target - denoised)
        if jacobian != "vjp":
            raise ValueError(f"`jacobian` must be one of {GUIDANCE_JACOBIANS}, got {jacobian!r}.")
        with torch.enable_grad():
            noisy_actions = noisy_actions.detach().float().requires_grad_(True)
            velocity = self.velocity(noisy_actions, timestep, observation, action_mask, layout).float()
            denoised = noisy_actions + one_minus_t * velocity
            error = (weights * action_mask * (target - denoised)).detach()
            # Only the actions are differentiated: autograd.grad leaves the parameters' .grad untouched.
            (correction,) = torch.autograd.grad(denoised, noisy_actions, grad_outputs=error)
        return velocity.detach(), correction

    # ---- training --------------------------------------------------------------------------------------------

    def sample_time(self, batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B,) flow times t = (1 - u)·time_max, u ~ Beta(alpha, 1) drawn by inverse CDF (u = U^(1/alpha))."""
        u = uniform((batch_size,), generator, self.device) ** (1.0 / self.config.time_sampling_alpha)
        return (1.0 - u) * self.config.time_max

    def sample_prefix(self, batch_size: int, action_length: int, generator: Optional[torch.Generator] = None):
        """Training prefixes: (prefix_lengths (B,), hidden_actions (B, T) bool). With probability
        `action_prefix_probability` a sample gets p ~ U{1..min(max_action_prefix_length, T)} clean actions; each of
        its prefix tokens but the last `prefix_keep_last` is hidden from the noisy tokens with probability
        `prefix_hide_probability`. The released code draws p and these coins once per batch (shared by its
        samples); here each sample draws its own (the same distribution per sample, more variety per batch)."""
        config = self.config
        longest = min(config.max_action_prefix_length, action_length)
        use_prefix = uniform((batch_size,), generator, self.device) < config.action_prefix_probability
        lengths = 1 + (uniform((batch_size,), generator, self.device) * longest).long().clamp(max=longest - 1)
        prefix_lengths = torch.where(use_prefix, lengths, torch.zeros_like(lengths))
        steps = torch.arange(action_length, device=self.device)[None]
        in_prefix = steps < prefix_lengths[:, None]
        kept = steps >= prefix_lengths[:, None] - config.prefix_keep_last
        coin = uniform((batch_size, action_length), generator, self.device) < config.prefix_hide_probability
        return prefix_lengths, in_prefix & ~kept & coin

    def sample_training_draws(
        self,
        actions: torch.Tensor,
        repeats: int,
        generator: Optional[torch.Generator] = None,
        sample_seeds: Optional[torch.Tensor] = None,
    ) -> XR0TrainingDraws:
        """
        A training step's random draws for `actions` (B·R, T, A), the R repeats of each sample side by side.

        From `generator` for the whole batch (noise, then flow times, then prefixes); or, with `sample_seeds` (B,),
        sample i's R repeats come from a generator seeded with `sample_seeds[i]`, in the same order. A run whose
        seeds are a function of the run's seed and each sample's identity (`xr0.training.data.sample_seed`) then
        draws the same for a sample on any rank, with any number of processes, before and after a resume.
        """
        action_length = actions.shape[1]
        if sample_seeds is None:
            noise = self.sample_noise(actions, generator)
            timestep = self.sample_time(actions.shape[0], generator)
            return XR0TrainingDraws(
                noise, timestep, *self.sample_prefix(actions.shape[0], action_length, generator)
            )
        if not isinstance(sample_seeds, torch.Tensor) or sample_seeds.shape != (actions.shape[0] // repeats,):
            raise ValueError(
                f"`sample_seeds` must be a ({actions.shape[0] // repeats},) int tensor, one seed per sample, got "
                f"{_describe(sample_seeds)}."
            )
        draws = []
        for i, seed in enumerate(sample_seeds.tolist()):
            own = torch.Generator().manual_seed(seed)
            noise = self.sample_noise(actions[i * repeats : (i + 1) * repeats], own)
            timestep = self.sample_time(repeats, own)
            draws.append((noise, timestep, *self.sample_prefix(repeats, action_length, own)))
        return XR0TrainingDraws(*(torch.cat(parts) for parts in zip(*draws, strict=True)))

    def compute_loss(
        self,
        observation: XR0Observation,
        actions: torch.Tensor,
        action_mask: torch.Tensor,
        action_is_pad: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        sample_seeds: Optional[torch.Tensor] = None,
        draws: Optional[XR0TrainingDraws] = None,
    ) -> dict:
        """
        Flow-matching loss of the training recipe (report: pre- and post-training), asynchronous post-training
        included.

        Args:
            observation: from `encode_observation` (with gradients where the VLM trains).
            actions: (B, T, A) normalized ground-truth chunk; T is the robot type's chunk length.
            action_mask: (B, T, A), the robot's active dims (also the DiT input mask, as at inference).
            action_is_pad: (B, T) bool, steps past the episode end (excluded from the loss).
            generator: source of every random draw (noise, t, prefixes, hidden tokens) for the whole batch.
            sample_seeds: (B,) int64, one seed per sample instead (see `sample_training_draws`): a sample's draws
                then depend on its seed only, not on its batch, its rank or the number of processes.
            draws: the step's draws given instead of sampled (`XR0TrainingDraws`, B·R rows); then neither
                `generator` nor `sample_seeds`.
        Returns:
            dict with `loss` and its parts `flow_loss` (masked MSE) and `frequency_loss`, each a scalar tensor.
            Under data-parallel training the masked MSE is normalized by the mean count over the ranks, so the
            ranks' averaged gradient is that of the whole global batch (as one process computes it).
        """
        config = self.config
        batch_size = observation.batch_size
        action_length = check_action_tensor("actions", actions, batch_size, config.action_dim)
        check_action_tensor("action_mask", action_mask, batch_size, config.action_dim, action_length)
        valid = torch.ones(batch_size, action_length, dtype=torch.bool, device=self.device)
        if action_is_pad is not None:
            if not isinstance(action_is_pad, torch.Tensor) or tuple(action_is_pad.shape) != (
                batch_size,
                action_length,
            ):
                raise ValueError(
                    f"`action_is_pad` must have shape (B, T) = ({batch_size}, {action_length}), "
                    f"got {_describe(action_is_pad)}."
                )
            valid = ~action_is_pad.to(self.device).bool()

        repeats = config.training_repeat
        observation = observation.repeat_interleave(repeats)
        actions = actions.to(self.device, torch.float32).repeat_interleave(repeats, dim=0)
        action_mask = action_mask.to(self.device).repeat_interleave(repeats, dim=0)
        valid = valid.repeat_interleave(repeats, dim=0)
        batch_size *= repeats

        if draws is None:
            draws = self.sample_training_draws(actions, repeats, generator, sample_seeds)
        else:
            if generator is not None or sample_seeds is not None:
                raise ValueError("Pass `draws` or a source of draws (`generator`, `sample_seeds`), not both.")
            if not isinstance(draws, XR0TrainingDraws):
                raise TypeError(f"`draws` must be an XR0TrainingDraws, got {type(draws).__name__}.")
            draws.check(batch_size, action_length, config.action_dim)
            draws = draws.to(self.device)
        noise, timestep = draws.noise, draws.timestep
        prefix_lengths, hidden_actions = draws.prefix_lengths, draws.hidden_actions
        t = timestep[:, None, None]
        noisy_actions = (1 - t) * noise + t * actions
        target = actions - noise

        is_prefix = prefix_positions(prefix_lengths, action_length)  # (B, T)
        layout = self.chunk_layout(observation, action_length, prefix_lengths, hidden_actions)
        noisy_actions = torch.where(is_prefix[..., None], actions, noisy_actions)
        velocity = self.velocity(noisy_actions, timestep, observation, action_mask, layout).float()
        velocity = velocity.masked_fill(is_prefix[..., None], 0.0)

        loss_mask = action_mask.float() * (valid & ~is_prefix)[..., None].float()  # (B, T, A)
        weight = torch.ones_like(loss_mask)
        uses_prefix = prefix_lengths > 0
        # Under data-parallel training every rank joins the reweighting's all-reduce, prefixes or not.
        if config.loss_reweighting and (bool(uses_prefix.any()) or data_parallel(self)):
            weight = self._prefix_loss_weight(
                observation, actions, action_mask, prefix_lengths, loss_mask, noise, hidden_actions
            )
            weight = torch.where(uses_prefix[:, None, None], weight, torch.ones_like(weight))

        # Each rank's loss is averaged over the ranks: normalizing both terms by their mean counts over the ranks
        # makes that average the global batch's loss (in one process: the counts). One all-reduce for both.
        counts = torch.stack([loss_mask.sum(), frequency_terms(loss_mask, prefix_lengths)])
        if data_parallel(self):
            counts = data_parallel_sum(counts) / torch.distributed.get_world_size()
        count, spectral_count = counts.clamp(min=1.0).unbind()
        flow_loss = ((velocity - target) ** 2 * loss_mask * weight).sum() / count
        # Each sample's mean weight scales its frequency term, as released.
        sample_weight = (weight * loss_mask).sum(dim=(1, 2)) / loss_mask.sum(dim=(1, 2)).clamp(min=1.0)
        spectral_loss = frequency_loss(
            velocity, target, loss_mask, sample_weight, spectral_count, prefix_lengths
        )
        # The released loss: 0.5 · weighted MSE + c · frequency term (c = 0 when the term is off).
        loss = 0.5 * flow_loss + config.frequency_loss_weight * spectral_loss
        return {"loss": loss, "flow_loss": flow_loss.detach(), "frequency_loss": spectral_loss.detach()}

    def _join_action_loss_sums(self) -> None:
        """A rank whose batch holds vision-language samples only still joins the action loss's all-reduces, in
        `compute_loss`'s order (the reweighting's error sum and count, then the two terms' counts), adding zeros: the
        other ranks would otherwise wait for it. Zero counts keep the global batch's normalization exact."""
        zero = torch.zeros((), device=self.device)
        for _ in range(2 if self.config.loss_reweighting else 0):  # the reweighting's error sum and count
            data_parallel_sum(zero)
        data_parallel_sum(torch.zeros(2, device=self.device))  # the two terms' counts

    @torch.no_grad()
    def _prefix_loss_weight(
        self, observation, actions, action_mask, prefix_lengths, loss_mask, noise, hidden_actions=None
    ):
        """|actions generated from the prefix and the sample's own training noise - ground truth| / its masked
        mean, clamped to `loss_reweight_range` (report: post-training; released code). The generation attends as
        the training pass does: the prefix tokens hidden there (`hidden_actions` (B, T)) are hidden here too."""
        generated = self._integrate(
            observation,
            action_mask,
            noise,
            self.config.num_inference_steps,
            actions,
            prefix_lengths,
            hidden_actions=hidden_actions,
        )
        error = (generated - actions).abs()
        has_prefix = (prefix_lengths > 0)[:, None, None].float()
        masked = loss_mask * has_prefix
        # The mean over the global batch: the same weights whatever rank a sample trains on.
        total, count = (error * masked).sum(), masked.sum()
        if data_parallel(self):
            total, count = data_parallel_sum(total), data_parallel_sum(count)
        mean_error = total / count.clamp(min=1.0)
        low, high = self.config.loss_reweight_range
        return (error / mean_error.clamp(min=1e-8)).clamp(low, high)

    def language_loss(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        labels: torch.LongTensor,
        pixel_values: Optional[torch.Tensor] = None,
        image_grid_thw: Optional[torch.LongTensor] = None,
        mm_token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Next-token loss of the VLM (through its tied LM head) on vision-language samples: co-training keeps
        the backbone's language ability while the action expert trains (report: 1 VL sample per 6 robot).
        The mean cross-entropy over the answer tokens, as transformers' causal-LM loss computes it, but the LM
        head runs at those positions only: full logits would be (B, L, 151936), most of a small model's step."""
        if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
            raise ValueError(
                f"`language_batch['labels']` must have the shape of its `input_ids` {tuple(input_ids.shape)}."
            )
        check_images(self.config, input_ids, attention_mask, pixel_values, image_grid_thw)
        vlm_inputs = self._vlm_inputs(
            input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids
        )
        hidden = self.vlm.model(**vlm_inputs, use_cache=False).last_hidden_state  # (B, L, H)
        targets = labels[:, 1:].to(hidden.device)  # token k + 1 is predicted at position k
        answered = targets != -100
        if not answered.any():
            raise ValueError("`language_batch['labels']` holds no target token (all -100).")
        logits = self.vlm.lm_head(hidden[:, :-1][answered])  # (N_answer_tokens, vocab)
        return F.cross_entropy(logits.float(), targets[answered])

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
            action_mask: (B, T, A), 1 at the robot's active action dims; T is the robot type's chunk length (10
                for LIBERO and CALVIN, 4 for SimplerEnv, 15 or 30 for the pre-training robot types).
            actions: (B, T, A) normalized ground truth (training). action_is_pad: (B, T) bool (training).
            action_prefix: (B, p, A) normalized actions of the previous chunk for the first p steps (inference),
                used as `prefix_mode` says: "trained" (committed, clean tokens; checkpoints post-trained with
                prefixes) or "guided" (guided inpainting with `guidance`, any checkpoint); see `sample_actions`.
            language_batch: vision-language co-training samples (training): a dict with `input_ids`,
                `attention_mask`, `labels` (-100 = ignored) and optionally `pixel_values`, `image_grid_thw`
                (see the processor's `encode_conversations`); their next-token loss is added with
                `config.language_loss_weight`. The robot inputs may then be absent (a language-only batch).
            sample_seeds: (B,) int64, each sample's seed for its training draws (see `sample_training_draws`).
            training_draws: the training step's draws given instead of sampled (`XR0TrainingDraws`: noise, flow
                times, prefix lengths, hidden prefix tokens, one row per repeated sample).
            noise: (B, T, A) initial noise; overrides `generator`/`seed`.
            generator: a `torch.Generator` for all randomness; the noise is drawn in `action_mask`'s shape and
                dtype on the generator's device. seed: an int; the same as
                `generator=torch.Generator(action_mask.device).manual_seed(seed)`, which draws exactly the noise of
                the official forward for that seed. Neither touches the global RNG; with none of
                noise/generator/seed, fresh noise is drawn.
            num_steps: Euler steps, defaults to `config.num_inference_steps`.
        Returns:
            `XR0ActionOutput` with `actions` (B, T, A), float32, normalized; or `loss`, `flow_loss`,
            `frequency_loss` when training.
        """
        unexpected = set(kwargs) - {"return_dict", "num_items_in_batch", "use_cache", "token_type_ids"}
        if unexpected:
            raise TypeError(f"XR0ForActionGeneration.forward got unexpected arguments {sorted(unexpected)}.")
        language_loss = None if language_batch is None else self.language_loss(**language_batch)
        if input_ids is None and language_loss is not None:
            if data_parallel(self):
                self._join_action_loss_sums()
            return XR0ActionOutput(
                loss=self.config.language_loss_weight * language_loss, language_loss=language_loss.detach()
            )
        if input_ids is None:
            raise ValueError("`input_ids` is required: (B, L) prompt token ids from the XR0 processor.")
        if state is None:
            raise ValueError(
                f"`state` is required: (B, S, {self.config.state_dim}) raw robot state, zero-padded."
            )
        if action_mask is None:
            raise ValueError(
                f"`action_mask` is required: (B, T, {self.config.action_dim}), 1 at the robot's active action dims "
                "for each of the T steps of its chunk (see the processor's `get_action_mask`)."
            )
        if seed is not None:
            if generator is not None:
                raise ValueError("Pass either `seed` or `generator`, not both.")
            generator = generator_from_seed(
                seed, action_mask.device if isinstance(action_mask, torch.Tensor) else "cpu"
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
            losses = self.compute_loss(
                observation,
                actions,
                action_mask,
                action_is_pad,
                generator=generator,
                sample_seeds=sample_seeds,
                draws=training_draws,
            )
            if language_loss is not None:
                losses["loss"] = losses["loss"] + self.config.language_loss_weight * language_loss
                losses["language_loss"] = language_loss.detach()
            return XR0ActionOutput(**losses)
        if language_loss is not None:
            raise ValueError("`language_batch` is a training input: pass it with `actions`, or alone.")
        if training_draws is not None or sample_seeds is not None:
            raise ValueError(
                "`training_draws` and `sample_seeds` are training inputs: pass them with `actions`."
            )
        actions = self.sample_actions(
            observation,
            action_mask,
            noise=noise,
            generator=generator,
            num_steps=num_steps,
            action_prefix=action_prefix,
            prefix_mode=prefix_mode,
            guidance=guidance,
        )
        return XR0ActionOutput(actions=actions)


class CUDAGraphLoop:
    """
    The Euler loop replayed from CUDA graphs, one captured graph per input geometry.

    A call copies its inputs into the graph's static buffers, replays the graph and returns a copy of the static
    output. The first call of a geometry warms the loop up on a side stream (compiling it, when it is compiled),
    then captures it. Runs under `torch.inference_mode()`: sampling never needs gradients here.
    """

    def __init__(self, loop, max_graphs: int = 16):
        self.loop = loop
        self.max_graphs = max_graphs
        self.graphs = OrderedDict()  # geometry -> (graph, static inputs, static output)

    @torch.inference_mode()
    def __call__(self, observation, action_mask, noise, num_steps, clean_actions=None, prefix_lengths=None):
        inputs = observation.tensors() + [action_mask, noise]
        if clean_actions is not None:
            inputs += [clean_actions, prefix_lengths]
        geometry = (num_steps, len(observation.cache_keys)) + tuple(
            (tuple(t.shape), t.dtype, t.device) for t in inputs
        )
        if geometry not in self.graphs:
            self.graphs[geometry] = self._capture(inputs, len(observation.tensors()), num_steps)
            if len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(geometry)
        graph, static_inputs, static_output = self.graphs[geometry]
        for static, given in zip(static_inputs, inputs, strict=True):
            static.copy_(given)
        graph.replay()
        return static_output.clone()

    def _capture(self, inputs: list, observation_size: int, num_steps: int):
        static_inputs = [t.clone() for t in inputs]

        def run():
            observation = XR0Observation.from_tensors(static_inputs[:observation_size])
            return self.loop(
                observation,
                *static_inputs[observation_size : observation_size + 2],
                num_steps,
                *static_inputs[observation_size + 2 :],
            )

        side_stream = torch.cuda.Stream()
        side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side_stream):
            for _ in range(2):  # allocations, cuBLAS workspaces and compilation happen before the capture
                run()
        torch.cuda.current_stream().wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = run()
        return graph, static_inputs, static_output


# --------------------------------------------------------------------------------------------------------------
# Input checks: every tensor a caller hands in, with the field named


def check_action_tensor(
    name: str, tensor: torch.Tensor, batch_size: int, action_dim: int, action_length: Optional[int] = None
) -> int:
    """Checks a (B, T, A) chunk-shaped input and returns its T (any T >= 1 unless `action_length` is given)."""
    length = "T" if action_length is None else str(action_length)
    expected = f"(B, T, A) = ({batch_size}, {length}, {action_dim})"
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape {expected}, got {type(tensor).__name__}.")
    if (
        tensor.ndim != 3
        or tensor.shape[0] != batch_size
        or tensor.shape[2] != action_dim
        or tensor.shape[1] < 1
        or (action_length is not None and tensor.shape[1] != action_length)
    ):
        raise ValueError(f"`{name}` must have shape {expected}, got {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got {tensor.dtype}.")
    check_finite(name, tensor)
    return tensor.shape[1]


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raises on NaN/inf. Reading the answer back is a host sync that splits a compiled graph, so a traced call
    skips it: `optimize_sampler` compiles the loop behind `sample_actions`, whose checks run eagerly before it."""
    if torch.compiler.is_compiling():
        return
    if not torch.isfinite(tensor).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")


def prefix_as_chunk(action_prefix: torch.Tensor, batch_size: int, action_length: int, action_dim: int):
    """(B, p, A) committed actions -> ((B, T, A) chunk with the prefix in front, (B,) prefix lengths)."""
    if not isinstance(action_prefix, torch.Tensor) or action_prefix.ndim != 3:
        raise ValueError(f"`action_prefix` must be a (B, p, A) tensor, got {_describe(action_prefix)}.")
    b, p, a = action_prefix.shape
    if b != batch_size or a != action_dim or not 0 <= p <= action_length:
        raise ValueError(
            f"`action_prefix` must have shape (B, p, A) = ({batch_size}, p <= T = {action_length}, "
            f"{action_dim}), got {tuple(action_prefix.shape)}."
        )
    check_finite("action_prefix", action_prefix)
    clean = torch.zeros(batch_size, action_length, action_dim, device=action_prefix.device)
    clean[:, :p] = action_prefix.float()
    return clean, torch.full((batch_size,), p, dtype=torch.long, device=action_prefix.device)


def check_observation(
    config: XR0Config, input_ids, attention_mask, pixel_values, image_grid_thw, state
) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(f"`input_ids` must be a non-empty (B, L) tensor, got {_describe(input_ids)}.")
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
            f"got {_describe(attention_mask)}."
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
            f"robot state to state_dim), got {_describe(state)}."
        )
    if not torch.isfinite(state).all():
        raise ValueError("`state` contains NaN or infinite values.")
    check_images(config, input_ids, attention_mask, pixel_values, image_grid_thw)


def check_images(config: XR0Config, input_ids, attention_mask, pixel_values, image_grid_thw) -> None:
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
            f"`image_grid_thw` must be a (num_images, 3) tensor, got {_describe(image_grid_thw)}."
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
            f"`image_grid_thw` {image_grid_thw.tolist()}, got {_describe(pixel_values)}."
        )
    if num_image_tokens != num_patches // merge:
        raise ValueError(
            f"The prompt holds {num_image_tokens} image tokens but `image_grid_thw` {image_grid_thw.tolist()} "
            f"gives {num_patches // merge} ({num_patches} patches / {merge} merged): each image needs "
            "t·h·w/merge² `<|image_pad|>` tokens."
        )


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"


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
