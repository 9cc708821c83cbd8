"""The README (the model card) and the docs as users read them: the two set-up commands and the usage snippets run
as written, every link resolves, and every command a code block gives exists."""

import os
import re
import subprocess
import sys

import pytest

from xr0 import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
DOCS = REPO_ROOT / "docs"
TINY_CHECKPOINT = REPO_ROOT / "fixtures" / "tiny-xr0"
SNIPPET_PATH_LINE = 'path = "path/to/xr0-libero"  # a checkpoint converted with xr0-convert'


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def code_blocks(text: str, language: str) -> list:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_starts_with_exactly_two_set_up_commands():
    title_end = README.index("\n# ")
    first_block = re.search(r"```(\w*)\n(.*?)```", README[title_end:], flags=re.DOTALL)
    assert first_block.group(1) == "bash"
    assert first_block.group(2).splitlines() == [
        "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e . && .venv/bin/xr0-demo",
        "bash scripts/test.sh",
    ]


@pytest.mark.slow
def test_the_guided_prefix_snippet_runs_after_the_usage_snippet(tmp_path):
    (usage,) = code_blocks(section("Usage"), "python")
    (guided,) = [
        block
        for block in code_blocks((DOCS / "serving.md").read_text(), "python")
        if "PrefixGuidance" in block
    ]
    code = (
        usage.replace(SNIPPET_PATH_LINE, f"path = {str(TINY_CHECKPOINT)!r}")
        + guided
        + """
assert tuple(next_chunk.shape) == (1, 10, 32)
assert torch.allclose(next_chunk[:, :2], overlap[:, :2])  # the committed steps come back as given
with torch.inference_mode():
    blind = model(**inputs, seed=1).actions  # the same noise, no prefix
active = inputs["action_mask"][:, 2:5].bool()  # guidance acts on the robot's 7 dims only
steered = (next_chunk[:, 2:5] - overlap[:, 2:5]).abs()[active].mean()  # 0.46 on the tiny checkpoint
assert steered < 0.7 * (blind[:, 2:5] - overlap[:, 2:5]).abs()[active].mean(), "guidance pulls the overlap"
print("guided ok")
"""
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("guided ok")


@pytest.mark.slow
def test_the_usage_snippet_runs_as_written_on_the_available_device(tmp_path):
    (snippet,) = code_blocks(section("Usage"), "python")
    assert snippet.count(SNIPPET_PATH_LINE) == 1
    assert "torch.cuda.is_available()" in snippet and "with torch.inference_mode():" in snippet
    code = snippet.replace(SNIPPET_PATH_LINE, f"path = {str(TINY_CHECKPOINT)!r}")
    code += """
assert tuple(actions.shape) == (1, 10, 32) and tuple(robot_actions.shape) == (1, 10, 7)
assert torch.isfinite(robot_actions).all()
assert len(chunks) == 4 and all(tuple(chunk.shape) == (1, 10, 32) for chunk in chunks)
assert not torch.allclose(chunks[0], chunks[1]), "one generator: each chunk starts from new noise"
print(device, dtype, model.dtype, actions.device.type)
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import torch

    expected = (
        "cuda torch.bfloat16 torch.bfloat16 cuda"
        if torch.cuda.is_available()
        else "cpu torch.float32 torch.float32 cpu"
    )
    assert result.stdout.strip().splitlines()[-1] == expected


def markdown_pages() -> list:
    return [REPO_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_the_model_card_is_short_and_links_every_docs_page():
    """A Hub user reads the card in two minutes; everything else is one click away in docs/."""
    assert len(README.splitlines()) < 250
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", README))
    assert linked == {page.name for page in DOCS.glob("*.md")}


def test_every_relative_link_and_image_resolves():
    for page in markdown_pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if "://" in target or target.startswith("#"):
                continue
            assert (page.parent / target.split("#")[0]).exists(), f"{page.name}: {target}"


def test_every_command_in_a_code_block_exists():
    """Each `xr0-*` console script a bash block runs is one the installed distribution declares, and each
    `python -m xr0...` / `python -m xr0_client...` module is importable (their --help runs in test_repository.py)."""
    import importlib.metadata
    import importlib.util

    scripts = {entry.name for entry in importlib.metadata.distribution("xr0").entry_points}
    checked = 0
    for page in markdown_pages():
        for block in code_blocks(page.read_text(), "bash"):
            for command in re.findall(r"(?:^|[\s;&|(])(xr0-[a-z-]+)", block):
                assert command in scripts, f"{page.name}: {command}"
                checked += 1
            for module in re.findall(r"python3? -m (xr0(?:_client)?(?:\.\w+)*)", block):
                assert importlib.util.find_spec(module) is not None, f"{page.name}: {module}"
                checked += 1
    assert checked >= 10, checked  # the blocks were read
