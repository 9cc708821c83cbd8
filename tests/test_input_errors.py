"""Bad inputs get a clear error that names the field, before anything reaches torch internals."""

import pytest
import torch
from tiny import IMAGE_PAD, action_mask, observation, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def batch():
    return observation(num_text_tokens=(3, 5))


def call(model, batch, **overrides):
    kwargs = dict(batch, action_mask=action_mask(2, model.config), seed=0)
    kwargs.update(overrides)
    with torch.no_grad():
        return model(**kwargs)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("state", torch.zeros(2, 32), r"`state` must have shape \(B, S, state_dim\) = \(2, S >= 1, 32\)"),
        ("state", torch.zeros(2, 1, 7), r"`state` must have shape"),
        ("state", torch.full((2, 1, 32), float("nan")), r"`state` contains NaN"),
        ("action_mask", torch.ones(2, 6, 7), r"`action_mask` must have shape \(B, T, A\) = \(2, T, 32\)"),
        ("action_mask", torch.ones(6, 32), r"`action_mask` must have shape"),
        ("noise", torch.zeros(1, 6, 32), r"`noise` must have shape \(B, T, A\) = \(2, 6, 32\)"),
        ("noise", torch.full((2, 6, 32), float("inf")), r"`noise` contains NaN"),
        (
            "attention_mask",
            torch.ones(2, 3, dtype=torch.long),
            r"`attention_mask` must have the shape of `input_ids`",
        ),
        ("image_grid_thw", torch.tensor([1, 4, 4]), r"`image_grid_thw` must be a \(num_images, 3\) tensor"),
        ("pixel_values", torch.zeros(10, 1536), r"`pixel_values` must have shape \(num_patches, C·t·p·p\)"),
        ("num_steps", 0, r"`num_steps` must be a positive int"),
    ],
)
def test_bad_field_is_named(model, batch, field, value, message):
    with pytest.raises(ValueError, match=message):
        call(model, batch, **{field: value})


def test_missing_images(model, batch):
    with pytest.raises(ValueError, match="image tokens but `pixel_values`/`image_grid_thw` are missing"):
        call(model, batch, pixel_values=None, image_grid_thw=None)


def test_image_tokens_must_match_the_grid(model, batch):
    ids = batch["input_ids"].clone()
    ids[ids == IMAGE_PAD] = 1000  # text where the image should be
    with pytest.raises(ValueError, match="The prompt holds 0 image tokens but `image_grid_thw`"):
        call(model, batch, input_ids=ids)


def test_required_inputs_and_unknown_arguments(model, batch):
    with pytest.raises(ValueError, match="`action_mask` is required"):
        call(model, batch, action_mask=None)
    with pytest.raises(ValueError, match="`state` is required"):
        call(model, batch, state=None)
    with pytest.raises(TypeError, match=r"unexpected arguments \['actionmask'\]"):
        call(model, batch, actionmask=1)
    with pytest.raises(ValueError, match="either `seed` or `generator`"):
        call(model, batch, generator=torch.Generator())


def test_text_only_prompt_is_allowed(model):
    ids = torch.tensor([[151644, 872, 198, 1000, 1001, 151645]])
    with torch.no_grad():
        actions = model(
            input_ids=ids, state=torch.zeros(1, 1, 32), action_mask=action_mask(1, model.config), seed=0
        ).actions
    assert actions.shape == (1, 6, 32) and torch.isfinite(actions).all()
