"""The real-time executor under faults and its timeline, with scripted chunk sources on a fake clock (no model)."""

import json

import numpy as np
import pytest

from xr0_client import (
    FakeClock,
    RealtimeExecutor,
    SimulatedRunner,
)


def test_metrics_of_a_run_that_finished_nothing_are_standard_json():
    """Statistics of nothing (no inference finished, no seam) are null, not NaN: json.dumps would write NaN,
    which JSON parsers other than Python's refuse."""
    from xr0_client.realtime import ExecutionMetrics

    summary = ExecutionMetrics(ticks=3, idle_ticks=3).summary()
    assert json.loads(json.dumps(summary, allow_nan=False))["latency_ms_p50"] is None
    assert summary["seam_delta_mean"] is None and summary["latency_ms_max"] is None


class ScriptedSource:
    """Chunks whose every value encodes (inference k, step j) = 1000·k + j; `faults[k]` makes inference k raise,
    return NaN or the wrong width. Records each call's prefix and the prefix fields of its observation."""

    def __init__(self, length=30, width=7, faults=None):
        self.length, self.width, self.faults = length, width, faults or {}
        self.prefixes, self.prefix_fields, self.calls = [], [], 0

    def __call__(self, observation, prefix):
        k = self.calls
        self.calls += 1
        self.prefixes.append(None if prefix is None else np.array(prefix))
        self.prefix_fields.append(
            {key: observation[key] for key in ("prefix_mode", "inference_delay") if key in observation}
        )
        fault = self.faults.get(k)
        if fault == "raise":
            raise ConnectionError("the server went away")
        chunk = np.tile(1000.0 * k + np.arange(self.length)[:, None], (1, self.width))
        if fault == "nan":
            chunk[3, 2] = np.nan
        if fault == "wide":
            chunk = np.ones((self.length, self.width + 3))
        return chunk


def run_scripted(source, ticks=120, latency_ticks=1.0, **kwargs):
    clock = FakeClock()
    sent = []
    executor = RealtimeExecutor(
        SimulatedRunner(source, clock, lambda k: latency_ticks / 30),
        lambda: {},
        sent.append,
        clock=clock,
        **kwargs,
    )
    return executor.run(ticks), sent


def test_faulty_inference_never_reaches_the_robot():
    source = ScriptedSource(faults={2: "raise", 3: "nan", 5: "wide", 6: "raise"})
    metrics, sent = run_scripted(source, ticks=150, execute_steps=10, commit_steps=5)
    assert len(sent) == 150 and metrics.stopped is None
    assert all(a.shape == (7,) and np.isfinite(a).all() for a in sent)
    assert metrics.failures == 4
    used = {int(a[0]) // 1000 for a in sent}
    assert not used & {2, 3, 5, 6}, "no action of a failed chunk was executed"


def test_when_every_retry_fails_the_safe_action_is_held_then_the_policy_stops():
    source = ScriptedSource(faults={k: "raise" for k in range(1, 100)})
    metrics, sent = run_scripted(
        source, ticks=200, execute_steps=10, commit_steps=5, max_consecutive_failures=25
    )
    assert metrics.stopped and "25 consecutive" in metrics.stopped
    chunk_end = sent[29]
    assert metrics.safe_ticks > 0 and all(np.array_equal(a, chunk_end) for a in sent[30:]), (
        "holds the last action"
    )
    zero, sent_zero = run_scripted(
        ScriptedSource(faults={k: "raise" for k in range(1, 100)}),
        ticks=60,
        execute_steps=10,
        commit_steps=5,
        safe_action="zero",
        max_consecutive_failures=None,
    )
    assert zero.stopped is None and len(sent_zero) == 60 and not sent_zero[-1].any()


def test_a_late_inference_times_out_and_is_retried():
    source = ScriptedSource()
    latencies = iter([1 / 30, 50.0] + [1 / 30] * 100)  # the second inference hangs far past the timeout
    clock = FakeClock()
    sent = []
    executor = RealtimeExecutor(
        SimulatedRunner(source, clock, lambda k: next(latencies)),
        lambda: {},
        sent.append,
        clock=clock,
        execute_steps=10,
        commit_steps=5,
        inference_timeout=0.3,
    )
    metrics = executor.run(90)
    assert metrics.failures == 1 and metrics.stopped is None and len(sent) == 90
    assert {int(a[0]) // 1000 for a in sent} >= {0, 2}, "the retried inference took over"


def test_a_failing_first_inference_is_retried_once_per_tick():
    source = ScriptedSource(faults={0: "raise", 1: "raise"})
    metrics, sent = run_scripted(source, ticks=40, latency_ticks=0.0, execute_steps=10, commit_steps=5)
    assert metrics.failures == 2 and metrics.startup_ticks == 2 and len(sent) == 40
    assert int(sent[0][0]) // 1000 == 2, "the first usable chunk is the third inference"


@pytest.mark.parametrize("prefix_mode", ["trained", "guided", "none"])
def test_the_timeline_is_pinned(prefix_mode):
    """Chunk N is requested after tick s_N - 1; the robot switches to N at tick s_N + Δc in every prefix mode. Its
    trained prefix is exactly what runs at ticks s_N .. s_N+Δc-1; its guided prefix is the rest of the chunk
    running at s_N, from that tick on, with those Δc actions committed."""
    execute, commit = 10, 5
    source = ScriptedSource()
    metrics, sent = run_scripted(
        source,
        ticks=100,
        execute_steps=execute,
        commit_steps=commit,
        prefix_mode=prefix_mode,
        adapt_commit=False,
    )
    assert metrics.late_switches == 0 and metrics.idle_ticks == 0
    chunk_of = [int(a[0]) // 1000 for a in sent]
    step_of = [int(a[0]) % 1000 for a in sent]
    switches = [t for t in range(1, len(sent)) if chunk_of[t] != chunk_of[t - 1]]
    assert len(switches) >= 5
    start = 0  # chunk 0 starts at the first tick
    for n, switch in enumerate(switches, start=1):
        s_n = start + execute  # requested after tick start + execute - 1
        assert switch == s_n + commit, (n, switch, s_n)
        assert step_of[switch] == commit, "the new chunk starts at its first uncommitted step"
        prefix, fields = source.prefixes[n], source.prefix_fields[n]
        if prefix_mode == "trained":
            assert np.array_equal(prefix, np.stack(sent[s_n : s_n + commit])), n
            assert fields == {"prefix_mode": "trained"}
        elif prefix_mode == "guided":
            assert np.array_equal(prefix[:commit], np.stack(sent[s_n : s_n + commit])), n
            assert [int(a) for a in prefix[:, 0]] == [1000 * (n - 1) + j for j in range(execute, 30)], n
            assert fields == {"prefix_mode": "guided", "inference_delay": commit}
        else:
            assert prefix is None and fields == {}
        start = s_n
