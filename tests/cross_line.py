"""Checks that a model + processor directory saved on one transformers line loads on the other and acts the same.

    python tests/cross_line.py save DIR    # on line A: save a tiny model, a processor and the actions they give
    python tests/cross_line.py check DIR   # on line B: load both with the Auto classes, compare the actions

scripts/test.sh runs it in both directions after the test suites; the loads must not warn.
"""

import sys

import conftest  # noqa: F401  (offline, `xr0` package)
import numpy as np
import torch
from quiet_loads import captured_warnings
from tiny import tiny_model
from transformers import AutoModel, AutoProcessor, __version__

from xr0 import REPO_ROOT
from xr0.processing_xr0 import set_image_bounds


def observation():
    rng = np.random.default_rng(0)
    images = {key: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for key in ("front", "hand")}
    return dict(
        images=images,
        instruction="Stack the red cube on the blue one.",
        state=np.linspace(-1, 1, 9),
        robot_type="my_arm",
    )


def act(model, processor):
    inputs = processor(**observation())
    with torch.no_grad():
        actions = model(**inputs, seed=0).actions
    return processor.decode_action(actions, "my_arm").numpy()


def save(directory: str) -> None:
    model = tiny_model()
    processor = AutoProcessor.from_pretrained(
        REPO_ROOT, trust_remote_code=True, action_length=model.config.action_length
    )
    # (T, 32) statistics with T = 15 and a 256² image floor: both must survive the other line's loading.
    mean, std = np.zeros((15, 32)), np.zeros((15, 32))
    mean[:, :6], std[:, :6] = np.linspace(0, 1, 6), 0.5
    processor.register_robot_type(
        "my_arm",
        views=[["front", "Front"], ["hand", "Hand"]],
        active_action_dims=6,
        action_mean=mean,
        action_std=std,
    )
    set_image_bounds(processor.image_processor, 256 * 256, 1024 * 1024)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    np.save(f"{directory}/expected_actions.npy", act(model, processor))
    print(f"saved on transformers {__version__}")


def check(directory: str) -> None:
    with captured_warnings() as messages:
        model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
    if messages:
        sys.exit("cross-line check failed: the loads warned:\n" + "\n".join(messages))
    actions = act(model, processor)
    if actions.shape != (15, 6) and actions.shape != (1, 15, 6):
        sys.exit(
            f"cross-line check failed: actions of shape {actions.shape}, expected T = 15 chunks of 6 dims"
        )
    difference = np.abs(actions - np.load(f"{directory}/expected_actions.npy")).max()
    print(f"loaded on transformers {__version__}: max |actions - saved actions| = {difference:.2e}")
    if not difference < 1e-5:
        sys.exit("cross-line check failed")


if __name__ == "__main__":
    {"save": save, "check": check}[sys.argv[1]](sys.argv[2])
