"""The XR0 training recipe (technical report: pre- and post-training; the released post-training code): the named
recipes (`RECIPES`), a training step's random draws (`XR0TrainingDraws`), the flow-matching loss with the
asynchronous post-training's committed prefixes, loss reweighting and frequency term, and the vision-language
co-training loss. `XR0ForActionGeneration.forward(actions=...)` returns `compute_loss`; `xr0-finetune`, the LeRobot
plugin and the tests import the recipe from here.

Shapes: B batch, R = `config.training_repeat`, T chunk length, A = action_dim, p prefix length.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .sampler_xr0 import (
    check_action_tensor,
    check_finite,
    describe,
    euler_integrate,
    prefix_positions,
    sample_noise,
)

# The post-training recipes: the config fields each one sets (the rest stays the checkpoint's). The released
# post-training code trains every model with the Λ-shaped band (window 4) and the +10 position offset of noisy
# actions, with or without the asynchronous clean prefix; the window and offset are saved in the config, so
# inference uses the layout the model was trained with. `published` keeps the layout the published checkpoints
# are served with (causal, offset 0).
LAMBDA_WINDOW = 4  # the released band: action i attends to actions i - 4 .. i (--action_attention_window)
RECIPES = {
    "async": {  # the released default: band + offset + clean prefixes, reweighting, frequency term
        "action_attention_window": LAMBDA_WINDOW,
        "noisy_action_position_offset": 10,
        "action_prefix_probability": 0.5,
        "max_action_prefix_length": 6,
        "loss_reweighting": True,
        "frequency_loss_weight": 1.0,
    },
    "sync": {  # band + offset without prefixes
        "action_attention_window": LAMBDA_WINDOW,
        "noisy_action_position_offset": 10,
        "action_prefix_probability": 0.0,
        "loss_reweighting": False,
        "frequency_loss_weight": 1.0,
    },
    "async-causal": {  # training-time RTC, the report's baseline: clean prefixes with a causal mask instead of Λ
        "action_attention_window": None,
        "noisy_action_position_offset": 10,
        "action_prefix_probability": 0.5,
        "max_action_prefix_length": 6,
        "loss_reweighting": True,
        "frequency_loss_weight": 1.0,
    },
    "published": {  # causal, offset 0: keep serving a fine-tuned published checkpoint as published
        "action_attention_window": None,
        "noisy_action_position_offset": 0,
        "action_prefix_probability": 0.0,
        "loss_reweighting": False,
    },
}


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
                    f"config.training_repeat), got {describe(value)}."
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
# The draws


def sample_time(config, batch_size: int, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """(B,) flow times t = (1 - u)·time_max, u ~ Beta(alpha, 1) drawn by inverse CDF (u = U^(1/alpha))."""
    u = uniform((batch_size,), generator, device) ** (1.0 / config.time_sampling_alpha)
    return (1.0 - u) * config.time_max


def sample_prefix(config, batch_size: int, action_length: int, generator: Optional[torch.Generator], device):
    """Training prefixes: (prefix_lengths (B,), hidden_actions (B, T) bool). With probability
    `action_prefix_probability` a sample gets p ~ U{1..min(max_action_prefix_length, T)} clean actions; each of its
    prefix tokens but the last `prefix_keep_last` is hidden from the noisy tokens with probability
    `prefix_hide_probability`. The released code draws p and these coins once per batch (shared by its samples);
    here each sample draws its own (the same distribution per sample, more variety per batch)."""
    longest = min(config.max_action_prefix_length, action_length)
    use_prefix = uniform((batch_size,), generator, device) < config.action_prefix_probability
    lengths = 1 + (uniform((batch_size,), generator, device) * longest).long().clamp(max=longest - 1)
    prefix_lengths = torch.where(use_prefix, lengths, torch.zeros_like(lengths))
    steps = torch.arange(action_length, device=device)[None]
    in_prefix = steps < prefix_lengths[:, None]
    kept = steps >= prefix_lengths[:, None] - config.prefix_keep_last
    coin = uniform((batch_size, action_length), generator, device) < config.prefix_hide_probability
    return prefix_lengths, in_prefix & ~kept & coin


def sample_training_draws(
    config,
    actions: torch.Tensor,
    repeats: int,
    generator: Optional[torch.Generator] = None,
    sample_seeds: Optional[torch.Tensor] = None,
) -> XR0TrainingDraws:
    """
    A training step's random draws for `actions` (B·R, T, A), the R repeats of each sample side by side, on
    `actions`' device.

    From `generator` for the whole batch (noise, then flow times, then prefixes); or, with `sample_seeds` (B,),
    sample i's R repeats come from a generator seeded with `sample_seeds[i]`, in the same order. A run whose seeds
    are a function of the run's seed and each sample's identity (`xr0.training.data.sample_seed`) then draws the
    same for a sample on any rank, with any number of processes, before and after a resume.
    """
    rows, action_length, _ = actions.shape
    device = actions.device
    if sample_seeds is None:
        noise = sample_noise(actions, generator, device)
        timestep = sample_time(config, rows, generator, device)
        return XR0TrainingDraws(
            noise, timestep, *sample_prefix(config, rows, action_length, generator, device)
        )
    if not isinstance(sample_seeds, torch.Tensor) or sample_seeds.shape != (rows // repeats,):
        raise ValueError(
            f"`sample_seeds` must be a ({rows // repeats},) int tensor, one seed per sample, got "
            f"{describe(sample_seeds)}."
        )
    draws = []
    for i, seed in enumerate(sample_seeds.tolist()):
        own = torch.Generator().manual_seed(seed)
        noise = sample_noise(actions[i * repeats : (i + 1) * repeats], own, device)
        timestep = sample_time(config, repeats, own, device)
        draws.append((noise, timestep, *sample_prefix(config, repeats, action_length, own, device)))
    return XR0TrainingDraws(*(torch.cat(parts) for parts in zip(*draws, strict=True)))


def uniform(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (so a CPU generator drives a GPU model), returned on `device`."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


# --------------------------------------------------------------------------------------------------------------
# The losses


def compute_loss(
    model,
    observation,
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
        model: an `XR0ForActionGeneration`.
        observation: from `model.encode_observation` (with gradients where the VLM trains).
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
    config, device = model.config, model.device
    batch_size = observation.batch_size
    action_length = check_action_tensor("actions", actions, batch_size, config.action_dim)
    check_action_tensor("action_mask", action_mask, batch_size, config.action_dim, action_length)
    valid = torch.ones(batch_size, action_length, dtype=torch.bool, device=device)
    if action_is_pad is not None:
        if not isinstance(action_is_pad, torch.Tensor) or tuple(action_is_pad.shape) != (
            batch_size,
            action_length,
        ):
            raise ValueError(
                f"`action_is_pad` must have shape (B, T) = ({batch_size}, {action_length}), "
                f"got {describe(action_is_pad)}."
            )
        valid = ~action_is_pad.to(device).bool()

    repeats = config.training_repeat
    observation = observation.repeat_interleave(repeats)
    actions = actions.to(device, torch.float32).repeat_interleave(repeats, dim=0)
    action_mask = action_mask.to(device).repeat_interleave(repeats, dim=0)
    valid = valid.repeat_interleave(repeats, dim=0)
    batch_size *= repeats

    if draws is None:
        draws = sample_training_draws(config, actions, repeats, generator, sample_seeds)
    else:
        if generator is not None or sample_seeds is not None:
            raise ValueError("Pass `draws` or a source of draws (`generator`, `sample_seeds`), not both.")
        if not isinstance(draws, XR0TrainingDraws):
            raise TypeError(f"`draws` must be an XR0TrainingDraws, got {type(draws).__name__}.")
        draws.check(batch_size, action_length, config.action_dim)
        draws = draws.to(device)
    noise, timestep = draws.noise, draws.timestep
    prefix_lengths, hidden_actions = draws.prefix_lengths, draws.hidden_actions
    t = timestep[:, None, None]
    noisy_actions = (1 - t) * noise + t * actions
    target = actions - noise

    is_prefix = prefix_positions(prefix_lengths, action_length)  # (B, T)
    layout = model.chunk_layout(observation, action_length, prefix_lengths, hidden_actions)
    noisy_actions = torch.where(is_prefix[..., None], actions, noisy_actions)
    velocity = model.velocity(noisy_actions, timestep, observation, action_mask, layout).float()
    velocity = velocity.masked_fill(is_prefix[..., None], 0.0)

    loss_mask = action_mask.float() * (valid & ~is_prefix)[..., None].float()  # (B, T, A)
    weight = torch.ones_like(loss_mask)
    uses_prefix = prefix_lengths > 0
    # Under data-parallel training every rank joins the reweighting's all-reduce, prefixes or not.
    if config.loss_reweighting and (bool(uses_prefix.any()) or data_parallel(model)):
        weight = prefix_loss_weight(
            model, observation, actions, action_mask, prefix_lengths, loss_mask, noise, hidden_actions
        )
        weight = torch.where(uses_prefix[:, None, None], weight, torch.ones_like(weight))

    # Each rank's loss is averaged over the ranks: normalizing both terms by their mean counts over the ranks
    # makes that average the global batch's loss (in one process: the counts). One all-reduce for both.
    counts = torch.stack([loss_mask.sum(), frequency_terms(loss_mask, prefix_lengths)])
    if data_parallel(model):
        counts = data_parallel_sum(counts) / torch.distributed.get_world_size()
    count, spectral_count = counts.clamp(min=1.0).unbind()
    flow_loss = ((velocity - target) ** 2 * loss_mask * weight).sum() / count
    # Each sample's mean weight scales its frequency term, as released.
    sample_weight = (weight * loss_mask).sum(dim=(1, 2)) / loss_mask.sum(dim=(1, 2)).clamp(min=1.0)
    spectral_loss = frequency_loss(velocity, target, loss_mask, sample_weight, spectral_count, prefix_lengths)
    # The released loss: 0.5 · weighted MSE + c · frequency term (c = 0 when the term is off).
    loss = 0.5 * flow_loss + config.frequency_loss_weight * spectral_loss
    return {"loss": loss, "flow_loss": flow_loss.detach(), "frequency_loss": spectral_loss.detach()}


@torch.no_grad()
def prefix_loss_weight(
    model, observation, actions, action_mask, prefix_lengths, loss_mask, noise, hidden_actions=None
) -> torch.Tensor:
    """(B, T, A): |actions generated from the prefix and the sample's own training noise - ground truth| / its
    masked mean, clamped to `loss_reweight_range` (report: post-training; released code). The generation attends
    as the training pass does: the prefix tokens hidden there (`hidden_actions` (B, T)) are hidden here too."""
    config = model.config
    generated = euler_integrate(
        model,
        observation,
        action_mask,
        noise,
        config.num_inference_steps,
        actions,
        prefix_lengths,
        hidden_actions=hidden_actions,
    )
    error = (generated - actions).abs()
    has_prefix = (prefix_lengths > 0)[:, None, None].float()
    masked = loss_mask * has_prefix
    # The mean over the global batch: the same weights whatever rank a sample trains on.
    total, count = (error * masked).sum(), masked.sum()
    if data_parallel(model):
        total, count = data_parallel_sum(total), data_parallel_sum(count)
    mean_error = total / count.clamp(min=1.0)
    low, high = config.loss_reweight_range
    return (error / mean_error.clamp(min=1e-8)).clamp(low, high)


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


def language_loss(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    labels: torch.LongTensor,
    pixel_values: Optional[torch.Tensor] = None,
    image_grid_thw: Optional[torch.LongTensor] = None,
    mm_token_type_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Next-token loss of the VLM (through its tied LM head) on vision-language samples: co-training keeps the
    backbone's language ability while the action expert trains (report: 1 VL sample per 6 robot). The mean
    cross-entropy over the answer tokens, as transformers' causal-LM loss computes it, but the LM head runs at
    those positions only: full logits would be (B, L, 151936), most of a small model's step."""
    if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
        raise ValueError(
            f"`language_batch['labels']` must have the shape of its `input_ids` {tuple(input_ids.shape)}."
        )
    vlm_inputs = model.vlm_inputs(input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids)
    hidden = model.vlm.model(**vlm_inputs, use_cache=False).last_hidden_state  # (B, L, H)
    targets = labels[:, 1:].to(hidden.device)  # token k + 1 is predicted at position k
    answered = targets != -100
    if not answered.any():
        raise ValueError("`language_batch['labels']` holds no target token (all -100).")
    logits = model.vlm.lm_head(hidden[:, :-1][answered])  # (N_answer_tokens, vocab)
    return F.cross_entropy(logits.float(), targets[answered])


# --------------------------------------------------------------------------------------------------------------
# Data-parallel training: the loss's batch-wide normalizers are sums over the ranks


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


def join_action_loss_sums(model) -> None:
    """A rank whose batch holds vision-language samples only still joins the action loss's all-reduces, in
    `compute_loss`'s order (the reweighting's error sum and count, then the two terms' counts), adding zeros: the
    other ranks would otherwise wait for it. Zero counts keep the global batch's normalization exact."""
    zero = torch.zeros((), device=model.device)
    for _ in range(2 if model.config.loss_reweighting else 0):  # the reweighting's error sum and count
        data_parallel_sum(zero)
    data_parallel_sum(torch.zeros(2, device=model.device))  # the two terms' counts
