"""Loads XR0 directories as users do (AutoConfig, AutoModel, AutoProcessor with trust_remote_code=True) and reports
every warning the loads raise: Python warnings, and log records of level WARNING and above from transformers (whose
library logger gets a handler of its own: it propagates to the root logger only where CI is set) and from the root
logger.

    python tests/quiet_loads.py DIR [DIR ...]    # one JSON line per directory: the classes loaded, the warnings

Run it in a fresh process: transformers prints some warnings once per process (`warning_once`), so only a
process's first load shows them all.
"""

import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path


class _Collect(logging.Handler):
    def __init__(self, messages: list):
        super().__init__(logging.WARNING)
        self.messages = messages
        self.seen = []  # a propagating record reaches this handler twice: count it once

    def emit(self, record: logging.LogRecord) -> None:
        if any(record is seen for seen in self.seen):
            return
        self.seen.append(record)
        self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextlib.contextmanager
def captured_warnings():
    """Yields a list that receives the warnings raised inside the block (filled when the block exits)."""
    import transformers

    messages = []
    handler = _Collect(messages)
    loggers = [logging.getLogger(), transformers.logging.get_logger()]  # the root logger, transformers' own
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    messages.extend(f"{w.category.__name__}: {w.message}" for w in caught)


def load(directory) -> dict:
    """Config, model (when the directory holds weights) and processor of `directory`, with the warnings raised."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    has_weights = any(Path(directory).glob("*.safetensors"))
    with captured_warnings() as messages:
        loaded = [type(AutoConfig.from_pretrained(directory, trust_remote_code=True)).__name__]
        if has_weights:
            loaded.append(type(AutoModel.from_pretrained(directory, trust_remote_code=True)).__name__)
        loaded.append(type(AutoProcessor.from_pretrained(directory, trust_remote_code=True)).__name__)
    return {"directory": str(directory), "loaded": loaded, "warnings": messages}


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(json.dumps(load(path)), flush=True)
