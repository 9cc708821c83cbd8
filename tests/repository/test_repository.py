"""The repository as users meet it: root config and weight index, the embedded tiny checkpoint, the variants,
the converter from the published layout, the publisher and the demo."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from published_layout import action_expert_shapes, write_published_checkpoint
from safetensors.torch import save_file
from test_processing import image
from transformers import AutoConfig, AutoModel, AutoProcessor

from xr0 import REPO_ROOT
from xr0.modeling_xr0 import XR0ForActionGeneration
from xr0.robot_types_xr0 import ROBOT_TYPES
from xr0.scripts import convert_official, publish, write_root_files

TINY_CHECKPOINT = REPO_ROOT / "fixtures" / "tiny-xr0"
VARIANTS = ["base", "calvin-abc-d", "calvin-abcd-d", "libero", "simplerenv-google-robot", "simplerenv-widowx"]
# Every field a robot type's entry may have (robot_types_xr0's docstring), none of which a variant.json repeats.
ROBOT_TYPE_FIELDS = sorted({field for facts in ROBOT_TYPES.values() for field in facts})


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
    # The action expert's part of the index, against the official modules' table (not our module).
    expert = {k for k in index["weight_map"] if not k.startswith("vlm.")}
    assert expert == set(action_expert_shapes(hidden=1024, layers=16, head_dim=128))
    assert {k: tuple(v.shape) for k, v in stored.items() if k in expert} == action_expert_shapes(
        1024, 16, 128
    )
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]


@pytest.mark.slow
def test_root_files_are_what_the_script_writes(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "xr0.scripts.write_root_files", "--output", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    for name in (
        "config.json",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "processor_config.json",
    ):
        assert (tmp_path / name).read_text() == (REPO_ROOT / name).read_text(), name


def test_shard_plan_is_greedy_and_named_like_transformers():
    plan = write_root_files.shard_plan({"a": 4, "b": 4, "c": 3, "d": 9}, max_shard_bytes=8)
    assert plan == {
        "a": "model-00001-of-00003.safetensors",
        "b": "model-00001-of-00003.safetensors",
        "c": "model-00002-of-00003.safetensors",
        "d": "model-00003-of-00003.safetensors",
    }
    assert write_root_files.shard_plan({"a": 1}) == {"a": "model.safetensors"}


# ---- embedded tiny checkpoint --------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_checkpoint_loads_with_auto_classes_and_acts():
    assert (TINY_CHECKPOINT / "model.safetensors").stat().st_size < 8e6
    model = AutoModel.from_pretrained(TINY_CHECKPOINT, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(TINY_CHECKPOINT, trust_remote_code=True)
    inputs = processor(
        images={"base": image(0), "wrist_left": image(1)},
        instruction="Pick up the bowl.",
        state=np.zeros(8),
        robot_type="libero_all",
    )
    with torch.no_grad():
        actions = model(**inputs, seed=0).actions
    assert actions.shape == (1, 10, 32)  # libero_all's statistics are (10, 32)
    decoded = processor.decode_action(actions, "libero_all")
    assert decoded.shape == (1, 10, 7) and torch.isfinite(decoded).all()


# ---- variants ------------------------------------------------------------------------------------------------


def test_six_variants_with_cards_rendered_from_variant_json_and_the_robot_registry():
    """A variant.json holds what is particular to its published checkpoint; views, active dims, T, images, state
    and protocol are the robot type's, in `robot_types_xr0.ROBOT_TYPES` only, and each card is what the renderer
    makes of both."""
    from xr0.scripts.write_variant_cards import render

    assert sorted(p.name for p in (REPO_ROOT / "variants").iterdir() if p.is_dir()) == VARIANTS
    for name in VARIANTS:
        variant = json.loads((REPO_ROOT / "variants" / name / "variant.json").read_text())
        card = (REPO_ROOT / "variants" / name / "README.md").read_text()
        assert variant["name"] == name and variant["repo_id"] == PUBLISHED_REPOS[name][0]
        assert variant["revision"] == PUBLISHED_REPOS[name][1] and variant["revision"] in card
        assert not set(ROBOT_TYPE_FIELDS) & set(variant)
        assert card == render(variant, ROBOT_TYPES), "stale card: python -m xr0.scripts.write_generated_files"
        assert card.startswith("---\nlicense: apache-2.0\n") and variant["title"] in card
        if variant["robot_type"]:
            published = ROBOT_TYPES[variant["robot_type"]]
            assert name in published["variants"]
            assert f"chunks of T = {published['chunk_length']} steps" in card
            assert f"{published['active_action_dims']} active dims" in card
            for key, title in published["views"]:
                assert f"`{key}` (prompt title “{title}”)" in card
            for row, value in variant["results"]["rows"]:
                assert f"| {row} | {value} |" in card
        else:
            for robot_type in variant["pretraining_robot_types"]:
                assert f"`{robot_type}` (T = {ROBOT_TYPES[robot_type]['chunk_length']})" in card
            assert "base_model: XiaomiRobotics" not in card


# ---- converter -----------------------------------------------------------------------------------------------

# The published repos and the commits the spec pins (verified against a third party that loads all six).
PUBLISHED_REPOS = {
    "base": ("XiaomiRobotics/Xiaomi-Robotics-0-Pretrain", "50276c277f7d5c9b1a52fcecdea79045568c6916"),
    "libero": ("XiaomiRobotics/Xiaomi-Robotics-0-LIBERO", "fc04bbdcc53e498695cfad95d1199091396ef55b"),
    "calvin-abcd-d": (
        "XiaomiRobotics/Xiaomi-Robotics-0-Calvin-ABCD_D",
        "1161227fbcde104c7333ccf684695d3612df2d26",
    ),
    "calvin-abc-d": (
        "XiaomiRobotics/Xiaomi-Robotics-0-Calvin-ABC_D",
        "3e64bfa35ab26c00cb5572e3f174a2421a85577d",
    ),
    "simplerenv-google-robot": (
        "XiaomiRobotics/Xiaomi-Robotics-0-SimplerEnv-Google-Robot",
        "3b6b1bf65cf9ffbf0865a9abc0b66ee338e0bee6",
    ),
    "simplerenv-widowx": (
        "XiaomiRobotics/Xiaomi-Robotics-0-SimplerEnv-WidowX",
        "3f25b13ea6007d44466e6ea9d2ffe460876142c5",
    ),
}


def test_converter_pins_the_published_revisions():
    for repo_id, revision in PUBLISHED_REPOS.values():
        assert convert_official.pinned_revision(repo_id) == revision
    assert convert_official.pinned_revision("someone/else") is None


@pytest.mark.parametrize(
    "robot_type, length", [("libero_all", 10), ("fractal_delta", 4), ("agibot_pt_v3", 30)]
)
@pytest.mark.slow
def test_converter_output_loads_and_acts_like_the_published_checkpoint(tmp_path, robot_type, length):
    source = tmp_path / "published"
    write_published_checkpoint(source, prefix="module.", shards=2)
    output = tmp_path / "converted"
    report = convert_official.convert(str(source), output, max_shard_bytes=4_000_000)
    assert report["variant"] == "libero" and report["stripped_prefix"] == "module."
    assert report["shards"] > 1 and (output / "model.safetensors.index.json").is_file()
    assert report["image_bounds"] == {
        "source": {"size": {"shortest_edge": 65536, "longest_edge": 16777216}},
        "min_pixels": 3136,
        "max_pixels": 1003520,
    }
    assert (output / "README.md").read_text() == (REPO_ROOT / "variants" / "libero" / "README.md").read_text()

    converted = AutoModel.from_pretrained(output, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    direct = XR0ForActionGeneration.from_pretrained(source).eval()
    if robot_type == "agibot_pt_v3":  # no camera contract of its own: register the views fed
        processor.register_robot_type(robot_type, views=[["head", "Head"]])
    views = {key: image(i, (200, 200)) for i, (key, _) in enumerate(processor.robot_spec(robot_type).views)}
    inputs = processor(
        images=views, instruction="Pick up the bowl.", state=np.linspace(0, 1, 8), robot_type=robot_type
    )
    assert inputs["action_mask"].shape == (1, length, 32)
    with torch.no_grad():
        expected = direct(**inputs, seed=0).actions
        actual = converted(**inputs, seed=0).actions
    assert (actual - expected).abs().max() <= 1e-6 * max(1.0, float(expected.abs().max()))
    assert processor.decode_action(actual, robot_type).shape == (1, length, 7)
    saved = json.loads((output / "config.json").read_text())
    assert (
        saved["model_type"] == "xr0" and saved["auto_map"]["AutoProcessor"] == "processing_xr0.XR0Processor"
    )


def test_converter_refuses_a_checkpoint_that_does_not_match_its_config(tmp_path):
    source = tmp_path / "published"
    write_published_checkpoint(source, shards=2)
    index = json.loads((source / "model.safetensors.index.json").read_text())
    save_file({"dit.layers.0.adaln_table": torch.zeros(3)}, str(source / "extra.safetensors"))
    index["weight_map"]["dit.layers.0.adaln_table"] = "extra.safetensors"
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        convert_official.ConversionError, match=r"1 wrong shape: dit.layers.0.adaln_table: \(3,\)"
    ):
        convert_official.convert(str(source), tmp_path / "out")
    with pytest.raises(convert_official.ConversionError, match="unknown variant 'nope'"):
        convert_official.convert(str(source), tmp_path / "out", variant_name="nope")


# ---- publisher and demo --------------------------------------------------------------------------------------


def test_publish_dry_run_lists_the_upload(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"0" * 10)
    (tmp_path / "pytorch_model.bin").write_bytes(b"0")
    with pytest.raises(SystemExit, match="pickle"):
        publish.main(["--folder", str(tmp_path), "--repo_id", "me/xr0-libero", "--dry_run"])
    (tmp_path / "pytorch_model.bin").unlink()
    publish.main(["--folder", str(tmp_path), "--repo_id", "me/xr0-libero", "--dry_run"])
    out = capsys.readouterr().out
    assert "dry run" in out and "me/xr0-libero" in out and "model.safetensors" in out


@pytest.mark.slow
def test_demo_prints_a_chunk_and_writes_the_plot(tmp_path):
    plot = tmp_path / "actions.png"
    # The entry point, from a directory that is not the repository.
    demo = Path(sys.executable).with_name("xr0-demo")
    result = subprocess.run(
        [str(demo), "--plot", str(plot)], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert "RANDOM weights" in result.stderr  # a message, through logging
    assert "median of 3 runs after 1 warm-up" in result.stdout
    assert "VLM prefill" in result.stdout and "DiT step 4" in result.stdout
    assert "(10, 7)" in result.stdout  # the tiny checkpoint's libero_all statistics are (10, 32)
    from PIL import Image

    with Image.open(plot) as picture:
        assert picture.size[0] >= 600 and picture.size[1] >= 300


# ---- the package -------------------------------------------------------------------------------------------------


def console_scripts() -> dict:
    """pyproject's [project.scripts]: {command: "module:function"}."""
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def runnable_modules() -> list:
    """Every module of scripts/, training/, deploy/, eval/, planar_reach/, meta_world/ and the client package that runs
    as a program, by the module name `python -m` takes."""
    modules = []
    for folder in (
        "scripts",
        "training",
        "deploy",
        "eval",
        "planar_reach",
        "meta_world",
        "client/xr0_client",
    ):
        for path in sorted((REPO_ROOT / folder).glob("*.py")):
            if 'if __name__ == "__main__":' in path.read_text():
                package = "xr0_client" if folder.startswith("client") else f"xr0.{folder}"
                modules.append(f"{package}.{path.stem}")
    return modules


# Every command, once: the console scripts, then the runnable modules no console script runs.
COMMANDS = [[name] for name in console_scripts()] + [
    ["-m", module]
    for module in runnable_modules()
    if module not in {target.split(":")[0] for target in console_scripts().values()}
]


# Commands whose --help needs torch: the others print it without importing torch or transformers.
HELP_NEEDS_TORCH = {
    "xr0-finetune": "its options are transformers' TrainingArguments, whose module imports torch"
}
# On the path of the --help runs: makes `import torch` / `import transformers` fail, so that a command that imports
# them before parsing its arguments fails its --help.
WITHOUT_TORCH = """import sys
sys.modules.update(torch=None, transformers=None)
"""


@pytest.fixture(scope="module")
def help_runs(tmp_path_factory):
    """Every command's `--help`, each from an empty directory of its own, run side by side, torch and transformers
    made unimportable except for `HELP_NEEDS_TORCH`. Returns ({command id: (result, directory)}, git status
    before, git status after)."""
    from concurrent.futures import ThreadPoolExecutor

    blocker = tmp_path_factory.mktemp("without-torch")
    (blocker / "sitecustomize.py").write_text(WITHOUT_TORCH)

    def git_status():
        return subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout

    def run(command, directory):
        program = (
            [sys.executable, *command]
            if command[0] == "-m"
            else [str(Path(sys.executable).with_name(command[0]))]
        )
        env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="1000")  # no wrapped option names
        if command[-1] not in HELP_NEEDS_TORCH:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker), env.get("PYTHONPATH")]))
        result = subprocess.run([*program, "--help"], cwd=directory, capture_output=True, text=True, env=env)
        return command[-1], (result, directory)

    before = git_status()
    directories = [tmp_path_factory.mktemp("help") for _ in COMMANDS]  # here: mktemp is not thread-safe
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = dict(pool.map(run, COMMANDS, directories))
    return results, before, git_status()


def test_the_help_runs_do_block_torch(tmp_path):
    """The blocker the --help runs use makes importing torch fail (else the --help test proves nothing)."""
    (tmp_path / "sitecustomize.py").write_text(WITHOUT_TORCH)
    result = subprocess.run(
        [sys.executable, "-c", "import torch"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
    )
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[-1])
@pytest.mark.slow
def test_every_entry_point_prints_help_from_any_directory_and_changes_nothing(help_runs, command):
    results, before, after = help_runs
    result, directory = results[command[-1]]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout
    assert not any(directory.iterdir()), "--help writes nothing"
    assert after == before, "some command's --help changed the repository"
    # One flag style: snake_case long options (HfArgumentParser's), each with its dashed alias, and --log_level.
    assert "--log_level" in result.stdout
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", result.stdout))
    dashed_only = sorted(o for o in options if "-" in o[2:] and "--" + o[2:].replace("-", "_") not in options)
    assert not dashed_only, f"dashed long options without their snake_case form: {dashed_only}"


@pytest.mark.parametrize(
    "package, never",
    [
        ("xr0_client", ("torch", "transformers", "xr0")),  # the robot side
        (
            "xr0_common.cli, xr0_common.protocol",
            ("torch", "transformers", "xr0", "xr0_client"),
        ),  # both sides' layer
    ],
)
def test_the_torch_free_packages_import_only_what_is_below_them(package, never):
    code = f"import sys, {package}; print(sorted(m for m in {never!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_bare_directory_of_root_files_and_weights_loads_with_the_auto_classes(tmp_path):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for path in TINY_CHECKPOINT.iterdir():  # symlinks resolved: a plain copy, as a Hub download would be
        shutil.copyfile(path.resolve(), bare / path.name)
    assert not (bare / "__init__.py").exists()
    code = f"""
import numpy as np, torch
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained({str(bare)!r}, trust_remote_code=True, dtype=torch.float32).eval()
processor = AutoProcessor.from_pretrained({str(bare)!r}, trust_remote_code=True)
rng = np.random.default_rng(0)
images = {{k: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for k in ("base", "wrist_left")}}
inputs = processor(images=images, instruction="Pick up the bowl.", state=np.zeros(8), robot_type="libero_all")
print(type(model).__module__.startswith("transformers_modules"), tuple(model(**inputs, seed=0).actions.shape))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "True (1, 10, 32)"


def test_library_modules_never_import_the_developer_scripts():
    """Tools import the core, never the other way round: no module outside scripts/ and tests/ imports
    `xr0.scripts` (xr0-convert and xr0-demo still live there: entry points that only their console scripts
    import)."""
    pattern = re.compile(r"^\s*(from\s+(\.\.?scripts|xr0\.scripts)\b|import\s+xr0\.scripts\b)", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in REPO_ROOT.rglob("*.py")
        if not {"scripts", "tests", "fixtures", "runs"} & set(path.relative_to(REPO_ROOT).parts)
        and not any(part.startswith(".") for part in path.relative_to(REPO_ROOT).parts)
        and pattern.search(path.read_text())
    ]
    assert not offenders, offenders


def test_the_core_never_imports_lerobot():
    """LeRobot is a plugin's dependency (lerobot_plugin/), never the core's: no module of `xr0` or `xr0_client`
    imports `lerobot` or the plugin package."""
    pattern = re.compile(r"^\s*(from|import)\s+(lerobot|lerobot_policy_xr0)\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in REPO_ROOT.rglob("*.py")
        if not {"lerobot_plugin", "fixtures", "runs"} & set(path.relative_to(REPO_ROOT).parts)
        and not any(part.startswith(".") for part in path.relative_to(REPO_ROOT).parts)
        and pattern.search(path.read_text())
    ]
    assert not offenders, offenders
