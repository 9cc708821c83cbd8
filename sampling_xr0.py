"""The sampler's options that need no torch: how `XR0ForActionGeneration.sample_actions` may condition a chunk on
an action prefix, and the guided mode's settings. Command lines, servers and results files name them without
loading the model; `modeling_xr0` imports them from here.
"""

import math
from dataclasses import dataclass
from typing import Optional

PREFIX_MODES = ("trained", "guided")
MASK_SCHEDULES = ("exp", "linear", "ones", "zeros")
GUIDANCE_JACOBIANS = ("vjp", "identity")


@dataclass
class PrefixGuidance:
    """
    Real-time chunking by guided inpainting (Black et al. 2025, arXiv 2506.07339: ΠGDM guidance of each Euler step
    with a soft mask over the overlap), for `sample_actions(..., prefix_mode="guided")`. The action prefix is then the previous chunk's p
    actions that overlap the new chunk (p = T - s for an execution horizon of s steps); each Euler step at flow
    time τ adds to the velocity v the correction

        min(β, (1 - τ) / (τ · r²)) · (W ⊙ (Y - Â¹))ᵀ ∂Â¹/∂A^τ,   Â¹ = A^τ + (1 - τ) v,   r² = (1-τ)² / (τ² + (1-τ)²),

    Y the prefix, W the soft mask over the chunk's steps: 1 on the d committed steps, decaying over the rest of
    the overlap, 0 after it. The vector-Jacobian product runs through the DiT's velocity only (the observation's
    VLM cache is a constant); `jacobian="identity"` replaces ∂Â¹/∂A^τ by the identity (what LeRobot's guided mode
    computes), one DiT backward cheaper per step.

    Args:
        inference_delay: d, the committed steps at the prefix's front (weight 1); None = the whole prefix.
        mask_schedule: the weights on steps d .. p - 1: "exp" (the paper's c·(e^c - 1)/(e - 1) with
            c = (p - i)/(p - d + 1)), "linear" (c), "ones" (the whole overlap at 1), "zeros" (only the committed).
        max_weight: β, the clip of the guidance weight (5 in the paper); 0 = plain sampling.
        jacobian: "vjp" (the paper) or "identity".
    """

    inference_delay: Optional[int] = None
    mask_schedule: str = "exp"
    max_weight: float = 5.0
    jacobian: str = "vjp"

    def __post_init__(self):
        delay = self.inference_delay
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int) or delay < 0):
            raise ValueError(f"`inference_delay` must be an int >= 0 or None, got {delay!r}.")
        if self.mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"`mask_schedule` must be one of {MASK_SCHEDULES}, got {self.mask_schedule!r}.")
        weight = self.max_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise ValueError(f"`max_weight` must be a finite number >= 0, got {weight!r}.")
        if self.jacobian not in GUIDANCE_JACOBIANS:
            raise ValueError(f"`jacobian` must be one of {GUIDANCE_JACOBIANS}, got {self.jacobian!r}.")
