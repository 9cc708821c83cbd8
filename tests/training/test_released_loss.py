"""The training loss equals the released post-training loss (restated independently in reference_xr0.py from the
spec) for given draws: over chunk lengths, prefix lengths, hiding patterns, repeats, a batch mixing prefix lengths,
and with all or only some action dims active. And the public way to give a step's draws is checked by name."""

import pytest
import torch
from reference_xr0 import reference_loss
from tiny import observation, tiny_model

from xr0.modeling_xr0 import XR0TrainingDraws
from xr0.recipe_xr0 import sample_training_draws

RECIPE = dict(
    action_prefix_probability=0.5,
    action_attention_window=4,
    noisy_action_position_offset=10,
    loss_reweighting=True,
    frequency_loss_weight=1.0,
)


def draws_for(rows, length, prefix_lengths, hidden, seed):
    generator = torch.Generator().manual_seed(seed)
    hidden_actions = torch.zeros(rows, length, dtype=torch.bool)
    for r, tokens in enumerate(hidden):
        hidden_actions[r, list(tokens)] = True
    return XR0TrainingDraws(
        noise=torch.randn(rows, length, 32, generator=generator),
        timestep=torch.rand(rows, generator=generator) * 0.999,
        prefix_lengths=torch.tensor(prefix_lengths, dtype=torch.long),
        hidden_actions=hidden_actions,
    )


def compare(batch_size, length, repeats, prefix_lengths, hidden, active_dims, seed=0):
    """Ours against the restatement on one batch; returns both for further checks."""
    model = tiny_model(training_repeat=repeats, **RECIPE)
    batch = observation(num_text_tokens=(3, 6, 2)[:batch_size], seed=seed)
    generator = torch.Generator().manual_seed(100 + seed)
    actions = torch.randn(batch_size, length, 32, generator=generator)
    mask = torch.zeros(batch_size, length, 32)
    mask[..., :active_dims] = 1
    draws = draws_for(batch_size * repeats, length, prefix_lengths, hidden, seed)
    with torch.no_grad():
        ours = model(**batch, action_mask=mask, actions=actions, training_draws=draws)
        expected = reference_loss(
            model.vlm,
            model.state_dict(),
            model.config,
            batch,
            actions,
            mask,
            draws.noise,
            draws.timestep,
            draws.prefix_lengths,
            draws.hidden_actions,
            repeats=repeats,
        )
    for name in ("loss", "flow_loss", "frequency_loss"):
        assert float(getattr(ours, name)) == pytest.approx(expected[name], abs=1e-5, rel=0), name
    return ours, expected


# (T, p, hidden prefix tokens): one prefix length per batch, as released; tokens 0 .. p - 3 may be hidden.
SHARED_PREFIX = [
    (4, 0, ()),
    (4, 1, ()),
    (4, 2, ()),
    (4, 3, (0,)),
    (10, 0, ()),
    (10, 1, ()),
    (10, 3, (0,)),
    (10, 3, ()),
    (10, 6, (0, 1, 2)),
    (10, 6, (1, 3)),
    (30, 0, ()),
    (30, 2, ()),
    (30, 3, (0,)),
    (30, 6, (0, 3)),
    (30, 6, ()),
]


@pytest.mark.parametrize("length, prefix, hidden", SHARED_PREFIX)
@pytest.mark.parametrize("active_dims", [32, 7])
@pytest.mark.slow
def test_one_prefix_per_batch_equals_the_released_loss(length, prefix, hidden, active_dims):
    """As released, every row shares p and the hidden tokens (one sample, training_repeat 2)."""
    compare(1, length, 2, [prefix] * 2, [hidden] * 2, active_dims)


@pytest.mark.parametrize("active_dims", [32, 7])
def test_four_repeats_with_their_own_hiding_equal_the_released_loss(active_dims):
    """training_repeat 4: the repeats of a sample have their own noise, t and hiding coins (drawn per row here)."""
    prefixes = [6, 6, 4, 6, 3, 3, 6, 5]
    hidden = [(0, 1, 2, 3), (), (0,), (2,), (0,), (), (1, 3), (0, 2)]
    compare(2, 10, 4, prefixes, hidden, active_dims, seed=1)


@pytest.mark.parametrize("active_dims", [32, 7])
def test_a_batch_mixing_prefix_lengths_equals_the_restatement(active_dims):
    """Rows with p = 0, 1, 2, 3 and 6 in one batch: each row's frequency term is its own suffix's (DFT length
    T - p), and the reweighting's mean runs over the rows with a prefix."""
    prefixes = [0, 3, 6, 1, 2, 0]
    hidden = [(), (0,), (0, 2, 3), (), (), ()]
    compare(3, 30, 2, prefixes, hidden, active_dims, seed=2)


def test_the_reweighting_pass_sees_the_training_hiding():
    """The weights of a row with hidden prefix tokens differ from those of the same row without hiding: the
    generation that weights the loss attends through the training pass's mask (hidden columns included)."""
    _, hidden = compare(1, 10, 1, [6], [(0, 1, 2, 3)], 32)
    _, visible = compare(1, 10, 1, [6], [()], 32)
    assert float((hidden["weights"][0] - visible["weights"][0]).abs().max()) > 1e-3


def test_the_frequency_term_of_a_prefixed_row_is_its_suffixs_spectrum():
    """Hand-computed: a constant error e over the T - p = 4 steps after a prefix of p = 2 has the spectrum
    [4e, 0, 0] on each dim; with T = 6 and the prefix zeroed instead, a length-6 DFT would give other bins."""
    from xr0.recipe_xr0 import frequency_loss

    error = torch.zeros(1, 6, 2)
    error[0, 2:, 0] = 1.0  # dim 0: constant 1 after the prefix
    error[0, :2, :] = 50.0  # prefix steps: excluded by the mask
    loss_mask = torch.zeros(1, 6, 2)
    loss_mask[0, 2:, :] = 1
    term = frequency_loss(error, torch.zeros_like(error), loss_mask, prefix_lengths=torch.tensor([2]))
    # |S| sums to 4 on dim 0, 0 on dim 1, over 2 dims x (4 // 2 + 1) = 6 magnitudes.
    assert term.item() == pytest.approx(4 / 6)


BAD_DRAWS = [
    ("noise", torch.zeros(2, 10, 31), "training_draws.noise"),
    ("timestep", torch.zeros(3), "training_draws.timestep"),
    ("timestep", torch.full((2,), 1.5), r"timestep` must lie in \[0, 1\]"),
    ("prefix_lengths", torch.tensor([0.0, 1.0]), "training_draws.prefix_lengths` must be integers"),
    ("prefix_lengths", torch.tensor([0, 11]), r"prefix_lengths` must lie in \[0, T = 10\]"),
    ("hidden_actions", torch.ones(2, 10, dtype=torch.bool), "may hide prefix tokens only"),
    ("hidden_actions", torch.zeros(2, 10), "training_draws.hidden_actions` must be bool"),
    ("noise", torch.full((2, 10, 32), float("nan")), "training_draws.noise"),
]


@pytest.mark.parametrize("field, value, message", BAD_DRAWS)
def test_bad_draws_are_refused_by_name(field, value, message):
    model = tiny_model(training_repeat=2, **RECIPE)
    batch = observation()
    draws = draws_for(2, 10, [3, 0], [(), ()], 0)
    setattr(draws, field, value)
    mask = torch.ones(1, 10, 32)
    with pytest.raises(ValueError, match=message):
        model(**batch, action_mask=mask, actions=torch.zeros(1, 10, 32), training_draws=draws)


def test_draws_and_a_source_of_draws_are_exclusive():
    model = tiny_model(**RECIPE)
    batch = observation()
    draws = draws_for(1, 10, [0], [()], 0)
    kwargs = dict(batch, action_mask=torch.ones(1, 10, 32), training_draws=draws)
    with pytest.raises(ValueError, match="not both"):
        model(**kwargs, actions=torch.zeros(1, 10, 32), seed=0)
    with pytest.raises(ValueError, match="training inputs"):
        model(**kwargs)


def test_sampled_draws_given_back_reproduce_the_loss():
    """The draws `sample_training_draws` makes, passed back in, give the loss of the sampled step."""
    model = tiny_model(training_repeat=2, **RECIPE)
    batch = observation(num_text_tokens=(3, 5))
    actions = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 10, 32)
    with torch.no_grad():
        sampled = model(**batch, action_mask=mask, actions=actions, seed=7).loss
        draws = sample_training_draws(
            model.config, actions.repeat_interleave(2, dim=0), 2, torch.Generator().manual_seed(7)
        )
        given = model(**batch, action_mask=mask, actions=actions, training_draws=draws).loss
    assert torch.equal(sampled, given)
