"""The LeRobot policy plugin against the real LeRobot: its dataset writer, lerobot-train, lerobot-eval in its own
Meta-World environment, its processor pipelines, and XR0's own path for the same observation.

Run in a venv with lerobot installed (see lerobot_plugin/test.sh)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.datasets.utils import dataset_to_policy_features
from lerobot.policies.factory import make_pre_post_processors
from lerobot_policy_xr0 import XR0Config, XR0Policy, make_xr0_pre_post_processors
from transformers import AutoModel, AutoProcessor

sys.path.insert(0, str(Path(__file__).parent))
from lerobot_data import write_dataset  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = REPO_ROOT / "fixtures" / "tiny-xr0"
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "MUJOCO_GL": "egl",
}
CHUNK, EXECUTED = 8, 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The dataset as lerobot-train reads it: each frame with its chunk of T actions and their padding flags."""
    written = write_dataset(tmp_path_factory.mktemp("data") / "tiny", episodes=2, frames=24, side=64)
    steps = [i / written.fps for i in range(CHUNK)]
    return LeRobotDataset(written.repo_id, root=written.root, delta_timestamps={"action": steps})


def policy_config(dataset, **changes) -> XR0Config:
    features = dataset_to_policy_features(dataset.meta.features)
    settings = dict(checkpoint=str(TINY), chunk_size=CHUNK, n_action_steps=EXECUTED, device="cpu")
    return XR0Config(
        output_features={k: f for k, f in features.items() if k == "action"},
        input_features={k: f for k, f in features.items() if k != "action"},
        **{**settings, **changes},
    )


def observation(dataset, index: int = 5) -> dict:
    """One frame as lerobot-eval hands it to the pre-processor: tensors without the batch dim and the task."""
    frame = dataset[index]
    return {
        "observation.image": frame["observation.image"],
        "observation.state": frame["observation.state"],
        "task": frame["task"],
    }


def training_batch(dataset, indices=(0, 30)) -> dict:
    """Frames of both episodes collated as LeRobot's DataLoader does: tensors stacked, tasks listed."""
    frames = [dataset[i] for i in indices]
    keys = ("observation.image", "observation.state", "action", "action_is_pad")
    return {**{k: torch.stack([f[k] for f in frames]) for k in keys}, "task": [f["task"] for f in frames]}


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """lerobot-train --policy.type=xr0 from the tiny XR0 checkpoint, three steps: the saved policy directory."""
    output = tmp_path_factory.mktemp("train") / "run"
    command = [
        str(BIN / "lerobot-train"),
        "--dataset.repo_id=local/xr0_plugin_test",
        f"--dataset.root={dataset.root}",
        "--policy.type=xr0",
        f"--policy.checkpoint={TINY}",
        f"--policy.chunk_size={CHUNK}",
        f"--policy.n_action_steps={EXECUTED}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        "--steps=3",
        "--batch_size=2",
        "--save_freq=3",
        "--log_freq=1",
        "--num_workers=0",
        "--wandb.enable=false",
        "--eval_freq=0",
        f"--output_dir={output}",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=ENV, timeout=900, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "step:3" in log and "loss:" in log, log[-2000:]
    return output / "checkpoints" / "000003" / "pretrained_model"


def test_lerobot_train_saves_a_policy_that_reloads_with_policy_path(trained):
    for name in (
        "config.json",
        "policy_preprocessor.json",
        "policy_postprocessor.json",
        "xr0/model.safetensors",
    ):
        assert (trained / name).is_file(), name
    policy = XR0Policy.from_pretrained(trained)
    assert policy.config.checkpoint == str(trained / "xr0") and not policy.training
    # The robot type lerobot-train registered from the dataset's statistics came back with the policy.
    assert policy.processor.chunk_length("lerobot") == CHUNK
    assert policy.camera_map == {"observation.image": "image"}
    # What LeRobot's loaders do with --policy.path: the pipelines reload, the action statistics with them.
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(trained))
    normalizer = next(step for step in pre.steps if type(step).__name__ == "NormalizerProcessorStep")
    assert set(normalizer.stats) >= {"action"}


def test_lerobot_eval_runs_the_policy_in_lerobots_metaworld_env(trained, tmp_path):
    output = tmp_path / "eval"
    command = [
        str(BIN / "lerobot-eval"),
        f"--policy.path={trained}",
        "--env.type=metaworld",
        "--env.task=reach-v3",
        "--eval.n_episodes=1",
        "--eval.batch_size=1",
        "--policy.device=cpu",
        f"--output_dir={output}",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=ENV, timeout=1200, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "'n_episodes': 1" in result.stdout + result.stderr


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
    noise = torch.randn(1, CHUNK, 32, generator=torch.Generator().manual_seed(3))

    frame = observation(dataset)
    with torch.inference_mode():
        chunk = post(policy.predict_action_chunk(pre(dict(frame)), noise=noise))  # (1, T, 4)
        policy.reset()
        first = post(policy.select_action(pre(dict(frame)), noise=noise))  # (1, 4)
    assert chunk.shape == (1, CHUNK, 4) and first.shape == (1, 4)
    torch.testing.assert_close(first, chunk[:, 0], atol=1e-6, rtol=0)

    model = AutoModel.from_pretrained(tmp_path / "policy" / "xr0", trust_remote_code=True).eval()
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
    published = AutoModel.from_pretrained(TINY, trust_remote_code=True)
    for name, tensor in published.state_dict().items():
        torch.testing.assert_close(policy.xr0_model.state_dict()[name], tensor, atol=0, rtol=0)
    with torch.no_grad():  # change the weights, as training would
        next(policy.xr0_model.action_output_layer.parameters()).add_(0.5)
    policy.save_pretrained(tmp_path / "policy")
    exported = AutoModel.from_pretrained(tmp_path / "policy" / "xr0", trust_remote_code=True)
    reloaded = XR0Policy.from_pretrained(tmp_path / "policy")
    expected = policy.xr0_model.state_dict()
    for loaded in (exported.state_dict(), reloaded.xr0_model.state_dict()):
        assert sorted(loaded) == sorted(expected)
        for name, tensor in expected.items():
            torch.testing.assert_close(loaded[name], tensor, atol=0, rtol=0)


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
        plain = policy.predict_action_chunk(batch, noise=torch.zeros(1, CHUNK, 32))
        assert not torch.allclose(plain[:, :2], left_over[:, :2])


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
    exported = AutoModel.from_pretrained(tmp_path / "policy" / "xr0", trust_remote_code=True).eval()
    assert not any("lora_" in name for name in exported.state_dict())
    noise = torch.randn(1, CHUNK, 32, generator=torch.Generator().manual_seed(0))
    observed = pre(observation(dataset))
    with torch.inference_mode():
        adapted = policy.predict_action_chunk(observed, noise=noise)
        merged = exported(**policy._model_inputs(observed), noise=noise).actions[..., :4]
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)
