"""Convert a published XiaomiRobotics checkpoint into a complete, loadable directory of this repository.

    xr0-convert --source XiaomiRobotics/Xiaomi-Robotics-0-LIBERO --output out/libero
    xr0-convert --source /data/Xiaomi-Robotics-0-LIBERO --output out/libero --variant libero

The source is a Hugging Face repo id (downloaded with `huggingface_hub.snapshot_download`, JSON and safetensors
only, at `--revision`: by default the revision the variant pins; the resolved commit is recorded) or a local
directory in the published layout (config.json with `model_type: "mibot"` as the official code writes it,
safetensors single or sharded, preprocessor_config.json with `action_config`). The output holds our code files,
our config schema, the processor (tokenizer, the image processor with the source's pixel bounds as the official
runtime resolves them, the variant's robot type with the checkpoint's statistics), the weights as safetensors
with an index (names unchanged, wrapper prefixes removed) and the variant's model card. Every tensor is checked
against the model the config describes (names and shapes) before anything is written.
"""

import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from xr0_common.cli import ArgumentParser

from .. import REPO_ROOT
from ..checkpoint_layout import REMOTE_CODE_FILES
from ..robot_types_xr0 import ROBOT_TYPES
from .write_root_files import (
    MAX_SHARD_BYTES,
    config_dict,
    index_dict,
    shard_plan,
    stored_tensor_shapes,
    write_json,
)

if TYPE_CHECKING:  # loaded where used: --help and requests parse without torch
    import torch

VARIANTS_DIR = REPO_ROOT / "variants"


class ConversionError(Exception):
    pass


def load_variant(name: str) -> dict:
    path = VARIANTS_DIR / name / "variant.json"
    if not path.is_file():
        known = sorted(p.name for p in VARIANTS_DIR.iterdir() if (p / "variant.json").is_file())
        raise ConversionError(f"unknown variant {name!r}; known variants: {known}")
    return json.loads(path.read_text())


def guess_variant(source: str, action_config: dict) -> str:
    """The variant whose repo id is the source, else the one whose robot type the statistics name, else base."""
    variants = [json.loads(p.read_text()) for p in sorted(VARIANTS_DIR.glob("*/variant.json"))]
    for variant in variants:
        if variant["repo_id"].lower() == source.lower().rstrip("/"):
            return variant["name"]
    for variant in variants:
        if variant["robot_type"] and variant["robot_type"] in action_config:
            return variant["name"]
    return "base"


def pinned_revision(source: str) -> Optional[str]:
    """The revision a variant pins for its published repo id (None for other sources)."""
    for path in sorted(VARIANTS_DIR.glob("*/variant.json")):
        variant = json.loads(path.read_text())
        if variant["repo_id"].lower() == source.lower().rstrip("/"):
            return variant["revision"]
    return None


def resolve_source(source: str, revision: Optional[str]) -> tuple:
    """(local directory, provenance) for a directory or a Hugging Face repo id (at `revision`, by default the
    variant's pinned one, else "main")."""
    path = Path(source)
    if path.is_dir():
        return path, {"source": str(path.resolve())}
    from huggingface_hub import snapshot_download

    revision = revision or pinned_revision(source) or "main"
    local = Path(snapshot_download(source, revision=revision, allow_patterns=["*.json", "*.safetensors"]))
    # snapshot folders are named after the commit they hold: that commit pins what was converted.
    return local, {"source": source, "revision": local.name}


def read_weight_files(directory: Path) -> dict:
    """{stored key: file} from the index, or from the single safetensors file."""
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return {key: directory / file for key, file in json.loads(index.read_text())["weight_map"].items()}
    single = directory / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return {key: single for key in f.keys()}
    raise ConversionError(
        f"{directory}: no model.safetensors or model.safetensors.index.json (only safetensors are read)"
    )


def tensor_metadata(files: dict) -> dict:
    """{stored key: (shape, dtype)} read from the safetensors headers, without loading tensors."""
    from safetensors import safe_open

    metadata = {}
    for file in sorted(set(files.values())):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if files.get(key) == file:
                    view = f.get_slice(key)
                    metadata[key] = (tuple(view.get_shape()), view.get_dtype())
    return metadata


def check_tensors(renamed: dict, expected: dict) -> None:
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected) - {"vlm.lm_head.weight"})
    mismatched = [
        f"{k}: {renamed[k][0]} != {expected[k]}"
        for k in sorted(set(renamed) & set(expected))
        if tuple(renamed[k][0]) != expected[k]
    ]
    if missing or unexpected or mismatched:
        lines = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                lines.append(
                    f"{len(items)} {title}: " + ", ".join(items[:8]) + (" ..." if len(items) > 8 else "")
                )
        raise ConversionError("the checkpoint does not match its config:\n  " + "\n  ".join(lines))


def convert(
    source: str,
    output: Path,
    variant_name: str = None,
    revision: Optional[str] = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> dict:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from ..configuration_xr0 import OFFICIAL_MODEL_TYPE, XR0Config, from_official_config_dict
    from ..modeling_xr0 import checkpoint_wrapper_prefix
    from ..processing_xr0 import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, XR0Processor, set_image_bounds

    directory, provenance = resolve_source(source, revision)
    official = json.loads((directory / "config.json").read_text())
    if official.get("model_type") not in (OFFICIAL_MODEL_TYPE, XR0Config.model_type):
        raise ConversionError(
            f"{directory}/config.json: model_type {official.get('model_type')!r} is not an XR0 checkpoint"
        )
    config = XR0Config(**{k: v for k, v in from_official_config_dict(official).items() if k != "model_type"})
    preprocessor = directory / "preprocessor_config.json"
    image_config = json.loads(preprocessor.read_text()) if preprocessor.is_file() else {}
    action_config = image_config.get("action_config", {})
    variant = load_variant(variant_name or guess_variant(source, action_config))

    files = read_weight_files(directory)
    prefix = checkpoint_wrapper_prefix(directory) or ""
    stored = tensor_metadata(files)
    renamed = {key[len(prefix) :]: meta for key, meta in stored.items()}
    expected = stored_tensor_shapes(config)  # builds the model on the meta device: once
    check_tensors(renamed, expected)
    source_key = {key[len(prefix) :]: key for key in stored}
    names = list(expected)  # the model's order

    output.mkdir(parents=True, exist_ok=True)
    tensor_bytes = {}
    for name in names:
        shape, dtype = renamed[name]
        tensor_bytes[name] = (
            torch.Size(shape).numel() * torch.tensor([], dtype=_torch_dtype(dtype)).element_size()
        )
    weight_map = shard_plan(tensor_bytes, max_shard_bytes)
    shards = {}
    for name in names:
        shards.setdefault(weight_map[name], []).append(name)
    with (
        contextlib.ExitStack() as stack,
        tqdm(total=sum(tensor_bytes.values()), unit="B", unit_scale=True, desc="copying weights") as progress,
    ):
        readers = {
            file: stack.enter_context(safe_open(str(file), framework="pt")) for file in set(files.values())
        }
        for file, shard_names in shards.items():
            tensors = {}
            for name in shard_names:
                tensors[name] = readers[files[source_key[name]]].get_tensor(source_key[name])
                progress.update(tensor_bytes[name])
            save_file(tensors, str(output / file), metadata={"format": "pt"})
            del tensors
    if len(shards) > 1:
        write_json(output / "model.safetensors.index.json", index_dict(tensor_bytes, weight_map))

    dtype = official.get("dtype") or official.get("torch_dtype") or "bfloat16"
    write_json(
        output / "config.json",
        config_dict(config, official["vlm_config"], dtype=str(dtype).replace("torch.", "")),
    )

    processor = XR0Processor.from_pretrained(
        REPO_ROOT,
        action_length=config.action_length,
        action_dim=config.action_dim,
        state_dim=config.state_dim,
    )
    check_image_processor(image_config, processor.image_processor)
    # The source's bounds, resolved as the official runtime resolves them, written out explicitly.
    image_bounds = (
        image_config.get("min_pixels") or DEFAULT_MIN_PIXELS,
        image_config.get("max_pixels") or DEFAULT_MAX_PIXELS,
    )
    set_image_bounds(processor.image_processor, *image_bounds)
    if variant["robot_type"]:
        published = ROBOT_TYPES[variant["robot_type"]]
        processor.register_robot_type(
            variant["robot_type"],
            views=published["views"],
            active_action_dims=published["active_action_dims"],
        )
    processor.merge_action_config(action_config)
    processor.save_pretrained(output)
    for name in REMOTE_CODE_FILES:
        shutil.copy(REPO_ROOT / name, output / name)
    shutil.copy(VARIANTS_DIR / variant["name"] / "README.md", output / "README.md")

    report = {
        **provenance,
        "variant": variant["name"],
        "tensors": len(names),
        "parameters": sum(torch.Size(renamed[n][0]).numel() for n in names),
        "bytes": sum(tensor_bytes.values()),
        "shards": len(shards),
        "stripped_prefix": prefix or None,
        "robot_types_with_statistics": sorted(action_config),
        "image_bounds": {
            "source": {
                key: image_config[key] for key in ("size", "min_pixels", "max_pixels") if key in image_config
            },
            "min_pixels": image_bounds[0],
            "max_pixels": image_bounds[1],
        },
    }
    write_json(output / "conversion.json", report)
    return report


# Image-processor fields whose value the model was trained with: a source that states another value is refused
# rather than silently converted with ours.
IMAGE_PROCESSOR_FACTS = (
    "patch_size",
    "merge_size",
    "temporal_patch_size",
    "image_mean",
    "image_std",
    "resample",
    "rescale_factor",
)


def check_image_processor(image_config: dict, image_processor) -> None:
    differing = [
        f"{key} = {image_config[key]!r} (ours {getattr(image_processor, key)!r})"
        for key in IMAGE_PROCESSOR_FACTS
        if key in image_config and not _same(image_config[key], getattr(image_processor, key))
    ]
    if differing:
        raise ConversionError(
            "preprocessor_config.json differs from the Qwen3-VL image pipeline: " + "; ".join(differing)
        )


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return a == b


def _torch_dtype(safetensors_dtype: str) -> "torch.dtype":
    import torch

    names = {
        "BF16": torch.bfloat16,
        "F16": torch.float16,
        "F32": torch.float32,
        "F64": torch.float64,
        "I64": torch.int64,
        "I32": torch.int32,
        "U8": torch.uint8,
        "BOOL": torch.bool,
    }
    if safetensors_dtype not in names:
        raise ConversionError(f"unsupported tensor dtype {safetensors_dtype}")
    return names[safetensors_dtype]


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--source", required=True, help="published repo id or local directory in the published layout"
    )
    parser.add_argument("--output", required=True, type=Path, help="directory to write")
    parser.add_argument(
        "--variant", default=None, help="variant name under variants/ (default: guessed from the source)"
    )
    parser.add_argument(
        "--revision",
        default=None,
        help="revision of a hub source (default: the commit the variant pins, else main)",
    )
    args = parser.parse_args(argv)
    try:
        report = convert(args.source, args.output, args.variant, args.revision)
    except ConversionError as error:
        sys.exit(f"convert_official: {error}")
    print(
        f"converted {report['source']} -> {args.output} as variant {report['variant']}: {report['tensors']} tensors, "
        f"{report['parameters'] / 1e9:.3f} B parameters, {report['bytes'] / 1e9:.2f} GB in {report['shards']} shard(s)"
        + (f", stripped prefix {report['stripped_prefix']!r}" if report["stripped_prefix"] else "")
        + f"; statistics for {report['robot_types_with_statistics'] or 'no robot type'}"
    )


if __name__ == "__main__":
    main()
