"""The XR0 action sampler: Euler integration of the flow from noise (t=0) to an action chunk (t=1), with the
prefix modes of real-time execution and the opt-in compiled and CUDA-graph loops. The options that need no torch
(prefix modes, guidance settings) live in `sampling_xr0.py`; the model (`modeling_xr0.XR0ForActionGeneration`)
supplies `chunk_layout` and `velocity` and exposes these functions as `sample_actions` and `optimize_sampler`.

One Euler loop, `euler_integrate`, serves plain sampling, trained-prefix sampling and the training recipe's
reweighting pass (`recipe_xr0`); guided inpainting has its own loop because it differentiates through the DiT.

Shapes: B batch, T chunk length, A = action_dim, p prefix length.
"""

import math
from collections import OrderedDict
from typing import Optional

import numpy as np
import torch
from transformers.utils import logging

from .sampling_xr0 import GUIDANCE_JACOBIANS, PREFIX_MODES, PrefixGuidance

logger = logging.get_logger(__name__)


def sample_actions(
    model,
    observation,
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
        model: an `XR0ForActionGeneration`.
        observation: from `model.encode_observation`.
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
    config = model.config
    num_steps = config.num_inference_steps if num_steps is None else num_steps
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}.")
    if prefix_mode not in PREFIX_MODES:
        raise ValueError(f"`prefix_mode` must be one of {PREFIX_MODES}, got {prefix_mode!r}.")
    if guidance is not None and prefix_mode != "guided":
        raise ValueError(f"`guidance` applies to prefix_mode='guided', not {prefix_mode!r}.")
    batch_size = observation.batch_size
    action_length = check_action_tensor("action_mask", action_mask, batch_size, config.action_dim)
    if noise is None:
        noise = sample_noise(action_mask, generator, model.device)
    else:
        check_action_tensor("noise", noise, batch_size, config.action_dim, action_length)
    loop = model._inference_loop or (lambda *inputs: euler_integrate(model, *inputs))
    if action_prefix is None:
        return loop(observation, action_mask, noise, num_steps)
    clean_actions, prefix_lengths = prefix_as_chunk(
        action_prefix, batch_size, action_length, config.action_dim
    )
    if prefix_mode == "trained":
        if not config.action_prefix_probability > 0 and not torch.compiler.is_compiling():
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
    weights = guidance_mask(delay, overlap, action_length, guidance.mask_schedule, model.device)
    actions = guided_integrate(
        model, observation, action_mask, noise, num_steps, clean_actions, weights, guidance
    )
    actions[:, :delay] = clean_actions[:, :delay].to(actions)
    return actions


def euler_integrate(
    model,
    observation,
    action_mask: torch.Tensor,
    noise: torch.Tensor,
    num_steps: int,
    clean_actions: Optional[torch.Tensor] = None,
    prefix_lengths: Optional[torch.Tensor] = None,
    hidden_actions: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The Euler loop shared by inference, prefix-conditioned inference and training's reweighting pass: (B, T, A)
    float32 actions from `noise` (B, T, A). Positions below `prefix_lengths` (B,) hold `clean_actions` (B, T, A)
    throughout; `hidden_actions` (B, T) (training's reweighting pass only): prefix tokens the noisy tokens do not
    see."""
    device = model.device
    actions = noise.to(device=device, dtype=torch.float32)
    action_mask = action_mask.to(device)
    action_length = actions.shape[1]
    layout = model.chunk_layout(observation, action_length, prefix_lengths, hidden_actions)
    is_prefix = None
    if prefix_lengths is not None:
        is_prefix = prefix_positions(prefix_lengths, action_length).to(device)[..., None]  # (B, T, 1)
        actions = torch.where(is_prefix, clean_actions.to(actions), actions)
    dt = 1.0 / num_steps
    for step in range(num_steps):
        timestep = torch.full((observation.batch_size,), step * dt, device=device, dtype=torch.float32)
        velocity = model.velocity(actions, timestep, observation, action_mask, layout).float()
        if is_prefix is not None:
            velocity = velocity.masked_fill(is_prefix, 0.0)
        actions = actions + dt * velocity
    return actions


# --------------------------------------------------------------------------------------------------------------
# Guided inpainting (prefix_mode="guided")


def guided_integrate(
    model, observation, action_mask, noise, num_steps, target, weights, guidance: PrefixGuidance
):
    """The Euler loop of guided inpainting: x <- x + (v + w(τ)·g)·(1/N), g from `guided_velocity`, toward
    `target` (B, T, A) with the soft mask `weights` (T,). Every DiT token is noisy: no clean prefix."""
    device = model.device
    # Gradients are needed even under a caller's torch.inference_mode(); tensors made there cannot enter
    # autograd, so the loop then works on ordinary copies of them.
    with torch.inference_mode(False), torch.enable_grad():
        if torch.is_inference(observation.context_tokens):
            observation = observation.clone()
        action_mask = action_mask.to(device).clone()
        target = target.to(device=device, dtype=torch.float32).clone()
        weights = weights.to(device).clone()[None, :, None]  # (1, T, 1)
        actions = noise.to(device=device, dtype=torch.float32).clone()
        layout = model.chunk_layout(observation, actions.shape[1])
        dt = 1.0 / num_steps
        for step in range(num_steps):
            timestep = torch.full((observation.batch_size,), step * dt, device=device, dtype=torch.float32)
            weight = guidance_weight(step * dt, guidance.max_weight)
            if weight == 0.0:
                with torch.no_grad():
                    velocity = model.velocity(actions, timestep, observation, action_mask, layout).float()
                actions = actions + dt * velocity
                continue
            velocity, correction = guided_velocity(
                model, actions, timestep, observation, action_mask, target, weights, guidance.jacobian, layout
            )
            actions = actions + dt * (velocity + weight * correction)
    return actions


def guided_velocity(
    model,
    noisy_actions: torch.Tensor,
    timestep: torch.Tensor,
    observation,
    action_mask: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    jacobian: str = "vjp",
    layout=None,
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
            velocity = model.velocity(noisy_actions, timestep, observation, action_mask, layout).float()
            denoised = noisy_actions + one_minus_t * velocity  # Â¹
            return velocity, weights * action_mask * (target - denoised)
    if jacobian != "vjp":
        raise ValueError(f"`jacobian` must be one of {GUIDANCE_JACOBIANS}, got {jacobian!r}.")
    with torch.enable_grad():
        noisy_actions = noisy_actions.detach().float().requires_grad_(True)
        velocity = model.velocity(noisy_actions, timestep, observation, action_mask, layout).float()
        denoised = noisy_actions + one_minus_t * velocity
        error = (weights * action_mask * (target - denoised)).detach()
        # Only the actions are differentiated: autograd.grad leaves the parameters' .grad untouched.
        (correction,) = torch.autograd.grad(denoised, noisy_actions, grad_outputs=error)
    return velocity.detach(), correction


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


# --------------------------------------------------------------------------------------------------------------
# The fast path: compiled and CUDA-graph loops


def optimize_sampler(
    model,
    compile: bool = True,
    mode: Optional[str] = None,
    backend: str = "inductor",
    dynamic: Optional[bool] = None,
    cuda_graphs: bool = False,
    max_graphs: int = 16,
):
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
        the model. `optimize_sampler(compile=False, cuda_graphs=False)` restores the eager loop.
    """
    if cuda_graphs and model.device.type != "cuda":
        raise ValueError(f"`cuda_graphs=True` needs the model on a CUDA device; it is on {model.device}.")

    def loop(observation, action_mask, noise, num_steps, clean_actions=None, prefix_lengths=None):
        return euler_integrate(
            model, observation, action_mask, noise, num_steps, clean_actions, prefix_lengths
        )

    if compile:
        loop = torch.compile(loop, fullgraph=True, mode=mode, backend=backend, dynamic=dynamic)
    if cuda_graphs:
        loop = CUDAGraphLoop(loop, max_graphs)
    model._inference_loop = loop if compile or cuda_graphs else None
    return model


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
            self.graphs[geometry] = self._capture(
                type(observation), inputs, len(observation.tensors()), num_steps
            )
            if len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(geometry)
        graph, static_inputs, static_output = self.graphs[geometry]
        for static, given in zip(static_inputs, inputs, strict=True):
            static.copy_(given)
        graph.replay()
        return static_output.clone()

    def _capture(self, observation_type, inputs: list, observation_size: int, num_steps: int):
        static_inputs = [t.clone() for t in inputs]

        def run():
            observation = observation_type.from_tensors(static_inputs[:observation_size])
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
# Noise, prefixes and the checks of chunk-shaped inputs


def sample_noise(like: torch.Tensor, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """
    Standard normal noise of `like`'s shape, drawn in `like`'s dtype on the generator's device (`like`'s device
    without one), returned as float32 on `device`.

    Drawn this way, `generator=torch.Generator(action_mask.device).manual_seed(s)` gives exactly the noise of the
    official forward with `seed=s` (which seeds the global RNG and calls `randn_like(action_mask)`).
    """
    draw_device = generator.device if generator is not None else like.device
    noise = torch.randn(like.shape, generator=generator, device=draw_device, dtype=like.dtype)
    return noise.to(device=device, dtype=torch.float32)


def generator_from_seed(seed, device) -> torch.Generator:
    """A fresh generator on `device` seeded with `seed`: the draw of the official forward's
    `torch.manual_seed(seed)`, without touching the global RNG."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__} {seed!r}.")
    seed = int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"`seed` must be in [-2**63, 2**64), got {seed}.")
    return torch.Generator(device=device).manual_seed(seed)


def prefix_positions(prefix_lengths: torch.Tensor, action_length: int) -> torch.Tensor:
    """(B,) prefix lengths -> (B, T) bool, True at committed (clean) action positions."""
    steps = torch.arange(action_length, device=prefix_lengths.device)
    return steps[None] < prefix_lengths[:, None]


def prefix_as_chunk(action_prefix: torch.Tensor, batch_size: int, action_length: int, action_dim: int):
    """(B, p, A) committed actions -> ((B, T, A) chunk with the prefix in front, (B,) prefix lengths)."""
    if not isinstance(action_prefix, torch.Tensor) or action_prefix.ndim != 3:
        raise ValueError(f"`action_prefix` must be a (B, p, A) tensor, got {describe(action_prefix)}.")
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


def describe(value) -> str:
    """How an error message names a value that is not what it should be."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"
