"""What the plugin's tests share: the tiny XR0 checkpoint, a policy config for the test dataset, frames and batches
as LeRobot hands them to a policy, LeRobot's console scripts run as a user runs them, and the few places where the
supported LeRobot lines differ."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from lerobot.configs.train import TrainPipelineConfig
from lerobot_policy_xr0 import XR0Config

# Where the supported LeRobot lines differ, each found by looking for the API itself.
try:  # lerobot >= 0.5
    from lerobot.utils.feature_utils import dataset_to_policy_features
except ImportError:  # lerobot 0.4
    from lerobot.datasets.utils import dataset_to_policy_features
# lerobot-train's flag for evaluating in an environment during training (0 turns it off).
ENV_EVAL_FREQ = (
    "env_eval_freq" if "env_eval_freq" in TrainPipelineConfig.__dataclass_fields__ else "eval_freq"
)

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
ACTION_WIDTH = 32  # the tiny checkpoint's padded action width A


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


def run_script(name: str, *arguments: str, timeout: int = 900) -> str:
    """Runs a LeRobot console script of this venv; its log (stdout + stderr) once it exited 0."""
    result = subprocess.run(
        [str(BIN / name), *arguments],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{log[-6000:]}"
    return log


def train_arguments(dataset, output, steps: int) -> list[str]:
    """lerobot-train's arguments for `steps` steps on `dataset`, saving the last one, on the CPU, offline."""
    return [
        f"--dataset.repo_id={dataset.repo_id}",
        f"--dataset.root={dataset.root}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        f"--steps={steps}",
        "--batch_size=2",
        f"--save_freq={steps}",
        "--log_freq=1",
        "--num_workers=0",
        "--wandb.enable=false",
        f"--{ENV_EVAL_FREQ}=0",
        f"--output_dir={output}",
    ]
