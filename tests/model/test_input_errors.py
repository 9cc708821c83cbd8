"""Bad inputs get a clear error that names the field, before anything reaches torch internals."""

import pytest
import torch
from tiny import IMAGE_PAD, action_mask, observation


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


@pytest.mark.parametrize(
    "field, value, error, message",
    [
        ("input_ids", lambda b: b["input_ids"].float(), TypeError, r"`input_ids` must be an integer tensor"),
        (
            "input_ids",
            lambda b: b["input_ids"].masked_fill(b["input_ids"] == 1000, 10**7),
            ValueError,
            r"`input_ids` must be token ids in \[0, 151936\)",
        ),
        (
            "input_ids",
            lambda b: b["input_ids"].masked_fill(b["input_ids"] == 1000, -5),
            ValueError,
            r"token ids in",
        ),
        (
            "image_grid_thw",
            lambda b: b["image_grid_thw"].float(),
            ValueError,
            r"`image_grid_thw` must hold positive integers",
        ),
        ("image_grid_thw", lambda b: b["image_grid_thw"] * 0, ValueError, r"must hold positive integers"),
    ],
)
def test_token_ids_and_grids_are_checked_before_torch(model, batch, field, value, error, message):
    with pytest.raises(error, match=message):
        call(model, batch, **{field: value(batch)})


def test_a_checkpoint_missing_a_weight_is_refused_by_name(tmp_path, model):
    from safetensors.torch import load_file, save_file

    from xr0.modeling_xr0 import XR0ForActionGeneration

    model.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["dit.layers.1.adaln_table"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(OSError, match=r"lacks 1 weight\(s\) of this model: dit.layers.1.adaln_table"):
        XR0ForActionGeneration.from_pretrained(tmp_path)
    partial = XR0ForActionGeneration.from_pretrained(tmp_path, allow_missing_weights=True)
    assert partial.dit.layers[1].adaln_table.shape == (6, 64)


def test_a_truncated_safetensors_file_is_named(tmp_path, model):
    from xr0.modeling_xr0 import XR0ForActionGeneration

    model.save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-1000])
    with pytest.raises(OSError, match=r"model.safetensors is truncated"):
        XR0ForActionGeneration.from_pretrained(tmp_path)
    file.write_bytes(b"\xff" * 64)
    with pytest.raises(OSError, match=r"model.safetensors is not a readable safetensors file"):
        XR0ForActionGeneration.from_pretrained(tmp_path)
