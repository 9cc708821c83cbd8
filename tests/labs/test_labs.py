"""The labs' shared machinery (xr0.labs): the request seeds that make an evaluation a function of its episode
seeds, the execution settings every lab checks the same way, and success with the client's Wilson interval."""

from types import SimpleNamespace

import pytest

from xr0.labs.evaluate import execution_settings, request_seed, success_fields
from xr0.meta_world.env import LAB as METAWORLD
from xr0.planar_reach.env import LAB as PLANAR_REACH
from xr0_client.evaluation import wilson_interval


def stub_policy(chunk_length: int, trained_with_prefixes: bool = True) -> SimpleNamespace:
    """What the settings read of a policy: the checkpoint's prefix training, the robot type's chunk length."""
    config = SimpleNamespace(action_prefix_probability=0.5 if trained_with_prefixes else 0.0)
    return SimpleNamespace(
        model=SimpleNamespace(config=config),
        processor=SimpleNamespace(chunk_length=lambda robot_type: chunk_length),
    )


def test_request_seeds_are_the_episode_seed_then_the_request_count():
    assert [request_seed(7, request) for request in (1, 2, 3)] == [7001, 7002, 7003]
    assert request_seed(2**62, 1) == (2**62 * 1000 + 1) % 2**63  # stays a valid numpy seed


def test_the_settings_default_to_the_checkpoint_and_the_latency_in_ticks():
    assert execution_settings(PLANAR_REACH, stub_policy(30), 1, "async", 100, 10, None, None) == (
        "trained",
        3,
    )
    assert execution_settings(METAWORLD, stub_policy(32, False), 1, "async", 200, 8, None, None) == (
        "none",
        16,
    )
    assert execution_settings(METAWORLD, stub_policy(32), 1, "sync", 200, 8, None, None)[0] == "none"


@pytest.mark.parametrize(
    "arguments, field",
    [
        (dict(mode="later"), "mode"),
        (dict(episodes=0), "episodes"),
        (dict(latency_ms=-1), "latency_ms"),
        (dict(execute_steps=30), "execute_steps"),
        (dict(commit_steps=25), "commit_steps"),
        (dict(mode="sync", prefix_mode="trained"), "needs --mode async"),
    ],
)
def test_each_setting_out_of_range_is_refused_by_name(arguments, field):
    settings = dict(
        mode="async", episodes=1, latency_ms=0, execute_steps=10, commit_steps=None, prefix_mode=None
    )
    with pytest.raises(ValueError, match=field):
        execution_settings(PLANAR_REACH, stub_policy(30), **{**settings, **arguments})


def test_success_fields_carry_the_clients_wilson_interval_to_four_decimals():
    low, high = wilson_interval(3, 4)
    assert success_fields(3, 4) == {
        "success_rate": 0.75,
        "success_ci95": [round(low, 4), round(high, 4)],
        "successes": 3,
        "episodes": 4,
    }
