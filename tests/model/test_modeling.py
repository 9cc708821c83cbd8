import json
import os

import pytest
import torch
from published_layout import action_expert_shapes, write_published_checkpoint
from reference_xr0 import reference_actions
from tiny import action_mask, encode, observation, row, tiny_model
from transformers import AutoConfig, AutoModel

from xr0.modeling_xr0 import (
    XR0ForActionGeneration,
    build_dit_attention_mask,
    generator_from_seed,
    prompt_position_ids,
)
from xr0.sampler_xr0 import sample_noise


def run(model, batch, mask=None, **kwargs):
    if mask is None:
        mask = action_mask(batch["input_ids"].shape[0], model.config)
    with torch.no_grad():
        return model(**batch, action_mask=mask, **kwargs).actions


def noise_for(model, batch_size, seed=0, length=None):
    length = length or model.config.action_length
    return torch.randn(
        batch_size, length, model.config.action_dim, generator=torch.Generator().manual_seed(seed)
    )


def close(a, b, tolerance=1e-6):
    """Separately computed results agree up to float rounding (SIMD paths differ with alignment across CPUs)."""
    return (a - b).abs().max() <= tolerance * max(1.0, float(b.abs().max()))


# ---- outputs and noise control ------------------------------------------------------------------------------


def test_actions_shape_dtype_and_finite(model):
    batch = observation(num_text_tokens=(3, 8))
    actions = run(model, batch, seed=1)
    assert actions.shape == (2, model.config.action_length, model.config.action_dim)
    assert actions.dtype == torch.float32
    assert torch.isfinite(actions).all()


def test_same_seed_same_actions_and_global_rng_untouched(model):
    batch = observation()
    cpu_state = torch.get_rng_state()
    first = run(model, batch, seed=7)
    assert torch.equal(torch.get_rng_state(), cpu_state), "forward(seed=...) must not touch the global RNG"
    second = run(model, batch, seed=7)
    other = run(model, batch, seed=8)
    assert close(first, second)
    assert not torch.allclose(first, other)


def test_seed_generator_and_noise_agree(model):
    batch = observation()
    by_seed = run(model, batch, seed=3)
    by_generator = run(model, batch, generator=torch.Generator().manual_seed(3))
    by_noise = run(model, batch, noise=torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(3)))
    assert close(by_seed, by_generator)
    assert close(by_seed, by_noise)


@pytest.mark.parametrize(
    "shape, dtype", [((2, 10, 32), torch.float32), ((1, 4, 32), torch.float32), ((2, 30, 32), torch.bfloat16)]
)
def test_seed_draws_the_official_noise(model, shape, dtype):
    # The official forward: save the RNG, torch.manual_seed(seed), x0 = randn_like(action_mask), restore.
    mask = torch.ones(shape, dtype=dtype)
    state = torch.get_rng_state()
    torch.manual_seed(11)
    official = torch.randn_like(mask)
    torch.set_rng_state(state)
    ours = sample_noise(mask, generator_from_seed(11, mask.device), model.device)
    assert ours.dtype == torch.float32 and torch.equal(ours, official.float())


@pytest.mark.parametrize(
    "seed, error, message",
    [
        (1.7, TypeError, r"`seed` must be an int, got float 1.7"),
        ("12", TypeError, r"`seed` must be an int, got str '12'"),
        (True, TypeError, r"`seed` must be an int, got bool"),
        (2**64, ValueError, r"`seed` must be in \[-2\*\*63, 2\*\*64\)"),
    ],
)
def test_bad_seeds_are_refused_by_name(model, seed, error, message):
    with pytest.raises(error, match=message):
        run(model, observation(), seed=seed)


@pytest.mark.parametrize("length", [30, 10, 4, 1])
def test_chunk_length_comes_from_the_action_mask(model, length):
    batch = observation(num_text_tokens=(3, 8))
    mask = torch.zeros(2, length, 32)
    mask[..., :7] = 1
    actions = run(model, batch, mask=mask, seed=0)
    assert actions.shape == (2, length, 32) and torch.isfinite(actions).all()
    noise = noise_for(model, 2, length=length)
    with torch.no_grad():
        expected = reference_actions(
            model.vlm, model.state_dict(), model.config, action_mask=mask, noise=noise, **batch
        )
    assert (run(model, batch, mask=mask, noise=noise) - expected).abs().max() <= 1e-4


def test_state_length_comes_from_the_state(model):
    batch = observation()
    batch["state"] = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(0))
    noise = noise_for(model, 1)
    mask = action_mask(1, model.config)
    with torch.no_grad():
        expected = reference_actions(
            model.vlm, model.state_dict(), model.config, action_mask=mask, noise=noise, **batch
        )
    assert (run(model, batch, noise=noise) - expected).abs().max() <= 1e-4


def test_without_noise_control_draws_fresh_noise(model):
    batch = observation()
    assert not torch.allclose(run(model, batch), run(model, batch))


def test_num_steps_changes_integration(model):
    batch = observation()
    noise = noise_for(model, 1)
    five = run(model, batch, noise=noise)
    assert torch.equal(five, run(model, batch, noise=noise, num_steps=5))
    assert not torch.allclose(five, run(model, batch, noise=noise, num_steps=2))


def test_every_part_of_the_observation_moves_the_actions(model):
    # Guards the invariance tests below: with a model whose actions ignored the prompt they would pass vacuously.
    batch = observation(seed=0)
    other = observation(seed=1)
    noise = noise_for(model, 1)
    reference = run(model, batch, noise=noise)
    for field in ("pixel_values", "state"):
        changed = dict(batch, **{field: other[field]})
        assert (run(model, changed, noise=noise) - reference).abs().max() > 0.05, field
    longer = observation(num_text_tokens=(9,), seed=0)
    assert (run(model, longer, noise=noise) - reference).abs().max() > 0.05


# ---- the published math -------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_matches_independent_reference(model, padding_side):
    batch = observation(num_text_tokens=(2, 9), padding_side=padding_side)
    noise = noise_for(model, 2, seed=5)
    mask = action_mask(2, model.config)
    with torch.no_grad():
        ours = model(**batch, action_mask=mask, noise=noise).actions
        ref_batch = {k: v for k, v in batch.items()}
        expected = reference_actions(
            model.vlm, model.state_dict(), model.config, action_mask=mask, noise=noise, **ref_batch
        )
    assert torch.isfinite(expected).all()
    assert (ours - expected).abs().max() <= 1e-4


def test_encode_once_sample_many(model):
    batch = observation()
    mask = action_mask(1, model.config)
    noise = noise_for(model, 1)
    with torch.no_grad():
        obs = encode(model, batch)
        assert len(obs.cache_keys) == model.config.dit_config.num_hidden_layers
        L = batch["input_ids"].shape[1]
        assert obs.cache_keys[0].shape == (1, model.config.num_dit_attention_heads, L, 16)
        assert obs.context_tokens.shape == (1, 2, 64)
        layout = model.chunk_layout(obs, action_length=6)
        assert layout.attention_mask.shape == (1, 1, 8, L + 8)
        assert layout.position_embeddings[0].shape == (1, 8, 16)
        a = model.sample_actions(obs, mask, noise=noise)
        b = model.sample_actions(obs, mask, noise=noise)
    assert close(a, b)
    assert close(a, run(model, batch, noise=noise))


def test_dit_positions_continue_prompt_positions(model):
    batch = observation(num_text_tokens=(2, 9), padding_side="left")
    with torch.no_grad():
        positions = prompt_position_ids(
            model.vlm, batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"]
        )
        layout = model.chunk_layout(encode(model, batch), action_length=6)
    for b in range(2):
        real = batch["attention_mask"][b].bool()
        for axis in range(3):  # each MRoPE axis continues from its own maximum, as the official forward does
            start = int(positions[axis, b][real].max()) + 1
            assert layout.position_ids[axis, b].tolist() == list(range(start, start + 8))


def test_action_mask_hides_inactive_dims_from_the_dit(model):
    batch = observation()
    noise = noise_for(model, 1)
    mask = action_mask(1, model.config)
    obs = encode(model, batch)
    t = torch.zeros(1)
    changed = noise.clone()
    changed[..., 10:] += 3.0  # inactive dims only
    with torch.no_grad():
        assert close(model.velocity(noise, t, obs, mask), model.velocity(changed, t, obs, mask))


def test_dit_attention_mask_pattern():
    cache = torch.tensor([[0, 1, 1]], dtype=torch.bool)
    causal = build_dit_attention_mask(cache, state_length=1, action_length=4)[0, 0]
    assert causal.shape == (6, 9)
    assert causal[:, :3].tolist() == [[False, True, True]] * 6
    assert torch.equal(causal[:, 3:], torch.ones(6, 6, dtype=torch.bool).tril())
    windowed = build_dit_attention_mask(cache, state_length=1, action_length=4, window=2)[0, 0, :, 3:]
    expected = torch.ones(6, 6, dtype=torch.bool).tril()
    expected[5, 2] = False  # window 2: action i sees actions i-2 .. i (the released band is w + 1 wide)
    assert torch.equal(windowed, expected)


def test_position_offset_and_window_change_actions():
    batch = observation()
    base = tiny_model()
    shifted = tiny_model(noisy_action_position_offset=10)
    windowed = tiny_model(action_attention_window=2)
    noise = noise_for(base, 1)
    reference = run(base, batch, noise=noise)
    assert not torch.allclose(reference, run(shifted, batch, noise=noise))
    assert not torch.allclose(reference, run(windowed, batch, noise=noise))
    positions = shifted.chunk_layout(encode(shifted, batch), action_length=6).position_ids[0, 0].tolist()
    assert positions[2] - positions[1] == 11 and positions[1] - positions[0] == 1


# ---- padding, attention implementations, dtypes --------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padded_batch_rows_equal_single_rows(model, padding_side):
    batch = observation(num_text_tokens=(1, 12, 5), padding_side=padding_side, seed=2)
    noise = noise_for(model, 3, seed=9)
    batched = run(model, batch, noise=noise)
    for i in range(3):
        alone = run(model, row(batch, i), noise=noise[i : i + 1])
        assert (batched[i] - alone[0]).abs().max() < 1e-5, f"row {i}"


def test_eager_and_sdpa_agree(tmp_path, model):
    model.save_pretrained(tmp_path)
    batch = observation(num_text_tokens=(2, 7))
    noise = noise_for(model, 2)
    results = {}
    for implementation in ("eager", "sdpa"):
        loaded = XR0ForActionGeneration.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert loaded.vlm.model.language_model.config._attn_implementation == implementation
        results[implementation] = run(loaded, batch, noise=noise)
    assert (results["eager"] - results["sdpa"]).abs().max() < 1e-5


def test_flash_attention_2_is_accepted_by_our_classes(tmp_path, model):
    # The official classes refuse flash/sdpa requests for lack of support flags. Ours accept the request and
    # hand it to the VLM: on a machine without flash-attn, transformers' own package check is what refuses.
    model.save_pretrained(tmp_path)
    try:
        loaded = XR0ForActionGeneration.from_pretrained(tmp_path, attn_implementation="flash_attention_2")
    except ImportError as error:
        assert "installed" in str(error) and "flash" in str(error).lower()
    else:
        assert loaded.vlm.model.language_model.config._attn_implementation == "flash_attention_2"


def test_device_map_and_to(tmp_path, model):
    model.save_pretrained(tmp_path)
    loaded = XR0ForActionGeneration.from_pretrained(tmp_path, device_map="auto").eval()
    batch = observation()
    noise = noise_for(model, 1)
    assert close(run(loaded, batch, noise=noise), run(model, batch, noise=noise))
    as_double = loaded.to(torch.float64)
    assert as_double.dit.layers[0].adaln_table.dtype == torch.float64
    batch["pixel_values"] = batch["pixel_values"].double()
    assert (run(as_double, batch, noise=noise) - run(model, observation(), noise=noise)).abs().max() < 1e-4


def test_bfloat16_runs():
    model = tiny_model(dtype=torch.bfloat16)
    batch = observation(num_text_tokens=(2, 5))
    batch["pixel_values"] = batch["pixel_values"].bfloat16()
    actions = run(model, batch, seed=0)
    assert actions.dtype == torch.float32 and torch.isfinite(actions).all()
    reference = run(tiny_model(), observation(num_text_tokens=(2, 5)), seed=0)
    assert (actions - reference).abs().max() < 0.25  # bf16 keeps the same function, up to its precision


def test_gradients_flow_through_one_velocity_evaluation(model):
    model = tiny_model()
    model.train()
    batch = observation()
    obs = encode(model, batch)
    v = model.velocity(torch.randn(1, 6, 32), torch.tensor([0.3]), obs, action_mask(1, model.config))
    v.pow(2).mean().backward()
    for name in (
        "dit.layers.0.attn.qkv_proj.weight",
        "dit.layers.1.adaln_table",
        "sink.weight",
        "state_projector.layers.0.weight",
        "action_projector.layers.2.weight",
        "t_projector.layers.0.bias",
        "t_embedder.mlp.0.weight",
        "vlm.model.language_model.layers.3.self_attn.k_proj.weight",
        "vlm.model.visual.blocks.0.mlp.linear_fc1.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_gradient_checkpointing_trains_and_rebuilds_the_cache_exactly():
    model = tiny_model()
    batch = observation(num_text_tokens=(2, 6))
    args = (
        batch["input_ids"],
        batch["attention_mask"],
        batch["pixel_values"],
        batch["image_grid_thw"],
        batch["state"],
    )
    with torch.no_grad():
        cached = model.encode_observation(*args)
    # transformers 5.x renamed the switch (the old name warns); 4.57 has only the old one.
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    enable()
    assert all(layer.gradient_checkpointing for layer in model.dit.layers)
    model.train()
    rebuilt = model.encode_observation(*args)
    for a, b in zip(
        cached.cache_keys + cached.cache_values, rebuilt.cache_keys + rebuilt.cache_values, strict=True
    ):
        assert (a - b).abs().max() < 1e-5
    v = model.velocity(torch.randn(2, 6, 32), torch.tensor([0.5, 0.1]), rebuilt, action_mask(2, model.config))
    v.pow(2).mean().backward()
    params = dict(model.named_parameters())
    for name in (
        "dit.layers.0.attn.qkv_proj.weight",
        "vlm.model.language_model.layers.2.self_attn.k_proj.weight",
        "vlm.model.language_model.layers.0.mlp.up_proj.weight",
    ):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    model.eval()
    assert torch.isfinite(run(model, batch, seed=0)).all()


def test_no_split_modules_name_real_classes(model):
    classes = {type(m).__name__ for m in model.modules()}
    assert set(model._no_split_modules) <= classes


# ---- saving and loading --------------------------------------------------------------------------------------


def test_save_load_roundtrip_and_automodel(tmp_path, model):
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "configuration_xr0.py", "modeling_xr0.py"} <= files
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "xr0"
    assert saved["auto_map"]["AutoModel"] == "modeling_xr0.XR0ForActionGeneration"
    batch = observation(num_text_tokens=(3, 4))
    noise = noise_for(model, 2)
    expected = run(model, batch, noise=noise)

    loaded, info = XR0ForActionGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert close(run(loaded.eval(), batch, noise=noise), expected)

    auto = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(auto).__name__ == "XR0ForActionGeneration"
    assert type(AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)).__name__ == "XR0Config"
    assert (run(auto, batch, noise=noise) - expected).abs().max() < 1e-6


def published_mask(batch_size, length):
    mask = torch.zeros(batch_size, length, 32)
    mask[..., :7] = 1
    return mask


@pytest.mark.parametrize("layout", ["single", "sharded", "module_prefix", "model_prefix"])
def test_loads_published_layout(tmp_path, layout):
    prefix = {"module_prefix": "module.", "model_prefix": "model."}.get(layout, "")
    tensors = write_published_checkpoint(tmp_path, shards=2 if layout == "sharded" else 1, prefix=prefix)
    loaded, info = XR0ForActionGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert loaded.config.model_type == "xr0"
    assert torch.equal(loaded.vlm.lm_head.weight, loaded.vlm.model.language_model.embed_tokens.weight)
    state = loaded.state_dict()
    for name in (
        "action_output_layer.layers.0.weight",
        "action_output_layer.layers.2.weight",
        "dit.layers.1.adaln_table",
    ):
        assert torch.equal(state[name], tensors[name]), name


def test_pickled_weights_are_never_loaded(tmp_path):
    tensors = write_published_checkpoint(tmp_path, shards=1)
    (tmp_path / "model.safetensors").unlink()
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    with pytest.raises(EnvironmentError):
        XR0ForActionGeneration.from_pretrained(tmp_path)


# ---- the real model, on the meta device ----------------------------------------------------------------------


def test_real_config_builds_the_published_model_on_meta():
    from xr0.configuration_xr0 import XR0Config

    with torch.device("meta"):
        real = XR0ForActionGeneration(XR0Config())
    state = {k: tuple(v.shape) for k, v in real.state_dict().items() if not k.startswith("vlm.lm_head.")}
    total = sum(p.numel() for p in real.parameters())  # the tied lm_head is counted once
    assert 4.4e9 <= total <= 4.9e9, total
    assert {k.split(".")[0] for k in state} == {
        "vlm",
        "dit",
        "state_projector",
        "action_projector",
        "action_output_layer",
        "t_embedder",
        "t_projector",
        "sink",
    }
    assert sum(1 for k in state if k.startswith("dit.layers.") and k.endswith(".adaln_table")) == 16
    layer = {k[len("dit.layers.0.") :]: v for k, v in state.items() if k.startswith("dit.layers.0.")}
    assert layer == {
        "attn.qkv_proj.weight": (3072, 1024),
        "attn.qkv_proj.bias": (3072,),
        "attn.o_proj.weight": (1024, 1024),
        "attn.q_norm.weight": (128,),
        "attn.k_norm.weight": (128,),
        "mlp.gate_proj.weight": (4096, 1024),
        "mlp.up_proj.weight": (4096, 1024),
        "mlp.down_proj.weight": (1024, 4096),
        "input_layernorm.weight": (1024,),
        "middle_layernorm.weight": (1024,),
        "post_layernorm.weight": (1024,),
        "final_layernorm.weight": (1024,),
        "adaln_table": (6, 1024),
    }
    expected = {
        "state_projector.layers.0.weight": (1024, 32),
        "state_projector.layers.2.weight": (1024, 1024),
        "action_projector.layers.0.weight": (1024, 32),
        "action_projector.layers.2.weight": (1024, 1024),
        "action_output_layer.layers.0.weight": (32, 1024),
        "action_output_layer.layers.2.weight": (32, 32),
        "t_embedder.mlp.0.weight": (1024, 256),
        "t_embedder.mlp.2.weight": (1024, 1024),
        "t_projector.layers.0.weight": (6144, 1024),
        "t_projector.layers.0.bias": (6144,),
        "sink.weight": (1, 1024),
        "vlm.model.language_model.embed_tokens.weight": (151936, 2560),
        "vlm.model.language_model.layers.35.self_attn.k_proj.weight": (1024, 2560),
        "vlm.model.visual.merger.linear_fc2.weight": (2560, 4096),
    }
    for key, shape in expected.items():
        assert state[key] == shape, key
    assert not any("rotary" in k for k in state)
    published = action_expert_shapes(hidden=1024, layers=16, head_dim=128)  # the official modules' table
    assert {k: v for k, v in state.items() if not k.startswith("vlm.")} == published
    expert = sum(p.numel() for n, p in real.named_parameters() if not n.startswith("vlm."))
    assert 0.25e9 < expert < 0.31e9


def test_action_prefix_is_kept_and_conditions_the_rest():
    model = tiny_model(action_attention_window=4, noisy_action_position_offset=10)
    batch = observation(num_text_tokens=(2, 5))
    obs = encode(model, batch)
    mask = action_mask(2, model.config)
    noise = noise_for(model, 2)
    prefix = torch.randn(2, 3, 32)
    with torch.no_grad():
        free = model.sample_actions(obs, mask, noise=noise)
        conditioned = model.sample_actions(obs, mask, noise=noise, action_prefix=prefix)
        via_forward = model(**batch, action_mask=mask, noise=noise, action_prefix=prefix).actions
    assert torch.equal(conditioned[:, :3], prefix)
    assert (conditioned[:, 3:] - free[:, 3:]).abs().max() > 0.05
    assert close(via_forward, conditioned)
    with pytest.raises(
        ValueError, match=r"`action_prefix` must have shape \(B, p, A\) = \(2, p <= T = 6, 32\)"
    ):
        model.sample_actions(obs, mask, noise=noise, action_prefix=torch.zeros(2, 7, 32))


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_published_checkpoint_reproduces_the_reference_math(tmp_path, padding_side):
    """A checkpoint in the published layout (shapes from the official modules' table, the official config.json),
    loaded by our class, equals the reference math computed from the checkpoint file alone (a stock Qwen3-VL + the
    published DiT) at the chunk lengths of the published robot types."""
    from transformers import Qwen3VLForConditionalGeneration

    weights = write_published_checkpoint(tmp_path)
    loaded = XR0ForActionGeneration.from_pretrained(tmp_path).eval()
    stock_vlm = Qwen3VLForConditionalGeneration(loaded.config.vlm_config).eval()
    missing, unexpected = stock_vlm.load_state_dict(
        {k[len("vlm.") :]: v for k, v in weights.items() if k.startswith("vlm.")}, strict=False
    )
    assert missing == ["lm_head.weight"] and not unexpected
    batch = observation(num_text_tokens=(4, 8), padding_side=padding_side, state_dim=32)
    for length in (30, 10, 4):
        mask = published_mask(2, length)
        noise = noise_for(loaded, 2, seed=21, length=length)
        with torch.no_grad():
            ours = loaded(**batch, action_mask=mask, noise=noise).actions
            expected = reference_actions(
                stock_vlm, weights, loaded.config, action_mask=mask, noise=noise, **batch
            )
        assert (ours - expected).abs().max() <= 1e-5, length
        assert (ours - noise).abs().max() > 0.05, "the checkpoint's weights move the actions"


def test_dit_attention_dispatch_names_what_runs():
    from xr0.modeling_xr0 import dit_attention_function, eager_attention, sdpa_attention

    assert dit_attention_function("eager") is eager_attention
    assert dit_attention_function("sdpa") is sdpa_attention
    # flash kernels cannot take the DiT's mask: the VLM uses them, the DiT runs SDPA (and logs it once).
    assert dit_attention_function("flash_attention_2") is sdpa_attention
