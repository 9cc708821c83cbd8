"""Every fact of the training recipe (technical report + released post-training code) on a tiny model: time sampling, prefixes, masks, positions,
reweighting, loss masking, and that the loss trains."""

import pytest
import torch
from tiny import action_mask, observation, tiny_model

from xr0.modeling_xr0 import build_dit_attention_mask, frequency_loss


def encode(model, batch):
    return model.encode_observation(
        batch["input_ids"],
        batch["attention_mask"],
        batch["pixel_values"],
        batch["image_grid_thw"],
        batch["state"],
    )


def test_time_distribution_moments():
    model = tiny_model()
    t = model.sample_time(200_000, torch.Generator().manual_seed(0))
    a = 1.5  # u ~ Beta(1.5, 1), t = (1 - u) * 0.999
    mean_u, var_u = a / (a + 1), a / ((a + 1) ** 2 * (a + 2))
    assert 0.0 <= float(t.min()) and float(t.max()) <= 0.999
    assert abs(float(t.mean()) - 0.999 * (1 - mean_u)) < 3e-3
    assert abs(float(t.var()) - 0.999**2 * var_u) < 3e-3
    assert float((t < 0.5).float().mean()) == pytest.approx(
        1 - 0.5**a, abs=5e-3
    )  # P(u > 1/2·...) via the CDF


def test_prefix_sampling():
    model = tiny_model(action_prefix_probability=1.0, action_length=10)
    lengths, hidden = model.sample_prefix(60_000, 10, torch.Generator().manual_seed(1))
    counts = torch.bincount(lengths, minlength=8)
    assert counts[0] == 0 and counts[7:].sum() == 0
    assert ((counts[1:7].float() / 60_000) - 1 / 6).abs().max() < 0.01  # p ~ U{1..6}
    steps = torch.arange(10)[None]
    assert not (hidden & (steps >= lengths[:, None])).any(), "only prefix tokens are hidden"
    assert not (hidden & (steps >= lengths[:, None] - 2)).any(), "the last 2 prefix tokens stay visible"
    eligible = steps < lengths[:, None] - 2
    assert abs(float(hidden[eligible].float().mean()) - 0.5) < 0.01
    half = tiny_model(action_prefix_probability=0.5).sample_prefix(
        20_000, 6, torch.Generator().manual_seed(2)
    )[0]
    assert abs(float((half > 0).float().mean()) - 0.5) < 0.015
    none = tiny_model().sample_prefix(1000, 6, torch.Generator().manual_seed(3))[0]
    short = model.sample_prefix(10_000, 4, torch.Generator().manual_seed(4))[0]
    assert short.min() == 1 and short.max() == 4, "p ~ U{1..min(6, T)} for a chunk of T = 4"
    assert not none.any()


def test_lambda_mask_with_hidden_prefix_tokens():
    cache = torch.ones(1, 2, dtype=torch.bool)
    hidden = torch.tensor([[True, False, False, False, False, False]])
    mask = build_dit_attention_mask(cache, state_length=1, action_length=6, window=4, hidden_actions=hidden)[
        0, 0, :, 2:
    ]
    actions = mask[2:, 2:]  # action queries x action keys
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for i in range(6):
        for j in range(6):
            expected[i, j] = (i - 4 < j <= i) and (j != 0 or i == 0)
    assert torch.equal(actions, expected)
    assert mask[2:, :2].all(), "sink and state stay visible to every action token"
    assert not mask[:2, 2:].any(), "sink and state never see actions"


def test_prefix_positions_drop_the_offset():
    model = tiny_model(noisy_action_position_offset=10)
    obs = encode(model, observation(num_text_tokens=(2, 5)))
    positions = model.chunk_layout(obs, 6, prefix_lengths=torch.tensor([3, 0])).position_ids[0]
    free = model.chunk_layout(obs, 6).position_ids[0]
    start = int(positions[0, 0])
    assert positions[0].tolist() == [start, start + 1] + [start + 2 + k for k in range(3)] + [
        start + 12 + k for k in range(3, 6)
    ]
    assert positions[1, 2:].tolist() == free[1, 2:].tolist()
    assert free[0, 2:].tolist() == [start + 12 + k for k in range(6)]


def fixed_noise_loss(model, velocity_fn, prefix_probability=1.0):
    """compute_loss with known noise and a velocity given as a function of (target, is_prefix)."""
    batch = observation(num_text_tokens=(2, 5))
    obs = encode(model, batch)
    mask = action_mask(2, model.config)
    actions = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(5))
    target = actions - noise
    seen = {}

    def fake_velocity(noisy, timestep, observation_, mask_, layout=None):
        seen["noisy"] = noisy
        return velocity_fn(target)

    model.sample_noise = lambda like, generator=None: noise
    model.velocity = fake_velocity
    losses = model.compute_loss(obs, actions, mask, generator=torch.Generator().manual_seed(6))
    return losses, seen, actions, noise


def test_prefix_is_excluded_from_the_loss_and_kept_clean():
    model = tiny_model(action_prefix_probability=1.0, noisy_action_position_offset=10)
    generator = torch.Generator().manual_seed(6)
    model.sample_time(2, generator)
    lengths, _ = model.sample_prefix(2, 6, generator)
    assert (lengths > 0).all()
    is_prefix = torch.arange(6)[None, :, None] < lengths[:, None, None]
    # Wrong at every prefix position, right elsewhere: the loss must be exactly 0.
    losses, seen, actions, noise = fixed_noise_loss(model, lambda target: target + 3.0 * is_prefix)
    assert losses["loss"] == 0.0
    assert torch.equal(seen["noisy"][is_prefix.expand_as(actions)], actions[is_prefix.expand_as(actions)])
    # Wrong by 3 on every non-prefix active entry: masked MSE = 9.
    losses, *_ = fixed_noise_loss(tiny_model(action_prefix_probability=1.0), lambda target: target + 3.0)
    assert losses["loss"].item() == pytest.approx(9.0)


def test_padding_and_inactive_dims_are_excluded():
    model = tiny_model()
    batch = observation(num_text_tokens=(2, 5))
    obs = encode(model, batch)
    mask = action_mask(2, model.config)
    actions = torch.randn(2, 6, 32)
    is_pad = torch.zeros(2, 6, dtype=torch.bool)
    is_pad[1, 4:] = True
    noise = torch.zeros(2, 6, 32)
    model.sample_noise = lambda like, generator=None: noise
    wrong = torch.zeros(2, 6, 32)
    wrong[1, 4:] = 5.0  # only in padded steps
    wrong[..., 7:] = 5.0  # and in inactive dims
    model.velocity = lambda noisy, t, o, m, layout=None: actions + wrong
    assert model.compute_loss(obs, actions, mask, is_pad, torch.Generator().manual_seed(0))["loss"] == 0.0


def test_reweighting_formula_and_clamps():
    model = tiny_model(action_prefix_probability=1.0, loss_reweighting=True)
    batch = observation(num_text_tokens=(2, 5))
    obs = encode(model, batch)
    mask = action_mask(2, model.config)
    actions = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(7))
    actions[0, 5, 0] = 40.0  # one far-off target: its weight clamps at 5
    lengths = torch.tensor([2, 3])
    loss_mask = mask * (torch.arange(6)[None, :, None] >= lengths[:, None, None])
    with torch.no_grad():
        weight = model._prefix_loss_weight(
            obs, actions, mask, lengths, loss_mask, torch.Generator().manual_seed(8)
        )
        noise = model.sample_noise(actions, torch.Generator().manual_seed(8))
        generated = model._integrate(obs, mask, noise, 5, actions, lengths)
    error = (generated - actions).abs()
    expected = (error / ((error * loss_mask).sum() / loss_mask.sum())).clamp(0.5, 5.0)
    assert torch.allclose(weight, expected)
    assert weight.max() == 5.0 and weight.min() == 0.5
    assert torch.equal(generated[:, :2], actions[:, :2]), "the prefix stays as given through the Euler steps"


def test_frequency_loss_combination():
    model = tiny_model(frequency_loss_weight=0.25)
    obs = encode(model, observation())
    actions = torch.randn(1, 6, 32)
    parts = model.compute_loss(
        obs, actions, action_mask(1, model.config), generator=torch.Generator().manual_seed(0)
    )
    assert parts["frequency_loss"] > 0
    assert parts["loss"].item() == pytest.approx(
        0.5 * parts["flow_loss"].item() + 0.25 * parts["frequency_loss"].item(), rel=1e-5
    )
    # Parseval with an orthonormal rFFT: the one-sided spectrum's power is close to the time-domain power.
    error = torch.randn(3, 6, 32)
    ones = torch.ones(3, 6, 32)
    freq = frequency_loss(error, torch.zeros_like(error), ones)
    assert 0.3 < freq.item() / (error**2).mean().item() < 1.5


def test_training_repeat_expands_the_batch():
    model = tiny_model(training_repeat=4)
    obs = encode(model, observation(num_text_tokens=(2, 5)))
    seen = []
    original = model.velocity
    model.velocity = lambda x, t, o, m, layout=None: seen.append(x.shape[0]) or original(x, t, o, m, layout)
    losses = model.compute_loss(
        obs, torch.randn(2, 6, 32), action_mask(2, model.config), generator=torch.Generator().manual_seed(0)
    )
    assert seen == [8] and torch.isfinite(losses["loss"])


def test_forward_training_path_and_reproducibility():
    model = tiny_model(
        action_prefix_probability=0.5,
        action_attention_window=4,
        noisy_action_position_offset=10,
        loss_reweighting=True,
        training_repeat=2,
    )
    batch = observation(num_text_tokens=(2, 5))
    kwargs = dict(batch, action_mask=action_mask(2, model.config), actions=torch.randn(2, 6, 32))
    first = model(**kwargs, generator=torch.Generator().manual_seed(0))
    second = model(**kwargs, generator=torch.Generator().manual_seed(0))
    other = model(**kwargs, generator=torch.Generator().manual_seed(1))
    assert first.actions is None and first.loss.ndim == 0
    assert torch.equal(first.loss, second.loss) and not torch.equal(first.loss, other.loss)
    state = torch.get_rng_state()
    model(**kwargs, seed=3)
    assert torch.equal(state, torch.get_rng_state())


def test_frozen_vlm_gets_no_gradient_and_the_expert_does():
    model = tiny_model()
    model.train()
    model.vlm.requires_grad_(False)
    batch = observation(num_text_tokens=(2, 5))
    loss = model(
        **batch, action_mask=action_mask(2, model.config), actions=torch.randn(2, 6, 32), seed=0
    ).loss
    loss.backward()
    assert all(p.grad is None for p in model.vlm.parameters())
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("vlm."))


@pytest.mark.parametrize("async_recipe", [False, True])
def test_tiny_model_overfits_one_batch(async_recipe):
    recipe = (
        dict(action_prefix_probability=0.5, action_attention_window=4, noisy_action_position_offset=10)
        if async_recipe
        else {}
    )
    model = tiny_model(**recipe)
    model.train()
    model.vlm.requires_grad_(False)
    batch = observation(num_text_tokens=(2, 5))
    kwargs = dict(
        batch,
        action_mask=action_mask(2, model.config),
        actions=torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(0)),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(120):
        loss = model(**kwargs, seed=0).loss  # the same noise, t and prefix every step: a pure fit
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1])
