"""Observations as clients send them, for the tiny checkpoint served by the `policy`, `policy30` and `server`
fixtures of conftest.py."""

import numpy as np

from xr0 import REPO_ROOT

TINY = REPO_ROOT / "fixtures" / "tiny-xr0"


def observation(seed=0, size=224, **overrides):
    rng = np.random.default_rng(seed)
    obs = {
        "images": {
            view: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for view in ("base", "wrist_left")
        },
        "instruction": "Put the bowl on the plate.",
        "state": rng.normal(size=8).astype(np.float32),
        "robot_type": "libero_all",
        "seed": seed,
    }
    obs.update(overrides)
    return obs
