"""Checks that a model + processor directory saved on one transformers line loads on the other and acts the same.

    python tests/cross_line.py save DIR    # on line A: save a tiny model, a processor and the actions they give
    python tests/cross_line.py check DIR   # on line B: load both with the Auto classes, compare the actions

scripts/test.sh runs it in both directions after the test suites.
"""

import sys

import numpy as np
import torch

import conftest  # noqa: F401  (offline, `xr0` package)
from transformers import AutoModel, AutoProcessor, __version__
from conftest import REPO_ROOT
from tiny import tiny_model


def observation():
    rng = np.random.default_rng(0)
    images = {key: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for key in ("front", "hand")}
    return dict(images=images, instruction="Stack the red cube on the blue one.", state=np.linspace(-1, 1, 9),
                robot_type="my_arm")


def act(model, processor):
    inputs = processor(**observation())
    with torch.no_grad():
        actions = model(**inputs, seed=0).actions
    return processor.decode_action(actions, "my_arm").numpy()


def save(directory: str) -> None:
    model = tiny_model()
    processor = AutoProcessor.from_pretrained(REPO_ROOT, trust_remote_code=True, action_length=model.config.action_length)
    processor.register_robot_type("my_arm", views=[["front", "Front"], ["hand", "Hand"]], active_action_dims=6,
                                  action_mean=np.linspace(0, 1, 6), action_std=np.full(6, 0.5))
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    np.save(f"{directory}/expected_actions.npy", act(model, processor))
    print(f"saved on transformers {__version__}")


def check(directory: str) -> None:
    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
    difference = np.abs(act(model, processor) - np.load(f"{directory}/expected_actions.npy")).max()
    print(f"loaded on transformers {__version__}: max |actions - saved actions| = {difference:.2e}")
    if not difference < 1e-5:
        sys.exit("cross-line check failed")


if __name__ == "__main__":
    {"save": save, "check": check}[sys.argv[1]](sys.argv[2])
