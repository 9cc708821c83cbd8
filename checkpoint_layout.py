"""What a checkpoint directory of this repository holds, and the one way the repository's own checkpoints (the
tiny test model, the closed-loop fixtures, the variants) share the root's copy of the code and tokenizer."""

import os
from pathlib import Path

from . import REPO_ROOT

# The remote code that AutoModel/AutoProcessor(..., trust_remote_code=True) load from a checkpoint directory.
REMOTE_CODE_FILES = (
    "configuration_xr0.py",
    "modeling_xr0.py",
    "processing_xr0.py",
    "recipe_xr0.py",
    "robot_types_xr0.py",
    "sampler_xr0.py",
    "sampling_xr0.py",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def link_to_repository_root(directory: Path) -> None:
    """Replace the remote-code and tokenizer files of a checkpoint directory inside the repository with relative
    links to the root's, so the repository holds one copy of each."""
    for name in REMOTE_CODE_FILES + TOKENIZER_FILES:
        link = directory / name
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(REPO_ROOT / name, directory))
