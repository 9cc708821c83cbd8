"""LeRobot's console scripts with `--policy.type=xr0`, run as a user runs them: lerobot-train saves, resumes and
fine-tunes from a saved policy (`--policy.path`), lerobot-eval reloads the policy and drives it in LeRobot's
Meta-World environment."""

import json

import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.envs.configs import MetaworldEnv
from lerobot.policies.factory import make_policy, make_pre_post_processors
from lerobot_policy_xr0 import XR0Policy
from lerobot_policy_xr0.processor_xr0 import load_xr0_processor
from safetensors.torch import load_file
from support import CHUNK, observation, run_script, train_arguments

SAVED = ("config.json", "policy_preprocessor.json", "policy_postprocessor.json", "train_config.json")
XR0_FILES = ("config.json", "model.safetensors", "processor_config.json", "modeling_xr0.py")


def saved_policy(run, step: int):
    return run / "checkpoints" / f"{step:06d}" / "pretrained_model"


def assert_saved(run, step: int) -> None:
    policy = saved_policy(run, step)
    for name in SAVED + tuple(f"xr0/{name}" for name in XR0_FILES):
        assert (policy / name).is_file(), f"{policy}/{name}"
    assert json.loads((policy / "config.json").read_text())["type"] == "xr0"
    state = policy.parent / "training_state"
    assert json.loads((state / "training_step.json").read_text())["step"] == step
    assert (state / "optimizer_state.safetensors").is_file()


def test_lerobot_train_saves_a_policy(trained):
    assert_saved(trained, 2)
    # The robot type lerobot-train registered from the dataset's statistics is in the saved XR0 checkpoint.
    processor = load_xr0_processor(str(saved_policy(trained, 2) / "xr0"))
    assert processor.chunk_length("lerobot") == CHUNK


def test_lerobot_train_resumes_from_its_checkpoint(trained, dataset):
    """`--resume=true --config_path=...`: LeRobot reloads the policy from the saved directory (as `--policy.path`
    does), the optimizer and the step, trains on and saves again."""
    config = saved_policy(trained, 2) / "train_config.json"
    log = run_script(
        "lerobot-train", f"--config_path={config}", "--resume=true", "--steps=4", "--save_freq=4"
    )
    assert "step:4" in log and "step:1 " not in log, log[-3000:]
    assert_saved(trained, 4)
    resumed = json.loads((saved_policy(trained, 4) / "config.json").read_text())
    assert resumed["checkpoint"] == str(saved_policy(trained, 2) / "xr0")  # started from the saved policy
    before = load_file(saved_policy(trained, 2) / "xr0" / "model.safetensors")
    after = load_file(saved_policy(trained, 4) / "xr0" / "model.safetensors")
    assert sorted(before) == sorted(after)
    assert any(not torch.equal(before[name], after[name]) for name in before)  # two more steps trained


def test_lerobot_train_fine_tunes_a_saved_policy_on_a_video_dataset(trained, video_dataset, tmp_path):
    """`--policy.path=<saved policy>` on a dataset whose camera LeRobot stored as a video."""
    output = tmp_path / "run"
    log = run_script(
        "lerobot-train",
        f"--policy.path={saved_policy(trained, 2)}",
        *train_arguments(video_dataset, output, 1),
    )
    assert "step:1" in log, log[-3000:]
    assert_saved(output, 1)


def test_the_reload_lerobot_eval_does(trained, dataset):
    """lerobot-eval's loading, step by step: the config with `--policy.path`, `make_policy` with the environment's
    features, the saved pipelines with lerobot-eval's overrides. Weights and actions are the saved policy's."""
    path = saved_policy(trained, 2)
    config = PreTrainedConfig.from_pretrained(path)
    config.pretrained_path = path
    policy = make_policy(cfg=config, env_cfg=MetaworldEnv(task="reach-v3"), rename_map={})
    assert isinstance(policy, XR0Policy) and not policy.training
    saved = load_file(path / "xr0" / "model.safetensors")
    loaded = policy.xr0_model.state_dict()
    for name, tensor in saved.items():
        torch.testing.assert_close(loaded[name], tensor, atol=0, rtol=0)
    overrides = {"device_processor": {"device": "cpu"}, "rename_observations_processor": {"rename_map": {}}}
    pre, post = make_pre_post_processors(
        policy_cfg=config, pretrained_path=str(path), preprocessor_overrides=overrides
    )
    normalizer = next(step for step in pre.steps if type(step).__name__ == "NormalizerProcessorStep")
    torch.testing.assert_close(
        torch.as_tensor(normalizer.stats["action"]["mean"]).float(),
        torch.as_tensor(dataset.meta.stats["action"]["mean"]).float(),
    )
    noise = torch.randn(1, CHUNK, 32, generator=torch.Generator().manual_seed(0))
    frame = observation(dataset)
    reference = XR0Policy.from_pretrained(path)
    with torch.inference_mode():
        ours = post(policy.predict_action_chunk(pre(dict(frame)), noise=noise))
        expected = post(reference.predict_action_chunk(pre(dict(frame)), noise=noise))
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)


def test_lerobot_eval_runs_the_policy_in_lerobots_metaworld_env(trained, tmp_path):
    log = run_script(
        "lerobot-eval",
        f"--policy.path={saved_policy(trained, 2)}",
        "--env.type=metaworld",
        "--env.task=reach-v3",
        "--eval.n_episodes=1",
        "--eval.batch_size=1",
        "--policy.device=cpu",
        f"--policy.n_action_steps={CHUNK}",  # overrides the saved 4: half the predictions
        f"--output_dir={tmp_path / 'eval'}",
        timeout=1200,
    )
    assert "'n_episodes': 1" in log, log[-3000:]
