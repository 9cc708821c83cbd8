"""The repository as users meet it: root config and weight index, the embedded tiny checkpoint, the variants,
the converter from the published layout, the publisher and the demo."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoProcessor

from conftest import REPO_ROOT
from tiny import tiny_model
from test_modeling import published_state_dict, write_published_config
from test_processing import image, published_action_config
from xr0.modeling_xr0 import XR0ForActionGeneration
from xr0.processing_xr0 import PUBLISHED_ROBOT_TYPES

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import convert_official  # noqa: E402
import publish  # noqa: E402
import write_root_files  # noqa: E402

TINY_CHECKPOINT = REPO_ROOT / "fixtures" / "tiny-xr0"
VARIANTS = ["base", "calvin-abc-d", "calvin-abcd-d", "libero", "simplerenv-google-robot", "simplerenv-widowx"]


# ---- root files ----------------------------------------------------------------------------------------------


def test_root_config_builds_the_real_model_whose_keys_equal_the_index():
    config = AutoConfig.from_pretrained(REPO_ROOT, trust_remote_code=True)
    assert type(config).__name__ == "XR0Config"
    with torch.device("meta"):
        model = XR0ForActionGeneration(config)
    assert 4.4e9 <= sum(p.numel() for p in model.parameters()) <= 4.9e9
    index = json.loads((REPO_ROOT / "model.safetensors.index.json").read_text())
    stored = {k: v for k, v in model.state_dict().items() if not k.startswith("vlm.lm_head.")}
    assert set(index["weight_map"]) == set(stored)
    assert index["metadata"]["total_size"] == sum(2 * v.numel() for v in stored.values())  # bf16
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]


def test_root_files_are_what_the_script_writes(tmp_path):
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "write_root_files.py"), "--output", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("config.json", "model.safetensors.index.json", "preprocessor_config.json", "processor_config.json"):
        assert (tmp_path / name).read_text() == (REPO_ROOT / name).read_text(), name


def test_shard_plan_is_greedy_and_named_like_transformers():
    plan = write_root_files.shard_plan({"a": 4, "b": 4, "c": 3, "d": 9}, max_shard_bytes=8)
    assert plan == {"a": "model-00001-of-00003.safetensors", "b": "model-00001-of-00003.safetensors",
                    "c": "model-00002-of-00003.safetensors", "d": "model-00003-of-00003.safetensors"}
    assert write_root_files.shard_plan({"a": 1}) == {"a": "model.safetensors"}


# ---- embedded tiny checkpoint --------------------------------------------------------------------------------


def test_tiny_checkpoint_loads_with_auto_classes_and_acts():
    assert (TINY_CHECKPOINT / "model.safetensors").stat().st_size < 8e6
    model = AutoModel.from_pretrained(TINY_CHECKPOINT, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(TINY_CHECKPOINT, trust_remote_code=True)
    inputs = processor(images={"base": image(0), "wrist": image(1)}, instruction="Pick up the bowl.",
                       state=np.zeros(8), robot_type="libero_all")
    with torch.no_grad():
        actions = model(**inputs, seed=0).actions
    assert actions.shape == (1, 30, 32)
    decoded = processor.decode_action(actions, "libero_all")
    assert decoded.shape == (1, 30, 7) and torch.isfinite(decoded).all()


# ---- variants ------------------------------------------------------------------------------------------------


def test_six_variants_with_cards_consistent_with_the_processor():
    assert sorted(p.name for p in (REPO_ROOT / "variants").iterdir() if p.is_dir()) == VARIANTS
    for name in VARIANTS:
        variant = json.loads((REPO_ROOT / "variants" / name / "variant.json").read_text())
        card = (REPO_ROOT / "variants" / name / "README.md").read_text()
        assert variant["name"] == name and variant["repo_id"].startswith("XiaomiRobotics/")
        assert card.startswith("---\nlicense: apache-2.0\n") and variant["title"] in card
        if variant["robot_type"]:
            published = PUBLISHED_ROBOT_TYPES[variant["robot_type"]]
            assert variant["views"] == published["views"]
            assert variant["active_action_dims"] == published["active_action_dims"]
            assert variant["steps_per_chunk"] in (4, 10)
            for row, value in variant["results"]["rows"]:
                assert f"| {row} | {value} |" in card


# ---- converter -----------------------------------------------------------------------------------------------


def write_published_checkpoint(directory, model, prefix="module.", shards=2):
    """A tiny checkpoint in the published layout: mibot config, sharded safetensors, action_config."""
    directory.mkdir(parents=True, exist_ok=True)
    write_published_config(model, directory)
    tensors = published_state_dict(model, prefix)
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k] for k in part}, str(directory / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    preprocessor = json.loads((REPO_ROOT / "preprocessor_config.json").read_text())
    preprocessor.update(processor_class="MiBoTProcessor", action_config=published_action_config(T=model.config.action_length))
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))


def test_converter_output_loads_and_acts_like_the_published_checkpoint(tmp_path):
    model = tiny_model()
    source = tmp_path / "published"
    write_published_checkpoint(source, model)
    output = tmp_path / "converted"
    report = convert_official.convert(str(source), output, max_shard_bytes=4_000_000)
    assert report["variant"] == "libero" and report["stripped_prefix"] == "module."
    assert report["shards"] > 1 and (output / "model.safetensors.index.json").is_file()
    assert (output / "README.md").read_text() == (REPO_ROOT / "variants" / "libero" / "README.md").read_text()

    converted = AutoModel.from_pretrained(output, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    direct = XR0ForActionGeneration.from_pretrained(source).eval()
    inputs = processor(images={"base": image(0), "wrist": image(1)}, instruction="Pick up the bowl.",
                       state=np.linspace(0, 1, 8), robot_type="libero_all")
    with torch.no_grad():
        expected = direct(**inputs, seed=0).actions
        actual = converted(**inputs, seed=0).actions
    assert torch.equal(actual, expected)
    assert torch.equal(inputs["action_mask"][0], processor.get_action_mask("libero_all"))
    assert processor.decode_action(actual, "libero_all").shape == (1, model.config.action_length, 7)
    saved = json.loads((output / "config.json").read_text())
    assert saved["model_type"] == "xr0" and saved["auto_map"]["AutoProcessor"] == "processing_xr0.XR0Processor"


def test_converter_refuses_a_checkpoint_that_does_not_match_its_config(tmp_path):
    model = tiny_model()
    source = tmp_path / "published"
    write_published_checkpoint(source, model, prefix="", shards=1)
    index = json.loads((source / "model.safetensors.index.json").read_text())
    tensors = {k: torch.zeros(3) for k in ["dit.layers.0.adaln_table"]}
    save_file(tensors, str(source / "extra.safetensors"))
    index["weight_map"]["dit.layers.0.adaln_table"] = "extra.safetensors"
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(convert_official.ConversionError, match=r"1 wrong shape: dit.layers.0.adaln_table: \(3,\)"):
        convert_official.convert(str(source), tmp_path / "out")
    with pytest.raises(convert_official.ConversionError, match="unknown variant 'nope'"):
        convert_official.convert(str(source), tmp_path / "out", variant_name="nope")


# ---- publisher and demo --------------------------------------------------------------------------------------


def test_publish_dry_run_lists_the_upload(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"0" * 10)
    (tmp_path / "pytorch_model.bin").write_bytes(b"0")
    with pytest.raises(SystemExit, match="pickle"):
        publish.main(["--folder", str(tmp_path), "--repo-id", "me/xr0-libero", "--dry-run"])
    (tmp_path / "pytorch_model.bin").unlink()
    publish.main(["--folder", str(tmp_path), "--repo-id", "me/xr0-libero", "--dry-run"])
    out = capsys.readouterr().out
    assert "dry run" in out and "me/xr0-libero" in out and "model.safetensors" in out


def test_demo_prints_a_chunk_and_writes_the_plot(tmp_path):
    plot = tmp_path / "actions.png"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--plot", str(plot)],
                            check=True, capture_output=True, text=True)
    assert "RANDOM weights" in result.stdout and "VLM prefill" in result.stdout and "DiT step 4" in result.stdout
    assert "(30, 7)" in result.stdout
    from PIL import Image

    with Image.open(plot) as picture:
        assert picture.size[0] >= 600 and picture.size[1] >= 300
