"""Entry points run the way users run them, from a subprocess, judged by their exit status: a successful run
exits 0 (so `xr0-finetune ... && next` goes on), a refused input exits 2 with one line, not a traceback."""

import os
import subprocess
import sys
from pathlib import Path

from robot_datasets import write_lerobot
from tiny import tiny_model


def command(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def test_a_finished_fine_tune_exits_with_status_0(tmp_path):
    model = tmp_path / "model"
    tiny_model().save_pretrained(model)
    dataset = write_lerobot(tmp_path / "tiny_arm")
    finished = subprocess.run(
        [
            command("xr0-finetune"),
            *(
                "--model",
                model,
                "--dataset",
                dataset,
                "--robot_type",
                "tiny_arm",
                "--output_dir",
                tmp_path / "out",
            ),
            *("--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none"),
            *("--save_strategy", "no", "--disable_tqdm", "true", "--dataloader_num_workers", "0"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "Trainer" not in finished.stderr.splitlines()[-1]  # sys.exit was not handed the Trainer to print


def test_a_refused_option_exits_with_status_2_and_one_line(tmp_path):
    refused = subprocess.run(
        [command("xr0-eval-reach"), "--model", tmp_path, "--jump_at", "0", "5"],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=600,
    )
    assert refused.returncode == 2 and "jump_at" in refused.stderr
    assert "Traceback" not in refused.stderr
