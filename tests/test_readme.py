"""The README (the model card) as users read it: its two set-up commands and its usage snippet, run as written."""

import os
import re
import subprocess
import sys

from xr0 import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
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


def test_the_guided_prefix_snippet_runs_after_the_usage_snippet(tmp_path):
    (usage,) = code_blocks(section("Usage"), "python")
    (guided,) = [
        block
        for block in code_blocks(section("Real-time execution and the policy server"), "python")
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
