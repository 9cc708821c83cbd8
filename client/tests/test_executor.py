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


def chunks_and_steps(sent):
    """(inference k, step j) of every action sent by a `ScriptedSource` run (1000·k + j in every dim)."""
    return [int(a[0]) // 1000 for a in sent], [int(a[0]) % 1000 for a in sent]


def test_a_late_chunk_takes_over_at_its_index_for_that_tick():
    """Late inference (9.5 ticks > Δc = 5): the robot keeps executing the current chunk past the committed steps,
    then switches to the new chunk N at the tick it arrives, at N's index for that tick (tick - s_N), neither at
    its first step nor at its first uncommitted one."""
    execute, commit = 10, 5
    metrics, sent = run_scripted(
        ScriptedSource(),
        ticks=40,
        latency_ticks=9.5,
        execute_steps=execute,
        commit_steps=commit,
        adapt_commit=False,
    )
    chunk_of, step_of = chunks_and_steps(sent)
    switch = chunk_of.index(1)  # ticks counted from the first chunk's first action
    # N is requested after tick 9 (s_N = 10) and is ready 9.5 ticks later, within tick 19: 4 ticks after s_N + Δc.
    assert switch == 19 and step_of[switch] == switch - execute == 9
    assert chunk_of[:switch] == [0] * switch and step_of[:switch] == list(range(switch)), (
        "no gap, no jump back"
    )
    assert metrics.late_switches == metrics.chunks - 1 == 3 and metrics.idle_ticks == 0  # every chunk is late


def test_a_chunk_that_outlived_its_timeline_runs_from_its_first_uncommitted_step():
    """T = 12, latency 20.5 ticks: chunk 0 runs out (its last action at tick 11), the robot holds until chunk 1
    arrives at tick 24, when chunk 1's whole timeline (from s_N = 4) has passed. It then runs from step Δc = 3, the
    first step after those it was conditioned to continue, as a synchronous executor would; not from step 0."""
    execute, commit = 4, 3
    metrics, sent = run_scripted(
        ScriptedSource(length=12),
        ticks=30,
        latency_ticks=20.5,
        execute_steps=execute,
        commit_steps=commit,
        adapt_commit=False,
    )
    chunk_of, step_of = chunks_and_steps(sent)
    switch = chunk_of.index(1)
    # requested after tick 3, ready 20.5 ticks later: within tick 24
    assert switch == 24 and step_of[switch] == commit
    assert step_of[switch : switch + 4] == [3, 4, 5, 6], "and goes on from there, one step per tick"
    assert metrics.idle_ticks == 24 - 12 and metrics.late_switches == 1


@pytest.mark.parametrize("prefix_mode", ["trained", "guided"])
def test_the_prefix_and_its_delay_are_clamped_to_what_is_left_of_the_chunk(prefix_mode):
    """T = 12, T_e = 10, Δc = 5: when the next chunk is requested only 2 actions of the current one are left, so
    only 2 can be committed. The trained prefix is those 2; the guided overlap is those 2 with `inference_delay` 2
    (the clamped commit, never the configured 5: a delay beyond the overlap describes steps that do not exist, and
    the server refuses it), and the new chunk takes over at its step 2."""
    source = ScriptedSource(length=12)
    metrics, sent = run_scripted(
        source, ticks=30, latency_ticks=0.5, execute_steps=10, commit_steps=5, prefix_mode=prefix_mode
    )
    expected_fields = {
        "trained": {"prefix_mode": "trained"},
        "guided": {"prefix_mode": "guided", "inference_delay": 2},
    }
    assert source.prefix_fields[1] == expected_fields[prefix_mode]
    assert [int(a) for a in source.prefixes[1][:, 0]] == [10, 11]
    assert metrics.commit_steps_used[0] == 2
    chunk_of, step_of = chunks_and_steps(sent)
    switch = chunk_of.index(1)
    assert switch == 12 and step_of[switch] == 2


# |a_t - a_{t-1}| of two consecutive steps of a ScriptedSource chunk: 7 dims, each +1
SQRT7 = float(np.sqrt(7.0))


@pytest.mark.parametrize(
    "safe_action",
    ["hold", "zero", lambda last: last.copy(), lambda last: np.zeros_like(last)],
    ids=["hold", "zero", "a copy of the last", "zeros by function"],
)
def test_inner_deltas_are_steps_of_one_chunk_whatever_the_safe_action(safe_action):
    """`inner_deltas` holds |a_t - a_{t-1}| of consecutive actions of one chunk only: ticks that sent the safe
    action add nothing, so the metric means the same for "hold", "zero" and a function (each of which sends a new
    array every tick). Synchronous, T_e = 4, latency 2.5 ticks: each chunk sends 4 actions (3 inner steps of √7),
    the robot waits 2 ticks, the next chunk starts at its first action (a seam against the action sent the tick
    before)."""
    metrics, sent = run_scripted(
        ScriptedSource(),
        ticks=24,
        latency_ticks=2.5,
        execute_steps=4,
        synchronous=True,
        safe_action=safe_action,
    )
    assert metrics.chunks == 4 and metrics.idle_ticks == 4 * 2
    assert metrics.inner_deltas == pytest.approx([SQRT7] * (4 * 3))
    assert metrics.summary()["inner_delta_mean"] == pytest.approx(SQRT7)
    assert len(metrics.seam_deltas) == 3
    waited = np.stack(sent)[[5, 11, 17]]  # what the robot was sent the tick before chunks 1-3 took over
    expected_seams = [
        float(np.linalg.norm(np.full(7, 1000.0 * k) - w)) for k, w in enumerate(waited, start=1)
    ]
    assert metrics.seam_deltas == pytest.approx(expected_seams)


def test_a_first_inference_that_hangs_times_out_and_is_retried():
    """The very first inference never arrives (50 s): after `inference_timeout` (0.3 s = 9 ticks) it counts as a
    failure at tick 10, the retry is submitted at the next tick (11) and its chunk, ready within half a tick, is
    the first one executed, from tick 12."""
    source = ScriptedSource()
    latencies = iter([50.0] + [0.5 / 30] * 100)
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
    metrics = executor.run(20)
    assert metrics.failures == 1 and metrics.stopped is None and metrics.startup_ticks == 12
    assert len(sent) == 20 and int(sent[0][0]) == 1000, "chunk 1's first action: the hung chunk 0 never ran"


@pytest.mark.parametrize("latency_ticks, adapted", [(9.5, 10), (15.5, 16), (25.5, 20)])
def test_a_late_chunk_grows_the_commit_to_its_latency_within_the_chunk(latency_ticks, adapted):
    """`adapt_commit`: after a late chunk, Δc becomes the observed latency in ticks, rounded up (9.5 -> 10,
    15.5 -> 16), at most T - T_e = 20 (25.5 ticks cannot be covered: 20). A latency it covers is late once: the
    next request commits the adapted Δc (10) and its chunk arrives in time."""
    clock, source = FakeClock(), ScriptedSource()
    executor = RealtimeExecutor(
        SimulatedRunner(source, clock, lambda k: latency_ticks / 30),
        lambda: {},
        lambda action: None,
        clock=clock,
        execute_steps=10,
        commit_steps=5,
    )
    metrics = executor.run(120)
    assert metrics.commit_steps_used[0] == 5 and executor.commit_steps == adapted
    if adapted == 10:
        assert set(metrics.commit_steps_used[1:]) == {10} and metrics.late_switches == 1
