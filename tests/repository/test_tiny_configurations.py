"""Each tiny configuration is defined once (`xr0.tiny_model.TINY_CONFIGURATIONS`) and named wherever it is used:
the shipped fixtures were written from theirs, and the labs build their base checkpoints from theirs."""

import json

import pytest

from xr0 import REPO_ROOT
from xr0.meta_world.env import CHUNK_LENGTH, STATE_DIM
from xr0.meta_world.env import LAB as METAWORLD
from xr0.planar_reach.env import LAB as PLANAR_REACH
from xr0.tiny_model import TINY_CONFIGURATIONS, tiny_config, tiny_configuration

# shipped fixture -> the configuration it was written from (config.json files are never regenerated)
SHIPPED = {
    "tiny-xr0": "tiny-xr0",
    "planar-reach/sync": PLANAR_REACH.fixture_model,
    "planar-reach/async-rtc": PLANAR_REACH.fixture_model,
    "planar-reach/async-lambda": PLANAR_REACH.fixture_model,
    "metaworld/mt10": METAWORLD.fixture_model,
}


def differences(named, shipped, where="") -> list:
    """Where `shipped` (a config.json, with every default written out) disagrees with the keys `named` gives."""
    if isinstance(named, dict):
        if not isinstance(shipped, dict):
            return [f"{where}: {shipped!r} is not a mapping"]
        return [
            line
            for key, value in named.items()
            for line in differences(value, shipped.get(key), f"{where}.{key}")
        ]
    return [] if named == shipped else [f"{where}: named {named!r}, shipped {shipped!r}"]


@pytest.mark.parametrize("fixture", sorted(SHIPPED))
def test_each_shipped_fixture_has_its_named_configuration(fixture):
    shipped = json.loads((REPO_ROOT / "fixtures" / fixture / "config.json").read_text())
    assert differences(TINY_CONFIGURATIONS[SHIPPED[fixture]], shipped) == []


def test_every_named_configuration_builds_and_copies_are_independent():
    for name in TINY_CONFIGURATIONS:
        config = tiny_config(name)
        assert config.action_length == TINY_CONFIGURATIONS[name]["action_length"]
    copy = tiny_configuration("metaworld")
    copy["vlm_config"]["text_config"]["hidden_size"] = 1
    assert TINY_CONFIGURATIONS["metaworld"]["vlm_config"]["text_config"]["hidden_size"] == 48
    with pytest.raises(ValueError, match="unknown tiny configuration"):
        tiny_configuration("huge")


def test_the_labs_fixture_configurations_fit_their_robot_types():
    metaworld = TINY_CONFIGURATIONS[METAWORLD.fixture_model]
    assert (metaworld["action_length"], metaworld["state_dim"]) == (CHUNK_LENGTH, STATE_DIM)
    assert TINY_CONFIGURATIONS[PLANAR_REACH.fixture_model]["action_length"] == 30  # 1 s at 30 Hz
