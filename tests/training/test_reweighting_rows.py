"""The async recipe's loss reweighting over a batch that mixes rows with a prefix and rows without one (every async
batch does): the mean error that scales the weights is taken over the prefixed rows' counted entries only, and rows
without a prefix keep weight 1. Hand-computed on a tiny model whose velocity is replaced by 0, so the reweighting
pass generates the sample's own training noise (its prefix steps held at the ground truth) and the error of each
entry is known in advance."""

import pytest
import torch
from tiny import action_mask, encode, observation, tiny_model

from xr0.modeling_xr0 import XR0TrainingDraws
from xr0.recipe_xr0 import prefix_loss_weight

ACTIVE = 7  # active action dims of `action_mask`


def zero_velocity_model():
    model = tiny_model(action_prefix_probability=1.0, loss_reweighting=True)
    assert tuple(model.config.loss_reweight_range) == (0.5, 5.0) and model.config.frequency_loss_weight == 0
    model.velocity = lambda noisy, timestep, observation, mask, layout=None: torch.zeros_like(noisy)
    return model


def mixed_noise() -> torch.Tensor:
    """Row 0 (prefix of 2): errors 1, 3, 2, 50 on steps 2-5; row 1 (no prefix): error 10 everywhere. The ground
    truth is 0, so a chunk generated with velocity 0 is the noise itself and the error |noise - 0| is the noise."""
    noise = torch.zeros(2, 6, 32)
    noise[0, 2:] = torch.tensor([1.0, 3.0, 2.0, 50.0])[:, None]
    noise[1] = 10.0
    return noise


def test_the_mean_error_is_that_of_the_prefixed_rows_only():
    """Row 0 has a prefix of 2 steps and counts steps 2-4 (step 5 is padding, out of its loss mask): errors 1, 3, 2,
    mean 2. Row 1 has no prefix: its error (10) is not part of the mean. Weights = error / 2 clamped to [0.5, 5]:
    row 0 gets 0.5, 1.5, 1 on steps 2-4; row 1's (10 / 2 = 5) are computed but compute_loss replaces them by 1.
    A mean over both rows' counted entries would be (3·7·2 + 6·7·10) / (3·7 + 6·7) = 7.33, and every weight of
    row 0 would clamp to 0.5."""
    model = zero_velocity_model()
    obs = encode(model, observation(num_text_tokens=(2, 5)))
    mask = action_mask(2, model.config, ACTIVE)
    lengths = torch.tensor([2, 0])
    counted = torch.ones(2, 6, 1)
    counted[0, :2] = 0  # the prefix
    counted[0, 5] = 0  # padding
    loss_mask = mask * counted
    weight = prefix_loss_weight(model, obs, torch.zeros(2, 6, 32), mask, lengths, loss_mask, mixed_noise())
    assert weight[0, 2:5, :ACTIVE] == pytest.approx(torch.tensor([0.5, 1.5, 1.0])[:, None].expand(3, ACTIVE))
    assert weight[1, :, :ACTIVE] == pytest.approx(torch.full((6, ACTIVE), 5.0))


def test_the_flow_loss_of_a_mixed_batch_through_forward():
    """The same batch through `forward(actions=..., training_draws=...)`: velocity 0 against the target
    actions - noise = -noise gives squared errors noise², weighted 0.5, 1.5, 1 on row 0's steps 2-4 (its prefix and
    its padded step 5 are not counted) and 1 on all 6 steps of row 1:
        (7·(1·0.5 + 9·1.5 + 4·1) + 6·7·100·1) / (3·7 + 6·7) = (126 + 4200) / 63 = 68.667.
    With the mean over every row's entries, row 0's weights would all be 0.5: (7·7 + 4200) / 63 = 67.44."""
    model = zero_velocity_model()
    batch = observation(num_text_tokens=(2, 5))
    is_pad = torch.zeros(2, 6, dtype=torch.bool)
    is_pad[0, 5] = True
    draws = XR0TrainingDraws(
        noise=mixed_noise(),
        timestep=torch.tensor([0.3, 0.7]),
        prefix_lengths=torch.tensor([2, 0]),
        hidden_actions=torch.zeros(2, 6, dtype=torch.bool),
    )
    with torch.no_grad():
        output = model(
            **batch,
            action_mask=action_mask(2, model.config, ACTIVE),
            actions=torch.zeros(2, 6, 32),
            action_is_pad=is_pad,
            training_draws=draws,
        )
    assert output.flow_loss.item() == pytest.approx((126 + 4200) / 63)
    assert output.loss.item() == pytest.approx(0.5 * (126 + 4200) / 63)


def test_a_batch_without_any_prefix_is_plain_mse():
    """No row has a prefix: no weight differs from 1 (there is no prefixed error to take a mean of), so the loss is
    the plain masked MSE: (6·7·1 + 6·7·100) / (2·6·7) = 50.5."""
    model = zero_velocity_model()
    noise = torch.ones(2, 6, 32)
    noise[1] = 10.0
    draws = XR0TrainingDraws(
        noise, torch.tensor([0.3, 0.7]), torch.tensor([0, 0]), torch.zeros(2, 6, dtype=torch.bool)
    )
    with torch.no_grad():
        output = model(
            **observation(num_text_tokens=(2, 5)),
            action_mask=action_mask(2, model.config, ACTIVE),
            actions=torch.zeros(2, 6, 32),
            training_draws=draws,
        )
    assert output.flow_loss.item() == pytest.approx(50.5)
