"""Loads are quiet and never ask: every kind of XR0 directory loads with the Auto classes without a warning and
without a prompt, on the installed transformers line (scripts/test.sh runs this on 4.57 and 5.x)."""

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from published_layout import write_published_checkpoint
from quiet_loads import captured_warnings
from robot_datasets import write_lerobot
from test_training import run_finetune
from tiny import tiny_model
from transformers.utils import logging as transformers_logging

from xr0 import REPO_ROOT
from xr0.scripts import convert_official

QUIET_LOADS = Path(__file__).parents[1] / "quiet_loads.py"


def test_the_capture_sees_python_warnings_and_transformers_log_records():
    with captured_warnings() as messages:
        transformers_logging.get_logger("transformers.configuration_utils").warning("a transformers warning")
        logging.getLogger("elsewhere").warning("a root-logger warning")
        warnings.warn("a python warning", FutureWarning, stacklevel=1)
        transformers_logging.get_logger("transformers.configuration_utils").info("below the level")
    assert messages == [
        "WARNING transformers.configuration_utils: a transformers warning",
        "WARNING elsewhere: a root-logger warning",
        "FutureWarning: a python warning",
    ]


@pytest.mark.slow
def test_every_kind_of_directory_loads_without_a_warning_or_a_prompt(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    tiny_model().save_pretrained(checkpoint)
    finetuned = tmp_path / "finetuned"  # what xr0-finetune writes, saved on this transformers line
    run_finetune(checkpoint, write_lerobot(tmp_path / "tiny_arm"), finetuned, "--max_steps", "1")
    published = tmp_path / "published"
    write_published_checkpoint(published, shards=1)
    converted = tmp_path / "converted"  # a variant's directory, as xr0-convert writes it
    convert_official.convert(str(published), converted)
    directories = [REPO_ROOT, REPO_ROOT / "fixtures" / "tiny-xr0", finetuned, converted]

    # A fresh process (transformers prints some warnings once per process), a fresh remote-code cache, no
    # terminal to answer a prompt on, transformers' default verbosity.
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, str(QUIET_LOADS), *map(str, directories)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[y/N]" not in result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert [report["directory"] for report in reports] == [str(d) for d in directories]
    assert reports[0]["loaded"] == ["XR0Config", "XR0Processor"]  # the root holds the weight index only
    for report in reports[1:]:
        assert report["loaded"] == ["XR0Config", "XR0ForActionGeneration", "XR0Processor"], report
    for report in reports:
        assert report["warnings"] == [], report
