"""The command-line conventions every entry point shares (xr0_client.cli)."""

import logging

import pytest

from xr0_client.cli import ArgumentParser


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
