"""Write the embedded tiny checkpoint `fixtures/tiny-xr0/`: the real architecture and tokenizer with RANDOM
weights, small enough to ship in the repository (~5 MB, bf16), so the demo and the tests run the whole path
(processor -> model -> decoded actions) on a fresh clone without downloading anything.

    python -m xr0.scripts.make_tiny_checkpoint [--output fixtures/tiny-xr0]

Tokenizer and remote-code files are symlinks to the repository root, so there is one copy of each.
"""

from pathlib import Path

import numpy as np

from xr0_common.cli import ArgumentParser

from .. import REPO_ROOT
from ..checkpoint_layout import REMOTE_CODE_FILES, TOKENIZER_FILES, link_to_repository_root
from .write_root_files import config_dict, image_processor_config, processor_config, write_json

CONFIGURATION = "tiny-xr0"  # xr0.tiny_model.TINY_CONFIGURATIONS
DEFAULT_OUTPUT = REPO_ROOT / "fixtures" / "tiny-xr0"
ROBOT_TYPE = "libero_all"


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    import torch

    from ..processing_xr0 import PUBLISHED_ROBOT_TYPES
    from ..tiny_model import tiny_configuration, tiny_model

    output = args.output
    output.mkdir(parents=True, exist_ok=True)
    for name in (
        REMOTE_CODE_FILES + TOKENIZER_FILES
    ):  # links of an earlier run: save_pretrained would write through them
        (output / name).unlink(missing_ok=True)

    model = tiny_model(seed=0, configuration=CONFIGURATION)
    model.to(torch.bfloat16).save_pretrained(output)
    # save_pretrained wrote copies of the code files and a line-dependent config; replace both.
    for name in REMOTE_CODE_FILES:
        (output / name).unlink(missing_ok=True)
    write_json(
        output / "config.json", config_dict(model.config, tiny_configuration(CONFIGURATION)["vlm_config"])
    )

    # Made-up statistics in the published layout (`action_config` in preprocessor_config.json, (T, 32) per robot
    # type): these weights were never trained, so there is nothing real to de-normalize with.
    chunk_length = PUBLISHED_ROBOT_TYPES[ROBOT_TYPE]["chunk_length"]
    mean = np.zeros(32)
    std = np.r_[np.full(6, 0.05), 1.0, np.zeros(25)]
    action_config = {
        ROBOT_TYPE: {
            "mean": np.tile(mean, (chunk_length, 1)).tolist(),
            "std": np.tile(std, (chunk_length, 1)).tolist(),
        }
    }
    write_json(
        output / "preprocessor_config.json", {**image_processor_config(), "action_config": action_config}
    )
    write_json(output / "processor_config.json", processor_config(action_length=model.config.action_length))

    link_to_repository_root(output)
    size = (output / "model.safetensors").stat().st_size
    print(
        f"wrote {output} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"model.safetensors {size / 1e6:.1f} MB, random weights)"
    )


if __name__ == "__main__":
    main()
