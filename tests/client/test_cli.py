"""The command-line conventions every entry point shares (xr0_common.cli), and entry points run the way users run
them, from a subprocess, judged by their exit status: a successful run exits 0 (so `xr0-finetune ... && next` goes
on), a refused input exits 2 with one line, not a traceback; Ctrl-C ends with a summary line and 130."""

import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from robot_datasets import write_lerobot
from served import TINY
from tiny import tiny_model

from xr0 import REPO_ROOT
from xr0_common.cli import ArgumentParser


def test_snake_case_options_answer_to_their_dashed_alias():
    parser = ArgumentParser(prog="demo")
    parser.add_argument("--max_steps", type=int, default=1)
    assert parser.parse_args(["--max_steps", "3"]).max_steps == 3
    assert parser.parse_args(["--max-steps", "4"]).max_steps == 4
    assert "--max_steps MAX_STEPS, --max-steps MAX_STEPS" in parser.format_help()


def test_dashed_long_options_are_refused_when_the_parser_is_built():
    parser = ArgumentParser(prog="demo")
    with pytest.raises(ValueError, match="'--max_steps'"):
        parser.add_argument("--max-steps", type=int)


def test_log_level_configures_logging():
    parser = ArgumentParser(prog="demo")
    parser.parse_args(["--log_level", "WARNING"])
    assert logging.getLogger().level == logging.WARNING
    parser.parse_args([])
    assert logging.getLogger().level == logging.INFO
    with pytest.raises(SystemExit):
        parser.parse_args(["--log_level", "loud"])


def test_log_lines_go_to_the_stderr_of_the_moment(monkeypatch):
    """An entry point called in-process configures logging; its records follow a later-replaced sys.stderr
    rather than writing to a stream that may be closed by then."""
    import io

    ArgumentParser(prog="demo").parse_args([])
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("xr0.test").warning("to the current stderr")
    assert "WARNING xr0.test: to the current stderr" in later.getvalue()


# ---- Ctrl-C: a summary line and exit status 130, never a traceback --------------------------------------------


def start(command: list) -> tuple:
    """A subprocess with its stderr read line by line into a queue (so the test can wait for a line)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
    reader.start()
    return process, lines, reader


def wait_for(lines: queue.Queue, pattern: str, seen: list, timeout: float = 120.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{''.join(seen)[-3000:]}")


def interrupt(process, reader, seen: list, lines: queue.Queue) -> str:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        hung = True
    else:
        hung = False
    reader.join(timeout=10)
    while not lines.empty():
        seen.append(lines.get())
    assert not hung, f"still running 60 s after Ctrl-C; its stderr:\n{''.join(seen)[-3000:]}"
    return "".join(seen)


@pytest.mark.slow
def test_ctrl_c_stops_the_server_with_a_summary(tmp_path):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    server, lines, reader = start(
        [str(Path(sys.executable).with_name("xr0-serve")), "--model", str(TINY), "--port", "0"]
    )
    seen: list = []
    try:
        port = int(wait_for(lines, r"serving tiny-xr0 on ws://127\.0\.0\.1:(\d+)", seen).group(1))
        client = WebsocketClientPolicy("127.0.0.1", port)
        observation = {
            "observation/image": np.zeros((224, 224, 3), np.uint8),
            "observation/wrist_image": np.zeros((224, 224, 3), np.uint8),
            "observation/state": np.zeros(8),
            "prompt": "pick up the bowl",
        }
        assert client.infer(observation)["actions"].shape == (10, 7)
        with pytest.raises(RuntimeError, match="observation/state"):
            client.infer({**observation, "observation/state": np.full(8, np.nan)})
        stderr = interrupt(server, reader, seen, lines)
    finally:
        server.kill()
    assert server.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert re.search(
        r"interrupted: served 1 requests \(1 refused, 0 failed\) on 1 connections in [\d.]+ s", stderr
    )


def test_a_refused_token_is_one_line_not_a_traceback():
    from xr0.deploy.policy import load_policy
    from xr0.deploy.server import PolicyServer

    server = PolicyServer(
        load_policy(str(TINY), "cpu", torch.float32), port=0, token="s3cret"
    ).start_in_thread()
    try:
        dry_run = subprocess.run(
            [sys.executable, "-m", "xr0_client.dry_run", "--port", str(server.port), "--token", "wrong"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop()
    assert dry_run.returncode == 1 and "Traceback" not in dry_run.stderr, dry_run.stderr[-3000:]
    assert f"cannot reach the policy server at 127.0.0.1:{server.port}" in dry_run.stderr
    assert "rejected the connection with HTTP 401: the token was not accepted" in dry_run.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_executor_with_a_summary():
    from xr0.deploy.policy import load_policy
    from xr0.deploy.server import PolicyServer

    server = PolicyServer(load_policy(str(TINY), "cpu", torch.float32), port=0).start_in_thread()
    dry_run, lines, reader = start(
        [sys.executable, "-m", "xr0_client.dry_run", "--port", str(server.port), "--ticks", "1000000"]
    )
    seen: list = []
    try:
        wait_for(lines, r"running 1000000 ticks at 30 Hz", seen)
        time.sleep(2.0)  # a few chunks into the run loop
        stderr = interrupt(dry_run, reader, seen, lines)
    finally:
        dry_run.kill()
        server.stop()
    assert dry_run.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    summary = re.search(r"interrupted: executed (\d+) chunks in (\d+) ticks", stderr)
    assert summary and int(summary.group(1)) >= 1 and int(summary.group(2)) >= 1, stderr[-2000:]


# ---- exit status: 0 for a finished run, 2 and one line for a refused input ------------------------------------


def command(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@pytest.mark.slow
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
