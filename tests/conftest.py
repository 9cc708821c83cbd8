"""Test set-up: an offline hub. The package `xr0` (this repository, `pip install -e .`) and the helper modules of
this folder (pytest puts it on the path) are imported directly. The tests live in one folder per part of the code
they test (model/, processor/, training/, serving/, client/, labs/, repository/); each of those folders is on the
path as well, so that a test module imports another's helpers by module name (`from test_processing import image`)
wherever it runs from. The shared fixtures are below. Tests that take more than a few seconds on 2 CPU cores
(trainings, launches of commands and servers, closed-loop runs) are marked `slow` (registered in pyproject.toml):
`pytest -m "not slow" tests` runs the rest in a few minutes; scripts/test.sh and CI run everything."""

import logging
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from xr0 import REPO_ROOT  # noqa: E402,F401
from xr0_common.cli import _StderrHandler  # noqa: E402  (the handler configure_logging installs)

# A suite started in the background by a non-interactive shell (`pytest &` in a script, as scripts/test.sh runs
# the two transformers lines) inherits SIGINT ignored, and every command a test starts would inherit it too: the
# Ctrl-C tests would then hang. Give children what a command started from a terminal gets, the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Every folder of tests on the path (this one is already there), in alphabetical order.
TESTS = Path(__file__).resolve().parent
for folder in sorted(TESTS.iterdir(), reverse=True):
    if folder.is_dir() and any(folder.glob("test_*.py")) and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture(autouse=True)
def root_logger_as_it_was():
    """Entry points called in-process run `configure_logging` (root level INFO, a handler to the stderr of the
    moment); undo that after each test, so that a later test's server thread cannot log INFO lines into pytest's
    output. pytest's own per-phase handlers are left to pytest."""
    level = logging.getLogger().level
    yield
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)


# ---- the tiny random model of tiny.py (model tests) ------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    from tiny import tiny_model

    return tiny_model()


# ---- a tiny checkpoint directory and a LeRobot v3.0 dataset for it (training tests) ----------------------------


@pytest.fixture(scope="module")
def lerobot_dir(tmp_path_factory):
    from robot_datasets import write_lerobot

    return write_lerobot(tmp_path_factory.mktemp("lerobot") / "tiny_arm")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from tiny import tiny_model

    directory = tmp_path_factory.mktemp("checkpoint")
    tiny_model().save_pretrained(directory)
    return directory


# ---- the tiny checkpoint as a policy and a server (serving/test_server.py, client/test_executor.py) ------------


@pytest.fixture(scope="module")
def policy():
    import torch
    from served import TINY

    from xr0.deploy.policy import load_policy

    return load_policy(str(TINY), "cpu", torch.float32)


@pytest.fixture(scope="module")
def policy30():
    """The tiny checkpoint serving a robot type with 1 s chunks (T = 30, as the pre-training robot types have)."""
    import torch
    from served import TINY

    from xr0.deploy.benchmark import register_one_second_arm
    from xr0.deploy.policy import load_policy

    policy = load_policy(str(TINY), "cpu", torch.float32)
    register_one_second_arm(policy.processor)
    return policy


@pytest.fixture(scope="module")
def server(policy):
    from xr0.deploy.server import PolicyServer

    server = PolicyServer(policy, port=0, max_message_bytes=2 * 2**20).start_in_thread()
    yield server
    server.stop()
