"""The LeRobot policy plugin in process, against the real LeRobot: its processor pipelines, XR0's own path for the
same observation, saving (with the state dict LeRobot may hand over) and loading, real-time chunking as LeRobot calls
it, and a named error for each mistake a user can make. The console scripts are in test_lerobot_scripts.py."""

import inspect

import numpy as np
import pytest
import torch
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.rtc.configuration_rtc import RTCConfig
from lerobot_policy_xr0 import XR0Config, XR0Policy, make_xr0_pre_post_processors
from support import ACTION_WIDTH, CHUNK, TINY, observation, policy_config, training_batch
from transformers import AutoModel, AutoProcessor

try:  # lerobot >= 0.6: the check lerobot-rollout makes before it drives a policy with real-time chunking
    from lerobot.rollout.inference.rtc import supports_rtc_inference
except ImportError:  # lerobot 0.4 has no rollout; its RTC example calls the same keywords
    supports_rtc_inference = None


def load_xr0(directory):
    """An XR0 checkpoint as XR0's users load it, in float32 (transformers 5 would use the config's dtype)."""
    return AutoModel.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32).eval()


def save_with_state_dict(policy, directory, state_dict) -> None:
    """`policy.save_pretrained(directory, state_dict=...)` as lerobot >= 0.5 calls it (under FSDP with the gathered
    full state dict); lerobot 0.4's save_pretrained takes none, so there its hook `_save_pretrained` directly."""
    if "state_dict" in inspect.signature(policy.save_pretrained).parameters:
        policy.save_pretrained(directory, state_dict=state_dict)
    else:
        directory.mkdir(parents=True)
        policy._save_pretrained(directory, state_dict=state_dict)


def test_forward_returns_xr0s_loss_and_its_parts(dataset):
    policy = XR0Policy(policy_config(dataset), dataset_stats=dataset.meta.stats)
    pre, _ = make_xr0_pre_post_processors(policy.config, dataset_stats=dataset.meta.stats)
    torch.manual_seed(0)
    loss, parts = policy.forward(pre(training_batch(dataset)))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    assert set(parts) == {"flow_loss", "frequency_loss"} and all(np.isfinite(v) for v in parts.values())


def test_select_action_equals_xr0s_own_path(dataset, tmp_path):
    """LeRobot's pre-processor -> select_action -> post-processor gives the actions of XR0's processor and model
    loaded with AutoModel from the saved policy's xr0/ checkpoint, for the same observation and noise."""
    policy = XR0Policy(policy_config(dataset), dataset_stats=dataset.meta.stats)
    pre, post = make_xr0_pre_post_processors(policy.config, dataset_stats=dataset.meta.stats)
    policy.save_pretrained(tmp_path / "policy")
    pre.save_pretrained(tmp_path / "policy")
    post.save_pretrained(tmp_path / "policy")
    noise = torch.randn(1, CHUNK, ACTION_WIDTH, generator=torch.Generator().manual_seed(3))

    frame = observation(dataset)
    with torch.inference_mode():
        chunk = post(policy.predict_action_chunk(pre(dict(frame)), noise=noise))  # (1, T, 4)
        policy.reset()
        first = post(policy.select_action(pre(dict(frame)), noise=noise))  # (1, 4)
    assert chunk.shape == (1, CHUNK, 4) and first.shape == (1, 4)
    torch.testing.assert_close(first, chunk[:, 0], atol=1e-6, rtol=0)

    model = load_xr0(tmp_path / "policy" / "xr0")
    processor = AutoProcessor.from_pretrained(tmp_path / "policy" / "xr0", trust_remote_code=True)
    pixels = (frame["observation.image"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    inputs = processor(
        images={"image": pixels},
        instruction=frame["task"],
        state=frame["observation.state"].numpy(),
        robot_type="lerobot",
    )
    with torch.inference_mode():
        ours = processor.decode_action(model(**inputs, noise=noise).actions, "lerobot")  # (1, T, 4)
    print(f"max |LeRobot path - XR0 path| = {float((chunk - ours).abs().max()):.2e}")
    torch.testing.assert_close(chunk, ours, atol=1e-5, rtol=0)

    # The reloaded pipelines and policy give the same chunk.
    reloaded = XR0Policy.from_pretrained(tmp_path / "policy")
    pre2, post2 = make_pre_post_processors(reloaded.config, pretrained_path=str(tmp_path / "policy"))
    with torch.inference_mode():
        again = post2(reloaded.predict_action_chunk(pre2(dict(frame)), noise=noise))
    torch.testing.assert_close(again, chunk, atol=1e-6, rtol=0)


def test_a_saved_policy_is_an_xr0_checkpoint_and_back_without_losing_weights(dataset, tmp_path):
    policy = XR0Policy(policy_config(dataset), dataset_stats=dataset.meta.stats)
    published = load_xr0(TINY)
    for name, tensor in published.state_dict().items():
        torch.testing.assert_close(policy.xr0_model.state_dict()[name], tensor, atol=0, rtol=0)
    with torch.no_grad():  # change the weights, as training would
        next(policy.xr0_model.action_output_layer.parameters()).add_(0.5)
    policy.save_pretrained(tmp_path / "policy")
    exported = load_xr0(tmp_path / "policy" / "xr0")
    reloaded = XR0Policy.from_pretrained(tmp_path / "policy")
    expected = policy.xr0_model.state_dict()
    for loaded in (exported.state_dict(), reloaded.xr0_model.state_dict()):
        assert sorted(loaded) == sorted(expected)
        for name, tensor in expected.items():
            torch.testing.assert_close(loaded[name], tensor, atol=0, rtol=0)


def test_a_state_dict_handed_to_save_pretrained_is_what_gets_saved(dataset, tmp_path):
    """LeRobot >= 0.5 hands `save_pretrained` a state dict (None, or under FSDP the full one gathered from the
    shards): its tensors are written, not the modules' own, and the modules are left as they were."""
    policy = XR0Policy(policy_config(dataset), dataset_stats=dataset.meta.stats)
    own = {name: tensor.clone() for name, tensor in policy.state_dict().items()}
    handed = {name: tensor.clone() for name, tensor in own.items()}
    handed["model.action_output_layer.layers.2.weight"] += (
        0.5  # e.g. the gathered weights of the training ranks
    )
    save_with_state_dict(policy, tmp_path / "policy", handed)
    exported = load_xr0(tmp_path / "policy" / "xr0").state_dict()
    reloaded = XR0Policy.from_pretrained(tmp_path / "policy").state_dict()
    assert sorted("model." + name for name in exported) == sorted(handed) == sorted(reloaded)
    for name, tensor in handed.items():
        torch.testing.assert_close(exported[name.removeprefix("model.")], tensor, atol=0, rtol=0)
        torch.testing.assert_close(reloaded[name], tensor, atol=0, rtol=0)
    for name, tensor in policy.state_dict().items():
        torch.testing.assert_close(tensor, own[name], atol=0, rtol=0)


def test_a_state_dict_with_lora_adapters_is_saved_merged(dataset, tmp_path):
    """With LoRA the handed state dict holds the adapters: they are merged into the saved XR0 checkpoint exactly as
    the policy's own would be, without touching the handed tensors."""
    policy = XR0Policy(policy_config(dataset, lora_rank=2), dataset_stats=dataset.meta.stats)
    handed = {name: tensor.clone() for name, tensor in policy.state_dict().items()}
    for name in handed:
        if "lora_B" in name:
            handed[name] += 0.1
    kept = {name: tensor.clone() for name, tensor in handed.items()}
    save_with_state_dict(policy, tmp_path / "handed", handed)
    for name, tensor in kept.items():
        torch.testing.assert_close(handed[name], tensor, atol=0, rtol=0)
    policy.load_state_dict(handed)  # the same weights in the policy itself, saved its own way
    policy.save_pretrained(tmp_path / "own")
    merged, expected = (load_xr0(tmp_path / name / "xr0").state_dict() for name in ("handed", "own"))
    assert sorted(merged) == sorted(expected) and not any("lora_" in name for name in merged)
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, atol=0, rtol=0)
    assert any(not torch.equal(merged[name], load_xr0(TINY).state_dict()[name]) for name in merged)


def test_a_state_dict_that_is_not_the_policys_is_refused_by_name(dataset, tmp_path):
    policy = XR0Policy(policy_config(dataset), dataset_stats=dataset.meta.stats)
    handed = dict(policy.state_dict())
    handed.pop("model.action_output_layer.layers.2.weight")
    handed["_fsdp_wrapped_module.stray"] = torch.zeros(1)
    with pytest.raises(
        ValueError,
        match=r"not this XR0 policy's .*missing \['model.action_output_layer.layers.2.weight'\].*"
        r"unexpected \['_fsdp_wrapped_module.stray'\]",
    ):
        save_with_state_dict(policy, tmp_path / "policy", handed)


def test_real_time_chunking_keeps_the_committed_actions(dataset):
    for mode in ("trained", "guided"):
        policy = XR0Policy(policy_config(dataset, rtc_prefix_mode=mode), dataset_stats=dataset.meta.stats)
        assert policy.supports_rtc()
        pre, _ = make_xr0_pre_post_processors(policy.config, dataset_stats=dataset.meta.stats)
        batch = pre(observation(dataset))
        left_over = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(1))
        chunk = policy.predict_action_chunk(batch, inference_delay=2, prev_chunk_left_over=left_over)
        assert chunk.shape == (1, CHUNK, 4) and torch.isfinite(chunk).all()
        torch.testing.assert_close(chunk[:, :2], left_over[:, :2], atol=1e-6, rtol=0)
        plain = policy.predict_action_chunk(batch, noise=torch.zeros(1, CHUNK, ACTION_WIDTH))
        assert not torch.allclose(plain[:, :2], left_over[:, :2])


def test_real_time_chunking_takes_lerobots_keyword_arguments(dataset):
    """As lerobot-rollout's RTC engine (0.6) calls it: `inference_delay` and a (n, D_a) leftover zero-padded to the
    execution horizon; `execution_horizon` as pi05 takes it; an `rtc_config` switched off ignores the leftover."""
    policy = XR0Policy(policy_config(dataset, rtc_prefix_mode="guided"), dataset_stats=dataset.meta.stats)
    if supports_rtc_inference is not None:
        assert supports_rtc_inference(policy)
    pre, _ = make_xr0_pre_post_processors(policy.config, dataset_stats=dataset.meta.stats)
    batch = pre(observation(dataset))
    left_over = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    padded = torch.cat([left_over, torch.zeros(RTCConfig().execution_horizon - 5, 4)])  # (10, 4)
    noise = torch.randn(1, CHUNK, ACTION_WIDTH, generator=torch.Generator().manual_seed(2))

    def chunk(**kwargs):
        return policy.predict_action_chunk(batch, noise=noise, **kwargs)

    policy.config.rtc_config = RTCConfig(enabled=True, execution_horizon=10)
    full = chunk(inference_delay=2, prev_chunk_left_over=padded)
    torch.testing.assert_close(full[:, :2], left_over[None, :2], atol=1e-6, rtol=0)
    # The keyword sets the horizon as the config's field does, and a shorter one guides fewer actions.
    short = chunk(inference_delay=2, prev_chunk_left_over=padded, execution_horizon=3)
    policy.config.rtc_config = RTCConfig(enabled=True, execution_horizon=3)
    torch.testing.assert_close(chunk(inference_delay=2, prev_chunk_left_over=padded), short, atol=0, rtol=0)
    torch.testing.assert_close(short[:, :2], left_over[None, :2], atol=1e-6, rtol=0)
    assert not torch.allclose(short[:, 3:], full[:, 3:])
    # RTC switched off (LeRobot's queue then appends whole chunks): the leftover is ignored.
    policy.config.rtc_config = RTCConfig(enabled=False)
    torch.testing.assert_close(chunk(inference_delay=2, prev_chunk_left_over=padded), chunk(), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"`execution_horizon` must be an int >= 1, got 0"):
        policy.config.rtc_config = None
        chunk(inference_delay=2, prev_chunk_left_over=padded, execution_horizon=0)
    with pytest.raises(TypeError, match=r"unexpected arguments \['delay'\]"):
        chunk(delay=2)


# ---- a named error for each mistake a user can make --------------------------------------------------------


def test_a_missing_camera_is_named(dataset):
    policy = XR0Policy(policy_config(dataset), dataset_stats=dataset.meta.stats)
    pre, _ = make_xr0_pre_post_processors(policy.config, dataset_stats=dataset.meta.stats)
    batch = pre(observation(dataset))
    batch.pop("observation.image")
    with pytest.raises(ValueError, match=r"no image 'observation.image'.*camera_map"):
        policy.select_action(batch)


def test_a_state_of_the_wrong_width_is_named(dataset):
    policy = XR0Policy(policy_config(dataset), dataset_stats=dataset.meta.stats)
    pre, _ = make_xr0_pre_post_processors(policy.config, dataset_stats=dataset.meta.stats)
    batch = pre(observation(dataset))
    batch["observation.state"] = torch.zeros(1, 6)
    with pytest.raises(ValueError, match=r"batch\['observation.state'\] must be a \(B, D\) = \(1, 4\)"):
        policy.predict_action_chunk(batch)


def test_an_unknown_robot_type_is_named(dataset):
    with pytest.raises(ValueError, match=r"robot_type 'my_arm' is not registered.*known: \["):
        XR0Policy(policy_config(dataset, robot_type="my_arm"))
    with pytest.raises(ValueError, match=r"robot_type 'my_arm' is not registered"):
        make_xr0_pre_post_processors(policy_config(dataset, robot_type="my_arm"))


def test_a_camera_map_onto_the_wrong_views_is_named(dataset):
    config = policy_config(dataset, robot_type="libero_all", camera_map={"observation.image": "base"})
    with pytest.raises(
        ValueError, match=r"camera_map maps onto views \['base'\]; robot type 'libero_all' takes"
    ):
        XR0Policy(config, dataset_stats=dataset.meta.stats)
    with pytest.raises(ValueError, match=r"camera_map names cameras \['observation.images.top'\]"):
        XR0Policy(
            policy_config(dataset, camera_map={"observation.images.top": "top"}),
            dataset_stats=dataset.meta.stats,
        )


def test_config_errors_are_named():
    with pytest.raises(ValueError, match=r"policy.recipe must be one of"):
        XR0Config(recipe="fast", device="cpu")
    with pytest.raises(ValueError, match=r"n_action_steps \(9\) cannot exceed policy.chunk_size \(8\)"):
        XR0Config(chunk_size=8, n_action_steps=9, device="cpu")
    with pytest.raises(ValueError, match=r"rtc_prefix_mode must be one of"):
        XR0Config(rtc_prefix_mode="blind", device="cpu")


def test_a_policy_without_a_checkpoint_is_named(dataset):
    with pytest.raises(ValueError, match=r"policy.checkpoint is required"):
        XR0Policy(policy_config(dataset, checkpoint=None), dataset_stats=dataset.meta.stats)


def test_lora_trains_adapters_and_saves_them_merged(dataset, tmp_path):
    policy = XR0Policy(policy_config(dataset, lora_rank=2), dataset_stats=dataset.meta.stats)
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert any("lora_" in name for name in trainable)
    assert not any("language_model" in name and "lora_" not in name for name in trainable)
    pre, _ = make_xr0_pre_post_processors(policy.config, dataset_stats=dataset.meta.stats)
    loss, _ = policy.forward(pre(training_batch(dataset)))
    loss.backward()
    with torch.no_grad():  # move the adapters off their zero start, as training would
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    policy.save_pretrained(tmp_path / "policy")
    exported = load_xr0(tmp_path / "policy" / "xr0")
    assert not any("lora_" in name for name in exported.state_dict())
    noise = torch.randn(1, CHUNK, ACTION_WIDTH, generator=torch.Generator().manual_seed(0))
    observed = pre(observation(dataset))
    with torch.inference_mode():
        adapted = policy.predict_action_chunk(observed, noise=noise)
        merged = exported(**policy._model_inputs(observed), noise=noise).actions[..., :4]
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)
