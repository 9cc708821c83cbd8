"""Xiaomi-Robotics-0 (XR0) as an installable package: this directory is the Hugging Face model repository
(`configuration_xr0.py`, `modeling_xr0.py`, `processing_xr0.py` are its remote code, loaded by
`AutoModel`/`AutoProcessor.from_pretrained(..., trust_remote_code=True)`) and, installed with
`pip install -e .`, the package `xr0` with its tools: `xr0.training`, `xr0.deploy`, `xr0.labs` (the closed-loop
labs' shared machinery) and its tasks `xr0.planar_reach`, `xr0.meta_world`, `xr0.scripts`.

Importing `xr0` imports nothing heavy: the light deployment side (`xr0_client`) needs neither torch nor
transformers.
"""

from pathlib import Path

# The repository root: the model files, fixtures/ and variants/ live here.
REPO_ROOT = Path(__file__).resolve().parent
