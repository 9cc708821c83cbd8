"""Write the repository root's configuration files for the real XR0 base model, deterministically:

    preprocessor_config.json   the Qwen3-VL image processor as XR0 uses it (patch 16, merge 2, mean/std 0.5;
                               a 224x224 view stays 224x224 -> 49 image tokens)
    processor_config.json      XR0Processor: chunk sizes and the robot-type registry (published view layouts)

    python scripts/write_root_files.py [--output .]
"""

import argparse
import json
from pathlib import Path

from xr0_import import xr0  # noqa: F401
from xr0.processing_xr0 import PUBLISHED_ROBOT_TYPES

AUTO_MAP = {"AutoProcessor": "processing_xr0.XR0Processor"}

IMAGE_PROCESSOR_CONFIG = {
    "auto_map": AUTO_MAP,
    "processor_class": "XR0Processor",
    "image_processor_type": "Qwen2VLImageProcessor",
    "do_convert_rgb": True,
    "do_resize": True,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "patch_size": 16,
    "merge_size": 2,
    "temporal_patch_size": 2,
    # Robot camera images (224-320 px) must keep their size: the floor stays far below 224*224 pixels.
    "min_pixels": 3136,
    "max_pixels": 1003520,
    "size": {"shortest_edge": 3136, "longest_edge": 1003520},
}


def processor_config(action_length: int = 30, action_dim: int = 32, state_dim: int = 32) -> dict:
    return {
        "auto_map": AUTO_MAP,
        "processor_class": "XR0Processor",
        "action_length": action_length,
        "action_dim": action_dim,
        "state_dim": state_dim,
        "robot_types": PUBLISHED_ROBOT_TYPES,
    }


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    write_json(args.output / "preprocessor_config.json", IMAGE_PROCESSOR_CONFIG)
    write_json(args.output / "processor_config.json", processor_config())


if __name__ == "__main__":
    main()
