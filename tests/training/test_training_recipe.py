"""Every fact of the training recipe (technical report + released post-training code) on a tiny model: time sampling, prefixes, masks, positions,
reweighting, loss masking, and that the loss trains."""

import pytest
import torch
from tiny import action_mask, encode, observation, row, tiny_model

from xr0 import recipe_xr0
from xr0.modeling_xr0 import build_dit_attention_mask
from xr0.recipe_xr0 import frequency_loss, prefix_loss_weight, sample_prefix, sample_time
from xr0.sampler_xr0 import euler_integrate, sample_noise


def test_time_distribution_moments():
    model = tiny_model()
    t = sample_time(model.config, 200_000, torch.Generator().manual_seed(0), "cpu")
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
    lengths, hidden = sample_prefix(model.config, 60_000, 10, torch.Generator().manual_seed(1), "cpu")
    counts = torch.bincount(lengths, minlength=8)
    assert counts[0] == 0 and counts[7:].sum() == 0
    assert ((counts[1:7].float() / 60_000) - 1 / 6).abs().max() < 0.01  # p ~ U{1..6}
    steps = torch.arange(10)[None]
    assert not (hidden & (steps >= lengths[:, None])).any(), "only prefix tokens are hidden"
    assert not (hidden & (steps >= lengths[:, None] - 2)).any(), "the last 2 prefix tokens stay visible"
    eligible = steps < lengths[:, None] - 2
    # One coin per eligible token (as released: torch.rand(p - 2) < 0.5), drawn per sample here.
    assert abs(float(hidden[eligible].float().mean()) - 0.5) < 0.01
    rows = eligible.sum(dim=1) >= 2
    mixed = (hidden[rows] != eligible[rows]).any(dim=1) & hidden[rows].any(dim=1)
    assert mixed.float().mean() > 0.2, "tokens of one prefix are hidden independently"
    half = sample_prefix(
        tiny_model(action_prefix_probability=0.5).config, 20_000, 6, torch.Generator().manual_seed(2), "cpu"
    )[0]
    assert abs(float((half > 0).float().mean()) - 0.5) < 0.015
    none = sample_prefix(tiny_model().config, 1000, 6, torch.Generator().manual_seed(3), "cpu")[0]
    short = sample_prefix(model.config, 10_000, 4, torch.Generator().manual_seed(4), "cpu")[0]
    assert short.min() == 1 and short.max() == 4, "p ~ U{1..min(6, T)} for a chunk of T = 4"
    assert not none.any()


def test_lambda_band_is_w_plus_one_tokens_wide():
    # Released: tril(ones) * triu(ones, diagonal=-w) over the action tokens.
    cache = torch.ones(1, 2, dtype=torch.bool)
    mask = build_dit_attention_mask(cache, state_length=1, action_length=7, window=2)[0, 0, :, 2:]
    actions = mask[2:, 2:]  # action queries x action keys
    expected = torch.ones(7, 7).tril().bool() & torch.ones(7, 7).triu(diagonal=-2).bool()
    assert torch.equal(actions, expected)
    assert actions[6].tolist() == [False] * 4 + [True] * 3, "token 6 sees 4, 5, 6: w + 1 = 3 tokens"
    assert mask[2:, :2].all(), "sink and state stay visible to every action token"
    assert not mask[:2, 2:].any(), "sink and state never see actions"


def test_hidden_prefix_tokens_are_hidden_from_noisy_tokens_only():
    cache = torch.ones(1, 2, dtype=torch.bool)
    hidden = torch.tensor([[True, True, False, False, False, False]])  # prefix of 4, first 2 hidden
    mask = build_dit_attention_mask(
        cache, 1, 6, window=4, hidden_actions=hidden, prefix_lengths=torch.tensor([4])
    )[0, 0, 2:, 4:]  # action queries x action keys
    assert mask[:4, :2].tolist() == [[True, False], [True, True], [True, True], [True, True]], (
        "prefix sees prefix"
    )
    assert not mask[4:, :2].any(), "noisy tokens do not see the hidden prefix tokens"
    assert mask[4:, 2:4].all(), "the last 2 prefix tokens stay visible"


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


def fixed_noise_loss(monkeypatch, model, velocity_fn, prefix_probability=1.0):
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

    monkeypatch.setattr(recipe_xr0, "sample_noise", lambda like, generator, device: noise)
    model.velocity = fake_velocity
    losses = model.compute_loss(obs, actions, mask, generator=torch.Generator().manual_seed(6))
    return losses, seen, actions, noise


def test_prefix_is_excluded_from_the_loss_and_kept_clean(monkeypatch):
    model = tiny_model(action_prefix_probability=1.0, noisy_action_position_offset=10)
    generator = torch.Generator().manual_seed(6)
    sample_time(model.config, 2, generator, "cpu")
    lengths, _ = sample_prefix(model.config, 2, 6, generator, "cpu")
    assert (lengths > 0).all()
    is_prefix = torch.arange(6)[None, :, None] < lengths[:, None, None]
    # Wrong at every prefix position, right elsewhere: the loss must be exactly 0.
    losses, seen, actions, noise = fixed_noise_loss(
        monkeypatch, model, lambda target: target + 3.0 * is_prefix
    )
    assert losses["loss"] == 0.0
    assert torch.equal(seen["noisy"][is_prefix.expand_as(actions)], actions[is_prefix.expand_as(actions)])
    # Wrong by 3 on every non-prefix active entry: masked MSE = 9, the released loss 0.5 · 9.
    losses, *_ = fixed_noise_loss(
        monkeypatch, tiny_model(action_prefix_probability=1.0), lambda target: target + 3.0
    )
    assert losses["flow_loss"].item() == pytest.approx(9.0)
    assert losses["loss"].item() == pytest.approx(4.5)


def test_padding_and_inactive_dims_are_excluded(monkeypatch):
    model = tiny_model()
    batch = observation(num_text_tokens=(2, 5))
    obs = encode(model, batch)
    mask = action_mask(2, model.config)
    actions = torch.randn(2, 6, 32)
    is_pad = torch.zeros(2, 6, dtype=torch.bool)
    is_pad[1, 4:] = True
    noise = torch.zeros(2, 6, 32)
    monkeypatch.setattr(recipe_xr0, "sample_noise", lambda like, generator, device: noise)
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
    noise = torch.randn(
        2, 6, 32, generator=torch.Generator().manual_seed(8)
    )  # the sample's own training noise
    with torch.no_grad():
        weight = prefix_loss_weight(model, obs, actions, mask, lengths, loss_mask, noise)
        generated = euler_integrate(model, obs, mask, noise, 5, actions, lengths)
    error = (generated - actions).abs()
    expected = (error / ((error * loss_mask).sum() / loss_mask.sum())).clamp(0.5, 5.0)
    assert torch.allclose(weight, expected)
    assert weight.max() == 5.0 and weight.min() == 0.5
    assert torch.equal(generated[:, :2], actions[:, :2]), "the prefix stays as given through the Euler steps"


def test_reweighting_regenerates_from_the_samples_own_training_noise(monkeypatch):
    """compute_loss's reweighting pass generates each prefixed sample's chunk from the noise that sample was
    trained with (compute_loss's first draw from `generator`), not from fresh noise: its weight equals the
    weight built independently from `sample_actions` run on that noise, one row at a time, with the row's
    prefix."""
    model = tiny_model(action_prefix_probability=1.0, loss_reweighting=True)
    batch = observation(num_text_tokens=(2, 5))
    mask = action_mask(2, model.config)
    actions = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(7))
    lengths = torch.tensor([2, 4])
    monkeypatch.setattr(
        recipe_xr0,
        "sample_prefix",
        lambda config, batch_size, length, generator, device: (
            lengths,
            torch.zeros(2, 6, dtype=torch.bool),
        ),
    )
    weights = []
    monkeypatch.setattr(
        recipe_xr0,
        "prefix_loss_weight",
        lambda *args: weights.append(prefix_loss_weight(*args)) or weights[-1],
    )
    with torch.no_grad():
        model.compute_loss(encode(model, batch), actions, mask, generator=torch.Generator().manual_seed(3))
        noise = sample_noise(actions, torch.Generator().manual_seed(3), "cpu")  # the training noise
        generated = torch.cat(
            [
                model.sample_actions(
                    encode(model, row(batch, i)),
                    mask[i : i + 1],
                    noise=noise[i : i + 1],
                    action_prefix=actions[i : i + 1, : lengths[i]],
                )
                for i in range(2)
            ]
        )
    error = (generated - actions).abs()
    loss_mask = mask * (torch.arange(6)[None, :, None] >= lengths[:, None, None])
    expected = (error / ((error * loss_mask).sum() / loss_mask.sum())).clamp(0.5, 5.0)
    assert len(weights) == 1
    assert torch.allclose(weights[0] * loss_mask, expected * loss_mask, atol=1e-4), (
        (weights[0] - expected).abs().max()
    )
    assert float(((weights[0] - 1) * loss_mask).abs().max()) > 0.1, "the weights are not all 1"


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


def test_frequency_term_by_hand():
    # Released: mean |rfft(pred) - rfft(target)| (default norm) x each sample's mean weight; here over active
    # dims only. A constant error e over T = 4 steps has spectrum [4e, 0, 0] on each dim.
    error = torch.zeros(2, 4, 3)
    error[0, :, 0] = 1.0  # sample 0, dim 0: constant 1
    error[1, :, 1] = -2.0  # sample 1, dim 1: constant -2
    loss_mask = torch.zeros(2, 4, 3)
    loss_mask[..., :2] = 1  # dims 0 and 1 active, dim 2 padded
    error[..., 2] = 100.0  # a padded dim does not count
    weights = torch.tensor([1.0, 3.0])
    term = frequency_loss(error, torch.zeros_like(error), loss_mask, sample_weight=weights)
    # |S| sums: sample 0 -> 4 (dim 0), sample 1 -> 8 (dim 1), weighted 4·1 + 8·3 = 28, over 2·3·2 = 12 entries.
    assert term.item() == pytest.approx(28 / 12)


def test_noisy_input_is_the_flow_interpolation(monkeypatch):
    """x_t = (1 - t)·noise + t·actions at non-prefix positions (noise at t = 0, data at t = 1)."""
    model = tiny_model(action_prefix_probability=0.0)
    obs = encode(model, observation(num_text_tokens=(2, 5)))
    actions = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(1))
    seen = {}
    original = model.velocity

    def recording(noisy, t, o, m, layout=None):
        seen["noisy"], seen["t"] = noisy.clone(), t.clone()
        return original(noisy, t, o, m, layout)

    model.velocity = recording
    noise = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(recipe_xr0, "sample_noise", lambda like, generator, device: noise)
    model.compute_loss(obs, actions, action_mask(2, model.config), generator=torch.Generator().manual_seed(3))
    t = seen["t"][:, None, None]
    assert torch.allclose(seen["noisy"], (1 - t) * noise + t * actions, atol=1e-6)
    assert (seen["t"] < 0.999).all() and (seen["t"] > 0).all()


def test_repeated_rows_pair_each_observation_with_its_own_actions(monkeypatch):
    model = tiny_model(training_repeat=3)
    obs = encode(model, observation(num_text_tokens=(2, 5)))
    actions = torch.stack([torch.full((6, 32), 1.0), torch.full((6, 32), -1.0)])
    seen = {}
    original = model.velocity

    def recording(noisy, t, o, m, layout=None):
        seen["noisy"], seen["t"], seen["context"] = noisy.clone(), t.clone(), o.context_tokens.clone()
        return original(noisy, t, o, m, layout)

    model.velocity = recording
    noise = torch.zeros(6, 6, 32)
    monkeypatch.setattr(recipe_xr0, "sample_noise", lambda like, generator, device: noise)
    model.compute_loss(obs, actions, action_mask(2, model.config), generator=torch.Generator().manual_seed(0))
    for r in range(6):  # row r is observation r // 3 with actions[r // 3]
        assert torch.allclose(seen["noisy"][r], seen["t"][r] * actions[r // 3])
        assert torch.equal(seen["context"][r], obs.context_tokens[r // 3])


def test_hide_probability_one_reaches_the_velocity_call(monkeypatch):
    model = tiny_model(
        action_prefix_probability=1.0,
        prefix_hide_probability=1.0,
        max_action_prefix_length=6,
        action_attention_window=4,
    )
    obs = encode(model, observation(num_text_tokens=(2, 5)))
    seen = {}
    original = model.velocity

    def recording(noisy, t, o, m, layout=None):
        seen["layout"] = layout
        return original(noisy, t, o, m, layout)

    model.velocity = recording
    monkeypatch.setattr(
        recipe_xr0,
        "sample_prefix",
        lambda config, batch_size, length, generator, device: (
            torch.tensor([5, 5]),
            torch.tensor([[True, True, True, False, False, False]] * 2),
        ),
    )
    model.compute_loss(
        obs, torch.randn(2, 6, 32), action_mask(2, model.config), generator=torch.Generator().manual_seed(0)
    )
    mask = seen["layout"].attention_mask[0, 0, -6:, -6:]  # action queries x action keys
    assert not mask[5, :3].any(), "the noisy token does not see the hidden prefix tokens"
    assert mask[2, :3].all(), "prefix tokens see each other"


def test_rows_without_a_prefix_contribute_plain_mse(monkeypatch):
    model = tiny_model(action_prefix_probability=1.0, loss_reweighting=True)
    obs = encode(model, observation(num_text_tokens=(2, 5)))
    actions = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(1))
    noise = torch.zeros(2, 6, 32)
    monkeypatch.setattr(recipe_xr0, "sample_noise", lambda like, generator, device: noise)
    monkeypatch.setattr(
        recipe_xr0,
        "sample_prefix",
        lambda config, batch_size, length, generator, device: (
            torch.tensor([3, 0]),
            torch.zeros(2, 6, dtype=torch.bool),
        ),
    )
    monkeypatch.setattr(
        recipe_xr0, "prefix_loss_weight", lambda *args: torch.full((2, 6, 32), 5.0)
    )  # huge everywhere
    model.velocity = lambda noisy, t, o, m, layout=None: actions - noise + 1.0  # error 1 on every entry
    losses = model.compute_loss(
        obs, actions, action_mask(2, model.config), generator=torch.Generator().manual_seed(0)
    )
    # Row 0 (prefix 3): 3 steps x 7 dims weighted 5; row 1 (no prefix): 6 steps x 7 dims weighted 1.
    assert losses["flow_loss"].item() == pytest.approx((3 * 7 * 5 + 6 * 7 * 1) / (3 * 7 + 6 * 7))


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
@pytest.mark.slow
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
