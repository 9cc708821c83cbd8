"""`xr0_client.realtime.simulate_episode`, the one simulated-clock loop of the benchmarks: what the world receives
and when, in sync and async mode, and a safe action computed from the last one."""

import numpy as np
import pytest

from xr0_client.realtime import RealtimeExecutor, SimulatedRunner, simulate_episode


class CountingWorld:
    """Its observation is the number of steps taken; it records every action it is stepped with."""

    def __init__(self):
        self.steps, self.received, self.requested_at = 0, [], []

    def observe(self) -> dict:
        self.requested_at.append(self.steps)
        return {"steps": self.steps}

    def step(self, action) -> None:
        self.received.append(np.asarray(action).copy())
        self.steps += 1


def chunk_of(observation, prefix):
    """A (6, 2) chunk: dim 0 the request's step count + 1 (so it tells chunks apart), dim 1 constant 5."""
    chunk = np.tile([observation["steps"] + 1.0, 5.0], (6, 1))
    if prefix is not None:
        chunk[: len(prefix)] = prefix  # the committed actions come back unchanged
    return chunk


def run(mode: str, latency_ticks: float, safe_action="hold"):
    world = CountingWorld()
    metrics = simulate_episode(
        chunk_of,
        world.observe,
        world.step,
        control_hz=10.0,
        latency_s=latency_ticks / 10.0,
        mode=mode,
        execute_steps=3,
        commit_steps=2,
        max_ticks=10,
        until=lambda: False,
        safe_action=safe_action,
    )
    return world, metrics


def test_sync_mode_waits_with_the_safe_action_of_the_last_one():
    """A function safe action keeps dim 1 of the last action and stops dim 0, as an arm keeps its gripper."""
    world, metrics = run("sync", 2, safe_action=lambda last: np.array([0.0, last[1]]))
    sent = [tuple(a) for a in world.received]
    # Chunk 1 (requested at step 0) runs ticks 0-2; chunk 2 is requested right after tick 2's action was sent,
    # from the world as it is at tick 2 (2 steps taken), and arrives 2 ticks later: tick 3 waits.
    assert sent[:3] == [(1.0, 5.0)] * 3 and sent[3] == (0.0, 5.0) and sent[4] == (3.0, 5.0)
    assert world.requested_at[:2] == [0, 2] and metrics.idle_ticks == 2  # one wait per chunk, two chunks


def test_async_mode_keeps_executing_the_committed_actions():
    world, metrics = run("async", 2)
    sent = [tuple(a) for a in world.received]
    # Chunk 2 is requested after chunk 1's 3rd action (the world at tick 2), its 2 committed actions are chunk 1's
    # 4th and 5th, and it takes over at its index 2: the robot never stops.
    assert sent[:5] == [(1.0, 5.0)] * 5 and sent[5] == (3.0, 5.0) and metrics.idle_ticks == 0


def test_the_world_steps_once_per_tick_after_the_action_of_that_tick():
    world, metrics = run("async", 0)
    assert world.steps == metrics.ticks - 1  # the last tick's action acts when the next tick begins


def test_a_safe_action_must_be_finite_and_of_the_chunks_width():
    with pytest.raises(ValueError, match="safe_action must be"):
        RealtimeExecutor(SimulatedRunner(chunk_of, None, lambda _: 0.0), dict, print, safe_action="brake")
    with pytest.raises(ValueError, match="safe_action returned"):
        run("sync", 2, safe_action=lambda last: np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="mode must be"):
        run("later", 0)
