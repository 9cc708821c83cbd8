"""Test set-up: the repository root is a Hugging Face model repository whose remote-code files import each other
relatively, so they are exposed here as the package `xr0` (no `__init__.py` is shipped at the root)."""

import os
import sys
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
if "xr0" not in sys.modules:
    package = types.ModuleType("xr0")
    package.__path__ = [str(REPO_ROOT)]
    sys.modules["xr0"] = package
sys.path.insert(0, str(Path(__file__).resolve().parent))
