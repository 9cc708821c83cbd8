"""Import the remote-code files of this repository as the package `xr0` (they import each other relatively,
as Hugging Face remote code does, and the repository root ships no `__init__.py`).

    from xr0_import import xr0  # then: from xr0.modeling_xr0 import XR0ForActionGeneration
"""

import sys
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

if "xr0" not in sys.modules:
    _package = types.ModuleType("xr0")
    _package.__path__ = [str(REPO_ROOT)]
    sys.modules["xr0"] = _package
xr0 = sys.modules["xr0"]
