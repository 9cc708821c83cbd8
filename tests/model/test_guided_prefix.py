"""Real-time chunking by guided inpainting (`sample_actions(prefix_mode="guided")`), on tiny random models."""

import logging

import numpy as np
import pytest
import torch
from tiny import action_mask, encode, observation, tiny_model

from xr0.sampler_xr0 import guidance_mask, guidance_weight, guided_velocity
from xr0.sampling_xr0 import PrefixGuidance


def setup(seed=0, batch_size=2, dtype=torch.float32):
    model = tiny_model(seed, dtype=dtype, action_attention_window=4, noisy_action_position_offset=10)
    batch = observation(num_text_tokens=(2, 5)[:batch_size])
    batch = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in batch.items()}
    with torch.no_grad():
        obs = encode(model, batch)
    mask = action_mask(batch_size, model.config).to(dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(batch_size, model.config.action_length, model.config.action_dim, generator=generator)
    prefix = torch.randn(batch_size, 4, model.config.action_dim, generator=generator)  # T = 6: overlap of 4
    return model, batch, obs, mask, noise.to(dtype), prefix.to(dtype)


def test_the_soft_mask_and_the_weight_are_the_papers():
    # d = 2 committed, overlap p = 6 of T = 8: c = (p - i) / (p - d + 1) on steps 2..5, 0 from step 6 on.
    c = torch.tensor([4, 3, 2, 1]) / 5
    exp = torch.cat([torch.ones(2), c * torch.expm1(c) / np.expm1(1.0), torch.zeros(2)])
    assert torch.allclose(guidance_mask(2, 6, 8, "exp"), exp)
    assert torch.allclose(guidance_mask(2, 6, 8, "linear"), torch.cat([torch.ones(2), c, torch.zeros(2)]))
    assert torch.equal(guidance_mask(2, 6, 8, "ones"), torch.tensor([1.0] * 6 + [0.0] * 2))
    assert torch.equal(guidance_mask(2, 6, 8, "zeros"), torch.tensor([1.0] * 2 + [0.0] * 6))
    # min(β, (1 - τ) / (τ r²)), r² = (1 - τ)² / (τ² + (1 - τ)²)
    for tau in (0.2, 0.4, 0.6, 0.8):
        r2 = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
        assert guidance_weight(tau, 100.0) == pytest.approx((1 - tau) / (tau * r2))
        assert guidance_weight(tau, 1.0) == 1.0
    assert guidance_weight(0.0, 5.0) == 5.0


@pytest.mark.parametrize("jacobian", ["vjp", "identity"])
def test_weight_zero_is_plain_sampling_exactly(jacobian):
    model, _, obs, mask, noise, prefix = setup()
    with torch.no_grad():
        plain = model.sample_actions(obs, mask, noise=noise)
    guided = model.sample_actions(
        obs,
        mask,
        noise=noise,
        action_prefix=prefix,
        prefix_mode="guided",
        guidance=PrefixGuidance(inference_delay=0, max_weight=0.0, jacobian=jacobian),
    )
    assert torch.equal(guided, plain)


@pytest.mark.parametrize("jacobian", ["vjp", "identity"])
def test_a_large_weight_reproduces_the_prefix(jacobian):
    """Weight 1/Δτ at τ = 0 projects the denoised estimate onto the prefix in one step; later steps keep it
    there. Nothing is committed (d = 0), so the prefix steps come back as sampled, not as given."""
    model, _, obs, mask, noise, prefix = setup()
    steps = 50
    guided = model.sample_actions(
        obs,
        mask,
        noise=noise,
        num_steps=steps,
        action_prefix=prefix,
        prefix_mode="guided",
        guidance=PrefixGuidance(
            inference_delay=0, mask_schedule="ones", max_weight=float(steps), jacobian=jacobian
        ),
    )
    with torch.no_grad():
        plain = model.sample_actions(obs, mask, noise=noise, num_steps=steps)
    active = mask[:, :4].bool()
    error = (guided[:, :4] - prefix)[active].abs().max()
    plain_error = (plain[:, :4] - prefix)[active].abs().max()
    assert plain_error > 1.0
    assert error < 0.02 * plain_error, (error, plain_error)
    assert not torch.equal(guided[:, 4:], plain[:, 4:])  # the rest of the chunk follows the guided prefix


def test_the_vector_jacobian_product_matches_finite_differences():
    model, _, obs, mask, noise, prefix = setup(dtype=torch.float64)
    target = torch.zeros_like(noise)
    target[:, :4] = prefix
    weights = guidance_mask(1, 4, noise.shape[1], "exp").double()[None, :, None]
    timestep = torch.full((2,), 0.4, dtype=torch.float64)
    _, correction = guided_velocity(model, noise, timestep, obs, mask, target, weights, "vjp")

    def denoised(actions):  # Â¹ = A + (1 - τ) v(A)
        with torch.no_grad():
            return actions + 0.6 * model.velocity(actions, timestep, obs, mask).double()

    error = weights * mask * (target - denoised(noise))

    def along(direction, h):  # e · Â¹(A + h·u)
        return float((error * denoised(noise + h * direction)).sum())

    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        direction = torch.randn(noise.shape, generator=generator, dtype=torch.float64)
        # Fourth-order central difference: transformers' RMSNorm (q/k norms) computes in float32 even in a float64
        # model, so a tiny step would measure its rounding; h = 1e-2 keeps that and the truncation error ~1e-5.
        h = 1e-2
        numeric = (
            -along(direction, 2 * h)
            + 8 * along(direction, h)
            - 8 * along(direction, -h)
            + along(direction, -2 * h)
        ) / (12 * h)
        assert float((correction * direction).sum()) == pytest.approx(numeric, rel=1e-4)
    # the Jacobian is not the identity: the two corrections differ
    _, identity = guided_velocity(model, noise, timestep, obs, mask, target, weights, "identity")
    assert (correction - identity).abs().max() > 1e-3


def test_guided_sampling_works_under_inference_mode_and_leaves_no_gradients():
    model, batch, obs, mask, noise, prefix = setup()
    guidance = PrefixGuidance(inference_delay=2)
    outside = model.sample_actions(
        obs, mask, noise=noise, action_prefix=prefix, prefix_mode="guided", guidance=guidance
    )
    with torch.inference_mode():
        inside_obs = encode(model, batch)
        inside = model(
            **batch,
            action_mask=mask,
            noise=noise,
            action_prefix=prefix,
            prefix_mode="guided",
            guidance=guidance,
        ).actions
        again = model.sample_actions(
            inside_obs, mask, noise=noise, action_prefix=prefix, prefix_mode="guided", guidance=guidance
        )
    assert torch.allclose(inside, outside, atol=1e-5) and torch.allclose(again, outside, atol=1e-5)
    assert not outside.requires_grad
    assert torch.equal(outside[:, :2], prefix[:, :2])  # the committed steps come back as given
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_guidance_errors_name_the_field():
    model, _, obs, mask, noise, prefix = setup()
    with pytest.raises(ValueError, match=r"inference_delay` d = 5 is beyond the prefix's p = 4"):
        model.sample_actions(
            obs, mask, noise=noise, action_prefix=prefix, prefix_mode="guided", guidance=PrefixGuidance(5)
        )
    with pytest.raises(
        ValueError, match=r"`action_prefix` must have shape \(B, p, A\) = \(2, p <= T = 6, 32\)"
    ):
        model.sample_actions(
            obs, mask, noise=noise, action_prefix=torch.zeros(2, 7, 32), prefix_mode="guided"
        )
    with pytest.raises(ValueError, match="`prefix_mode` must be one of"):
        model.sample_actions(obs, mask, noise=noise, action_prefix=prefix, prefix_mode="inpaint")
    with pytest.raises(ValueError, match="`guidance` applies to prefix_mode='guided'"):
        model.sample_actions(obs, mask, noise=noise, action_prefix=prefix, guidance=PrefixGuidance())
    for bad, match in [
        ({"inference_delay": -1}, "inference_delay"),
        ({"mask_schedule": "cosine"}, "mask_schedule"),
        ({"max_weight": float("nan")}, "max_weight"),
        ({"jacobian": "exact"}, "jacobian"),
    ]:
        with pytest.raises(ValueError, match=match):
            PrefixGuidance(**bad)


def test_a_trained_prefix_on_a_checkpoint_that_never_saw_one_warns_once():
    model, _, obs, mask, noise, prefix = setup()
    assert model.config.action_prefix_probability == 0
    logging.Logger.warning_once.cache_clear()  # transformers' once-per-process memory

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    handler = Collect()
    target = logging.getLogger(
        type(model).__module__.rsplit(".", 1)[0] + ".sampler_xr0"
    )  # the sampler's notice
    target.addHandler(handler)
    try:
        with torch.no_grad():
            for _ in range(2):
                model.sample_actions(obs, mask, noise=noise, action_prefix=prefix[:, :2])
            model.sample_actions(obs, mask, noise=noise, action_prefix=prefix, prefix_mode="guided")
    finally:
        target.removeHandler(handler)
    warnings = [m for m in handler.messages if "trained without action prefixes" in m]
    assert len(warnings) == 1 and "prefix_mode='guided'" in warnings[0]


# τ_k = k/5 for the 5 Euler steps; w(τ) = min(β, (τ² + (1 - τ)²) / (τ (1 - τ))), β at τ = 0:
#   τ = 0.2 and 0.8: (0.04 + 0.64) / 0.16 = 4.25;   τ = 0.4 and 0.6: (0.16 + 0.36) / 0.24 = 13/6.
STEP_WEIGHTS = {5.0: [5.0, 4.25, 13 / 6, 13 / 6, 4.25], 3.0: [3.0, 3.0, 13 / 6, 13 / 6, 3.0]}


@pytest.mark.parametrize("jacobian", ["vjp", "identity"])
@pytest.mark.parametrize("max_weight", sorted(STEP_WEIGHTS))
def test_each_euler_step_uses_the_weight_of_its_own_start_time(monkeypatch, max_weight, jacobian):
    """Euler step k integrates from τ_k = k/N: its guidance weight is w(τ_k), not w(τ_k + 1/N) (the step's end).
    With the DiT replaced by the velocity field v(x, τ) = τ, Â¹ = x + (1 - τ) τ has the identity as Jacobian, so
    each guided step on the overlap (W = 1, schedule "ones") is, per number,
        x_{k+1} = x_k + (τ_k + w_k (y - x_k - (1 - τ_k) τ_k)) / N,
    whose result depends on the order of the weights (the weights are symmetric in τ, so the step-end weights
    are nearly the same numbers in another order). The expected chunk is this recurrence with the hand-computed
    weights; the velocity is asked at τ_k."""
    model, _, obs, mask, _, _ = setup()
    target_y, steps = 2.0, 5
    asked = []

    def time_velocity(actions, timestep, *args, **kwargs):  # v = τ, every number of the chunk
        asked.append(timestep)
        return timestep[:, None, None].expand_as(actions).clone()

    monkeypatch.setattr(model, "velocity", time_velocity)
    noise = torch.zeros(2, model.config.action_length, model.config.action_dim)
    prefix = torch.full((2, 4, model.config.action_dim), target_y)
    guidance = PrefixGuidance(
        inference_delay=1, mask_schedule="ones", max_weight=max_weight, jacobian=jacobian
    )
    actions = model.sample_actions(
        obs, mask, noise=noise, num_steps=steps, action_prefix=prefix, prefix_mode="guided", guidance=guidance
    )
    assert torch.allclose(torch.stack(asked), torch.arange(steps)[:, None].expand(steps, 2) / steps)
    x = 0.0
    for k, weight in enumerate(STEP_WEIGHTS[max_weight]):
        tau = k / steps
        x += (tau + weight * (target_y - x - (1 - tau) * tau)) / steps
    active = mask.bool()
    assert torch.allclose(actions[:, 1:4][active[:, 1:4]], torch.tensor(x), atol=1e-5), (
        actions[0, 1:4, 0],
        x,
    )
    # Steps after the overlap (W = 0) and inactive dims get no correction: x = Σ τ_k / N = 0.4.
    assert torch.allclose(actions[:, 4:], torch.tensor(0.4))
    assert torch.allclose(actions[:, 1:][~active[:, 1:]], torch.tensor(0.4))
    assert torch.equal(actions[:, 0], prefix[:, 0]), "the committed step comes back as given"
