"""Test set-up: an offline hub. The package `xr0` (this repository, `pip install -e .`) and the helper modules of
this folder (pytest puts it on the path) are imported directly."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from xr0 import REPO_ROOT  # noqa: E402,F401
