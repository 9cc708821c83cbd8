"""Test set-up: an offline hub. The package `xr0` (this repository, `pip install -e .`) and the helper modules of
this folder (pytest puts it on the path) are imported directly."""

import logging
import os
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from xr0 import REPO_ROOT  # noqa: E402,F401
from xr0_client.cli import _StderrHandler  # noqa: E402  (the handler configure_logging installs)

# A suite started in the background by a non-interactive shell (`pytest &` in a script, as scripts/test.sh runs
# the two transformers lines) inherits SIGINT ignored, and every command a test starts would inherit it too: the
# Ctrl-C tests would then hang. Give children what a command started from a terminal gets, the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
