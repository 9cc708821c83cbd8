"""Command-line conventions shared by every XR0 entry point (no torch here: the light client uses it too).

- Flags are snake_case, as transformers' HfArgumentParser writes them (`--output_dir`); like HfArgumentParser,
  each also answers to its dashed spelling (`--output-dir`), which `--help` lists after it.
- Every parser has `--log_level`; messages go through `logging` (`configure_logging`), results to stdout.
- `--help` prints and exits before anything else runs.
- Ctrl-C (SIGINT) ends a long-running command as a Unix tool does (`exit_on_interrupt`): one summary line,
  exit status 130, no traceback.
"""

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Optional, Union

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The shell's status for a process ended by SIGINT (128 + 2).
INTERRUPTED_EXIT_STATUS = 130

logger = logging.getLogger("xr0.cli")


class ArgumentParser(argparse.ArgumentParser):
    """argparse in HfArgumentParser's flag style, with `--log_level`.

    A long option must be written snake_case (`--max_steps`); a dashed one (`--max-steps`) is refused when the
    parser is built, so one style holds across entry points. Each snake_case option also gets its dashed alias.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--log_level",
            default="info",
            type=str.lower,
            choices=LOG_LEVELS,
            help="logging level of messages on stderr (default: info)",
        )

    def add_argument(self, *names, **kwargs):
        flags = list(names)
        for name in names:
            if name.startswith("--") and name not in ("--help", "--version"):
                if "-" in name[2:]:
                    snake = name[:2] + name[2:].replace("-", "_")
                    raise ValueError(f"option {name!r}: write long options snake_case ({snake!r})")
                alias = name.replace("_", "-")
                if alias != name:
                    flags.append(alias)
        return super().add_argument(*flags, **kwargs)

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        parsed = super().parse_args(args, namespace)
        configure_logging(parsed.log_level)
        return parsed


class _StderrHandler(logging.StreamHandler):
    """Writes to `sys.stderr` as it is when a record is emitted, not as it was when logging was configured (an
    entry point called in-process, e.g. by a test that captures and then closes stderr)."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def configure_logging(level: Union[str, int] = "info") -> None:
    """Messages of `level` (a name or a `logging` number) and above to stderr, one line each with time, level and
    logger name."""
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level,
        format=LOG_FORMAT,
        handlers=[_StderrHandler()],
        force=True,
    )


@contextlib.contextmanager
def exit_on_interrupt(summary: Callable[[], str]):
    """Ctrl-C inside the block logs `interrupted: <summary()>` (one line: what was done so far) and exits with
    status 130, without a traceback. Code inside the block cleans up in its own `finally` clauses first."""
    try:
        yield
    except KeyboardInterrupt:
        logger.warning("interrupted: %s", summary())
        sys.exit(INTERRUPTED_EXIT_STATUS)
