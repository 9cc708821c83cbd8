"""Real-time asynchronous chunk execution (technical report, deployment): the robot keeps executing the current chunk while the next
one is inferred, and the next chunk is conditioned on the actions committed meanwhile.

Timeline, in control ticks (30 Hz by default). A chunk is T actions; chunk C starts at tick s_C (C[j] runs at
tick s_C + j). `execute_steps` (T_e) ticks after a chunk starts, the executor captures an observation and starts
inferring the next chunk N, whose timeline starts at the next tick s_N. The `commit_steps` (Δt_c) actions of C
that run at ticks s_N .. s_N + Δt_c - 1 are committed: they are sent as N's action prefix and executed as they
are. At tick s_N + Δt_c the robot switches to N[Δt_c]. Inference therefore has Δt_c ticks; with latency
Δt_inf <= Δt_c the robot never idles and never jumps at the seam.

Late inference (Δt_inf > Δt_c), the explicit policy: keep executing C past the committed actions (no gap while
C lasts; its actions are what N's prefix did not see, so the seam may jump), switch to N at the tick it
arrives, at N's index for that tick, and log it. With `adapt_commit=True`, Δt_c then grows to cover the
observed latency (up to T - T_e). Only if C runs out before N arrives does the robot hold its last action:
those are the idle ticks; a chunk that arrives after its whole timeline has passed runs from its first
uncommitted action (what a synchronous executor does after waiting).

A `ChunkSource` turns (observation, committed prefix) into a chunk (T, D) in robot units: `LocalChunkSource`
(model + processor in this process) or `RemoteChunkSource` (the policy server). `ThreadedRunner` infers in a
background thread against the wall clock; `SimulatedRunner` replays a latency model on a `FakeClock`, so the
executor's behaviour is testable deterministically.
"""

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np

logger = logging.getLogger("xr0.realtime")


class ChunkSource(Protocol):
    def __call__(self, observation: dict, action_prefix: Optional[np.ndarray]) -> np.ndarray:
        """observation (server format, without prefix) + committed actions (p, D) or None -> chunk (T, D)."""


class LocalChunkSource:
    """An in-process policy: anything with openpi's `infer(observation) -> {"actions": ...}`, e.g. `XR0Policy`
    (xr0.deploy.policy: model + processor, with the server's validation)."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, observation: dict, action_prefix: Optional[np.ndarray]) -> np.ndarray:
        message = dict(observation, **({"action_prefix": action_prefix} if action_prefix is not None else {}))
        return np.asarray(self.policy.infer(message)["actions"])


class RemoteChunkSource:
    """The policy server, through `XR0Client` (xr0_client.client)."""

    def __init__(self, client):
        self.client = client

    def __call__(self, observation: dict, action_prefix: Optional[np.ndarray]) -> np.ndarray:
        message = dict(
            observation,
            **({"action_prefix": np.asarray(action_prefix, np.float32)} if action_prefix is not None else {}),
        )
        return np.asarray(self.client.infer(message)["actions"])


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class FakeClock:
    """Simulated time: `sleep_until` jumps to the deadline."""

    def __init__(self, start: float = 0.0):
        self.time = start

    def now(self) -> float:
        return self.time

    def sleep_until(self, deadline: float) -> None:
        self.time = max(self.time, deadline)


class ThreadedRunner:
    """Runs inference in one background thread (wall-clock deployments)."""

    def __init__(self, source: ChunkSource, clock=None):
        self.source = source
        self.clock = clock or MonotonicClock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xr0-inference")

    def submit(self, observation: dict, action_prefix: Optional[np.ndarray]) -> Future:
        """A future of (chunk (T, D), the clock time inference finished)."""
        return self._pool.submit(lambda: (self.source(observation, action_prefix), self.clock.now()))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _SimulatedFuture:
    def __init__(self, result: np.ndarray, ready_at: float, clock: FakeClock):
        self._result, self._ready_at, self._clock = result, ready_at, clock

    def done(self) -> bool:
        return self._clock.now() >= self._ready_at

    def result(self) -> tuple:
        if not self.done():
            raise RuntimeError("simulated inference not finished yet")
        return self._result, self._ready_at


class SimulatedRunner:
    """Computes each chunk at once but makes it available only `latency(k)` seconds of FakeClock time later."""

    def __init__(self, source: ChunkSource, clock: FakeClock, latency: Callable[[int], float]):
        self.source, self.clock, self.latency = source, clock, latency
        self._count = 0

    def submit(self, observation: dict, action_prefix: Optional[np.ndarray]) -> _SimulatedFuture:
        result = self.source(observation, action_prefix)
        ready_at = self.clock.now() + self.latency(self._count)
        self._count += 1
        return _SimulatedFuture(result, ready_at, self.clock)

    def close(self) -> None:
        pass


@dataclass
class _Chunk:
    actions: np.ndarray  # (T, D)
    start_tick: int


@dataclass
class ExecutionMetrics:
    ticks: int = 0
    startup_ticks: int = 0
    idle_ticks: int = 0
    late_switches: int = 0
    chunks: int = 0
    latencies_s: list = field(default_factory=list)
    seam_deltas: list = field(
        default_factory=list
    )  # |a_t - a_{t-1}| where t is the first tick of a new chunk
    inner_deltas: list = field(default_factory=list)  # |a_t - a_{t-1}| inside a chunk
    commit_steps_used: list = field(default_factory=list)

    def summary(self) -> dict:
        def percentile(values, q):
            return float(np.percentile(values, q)) if values else float("nan")

        latencies_ms = [1e3 * s for s in self.latencies_s]
        return {
            "ticks": self.ticks,
            "chunks": self.chunks,
            "idle_ticks": self.idle_ticks,
            "late_switches": self.late_switches,
            "latency_ms_p50": percentile(latencies_ms, 50),
            "latency_ms_p90": percentile(latencies_ms, 90),
            "latency_ms_p99": percentile(latencies_ms, 99),
            "latency_ms_max": max(latencies_ms, default=float("nan")),
            "seam_delta_mean": float(np.mean(self.seam_deltas)) if self.seam_deltas else float("nan"),
            "inner_delta_mean": float(np.mean(self.inner_deltas)) if self.inner_deltas else float("nan"),
            "commit_steps_last": self.commit_steps_used[-1] if self.commit_steps_used else None,
        }


class RealtimeExecutor:
    """
    Args:
        runner: `ThreadedRunner` or `SimulatedRunner`.
        get_observation: () -> observation dict (server format) at the current tick.
        send_action: (D,) action -> None, called once per tick.
        control_hz: control rate (30 Hz as the report).
        execute_steps: T_e, ticks of a chunk before the next inference starts.
        commit_steps: Δt_c, committed actions sent as the next chunk's prefix (>= expected latency in ticks).
        use_prefix: send the committed actions as prefix (False: plain chunk switching, for comparison).
        adapt_commit: after a late chunk, grow Δt_c to the observed latency (bounded by T - T_e).
    """

    def __init__(
        self,
        runner,
        get_observation,
        send_action,
        clock=None,
        control_hz: float = 30.0,
        execute_steps: int = 10,
        commit_steps: int = 5,
        use_prefix: bool = True,
        adapt_commit: bool = True,
    ):
        if execute_steps < 1 or commit_steps < 1:
            raise ValueError("execute_steps and commit_steps must be >= 1")
        self.runner, self.get_observation, self.send_action = runner, get_observation, send_action
        self.clock = clock or getattr(runner, "clock", None) or MonotonicClock()
        self.dt = 1.0 / control_hz
        self.execute_steps, self.commit_steps = execute_steps, commit_steps
        self.use_prefix, self.adapt_commit = use_prefix, adapt_commit
        self.metrics = ExecutionMetrics()

    def run(self, num_ticks: int) -> ExecutionMetrics:
        metrics = self.metrics
        start_time = self.clock.now()
        first = self.runner.submit(self.get_observation(), None)
        tick = 0
        while not first.done():  # nothing to execute before the first chunk
            tick += 1
            self.clock.sleep_until(start_time + tick * self.dt)
        metrics.startup_ticks = tick
        chunk, finished = first.result()
        metrics.latencies_s.append(finished - start_time)
        current = _Chunk(np.asarray(chunk), tick)
        metrics.chunks = 1
        pending = None  # (future, chunk start tick, submit time, commit steps)
        previous_action = None
        holding = False
        end_tick = tick + num_ticks
        while tick < end_tick:
            self.clock.sleep_until(start_time + tick * self.dt)
            switched = False
            if pending is not None and pending[0].done():
                future, next_start, submitted, commit = pending
                if tick >= next_start + commit:
                    chunk, finished = future.result()
                    if tick > next_start + commit:
                        metrics.late_switches += 1
                        late = tick - (next_start + commit)
                        logger.warning(
                            "chunk %d arrived %d tick(s) after its switch tick: executed the previous "
                            "chunk meanwhile",
                            metrics.chunks,
                            late,
                        )
                    metrics.latencies_s.append(finished - submitted)
                    current = _Chunk(np.asarray(chunk), next_start)
                    if tick - next_start >= len(current.actions):
                        # Its whole timeline has passed: run it from its first uncommitted action, as a
                        # synchronous executor would after waiting.
                        current.start_tick = tick - commit
                        logger.warning(
                            "chunk %d outlived its own timeline: executing it from step %d",
                            metrics.chunks,
                            commit,
                        )
                    metrics.chunks += 1
                    switched = True
                    pending = None
                    if self.adapt_commit:
                        self._adapt(finished - submitted, len(current.actions))

            index = tick - current.start_tick
            if index < len(current.actions):
                action = current.actions[index]
            else:
                action = previous_action
                if not holding:
                    logger.warning(
                        "tick %d: chunk exhausted and the next one is not ready: holding the last action",
                        tick,
                    )
                metrics.idle_ticks += 1
            holding = index >= len(current.actions)
            self.send_action(action)
            if previous_action is not None and action is not previous_action:
                delta = float(np.linalg.norm(action - previous_action))
                (metrics.seam_deltas if switched else metrics.inner_deltas).append(delta)
            previous_action = action
            metrics.ticks += 1

            if pending is None and index + 1 >= self.execute_steps:
                pending = self._start_next(current, tick)
            tick += 1
        return metrics

    def _start_next(self, current: _Chunk, tick: int):
        """After tick `tick`, infer the chunk starting at tick + 1, conditioned on the committed actions."""
        next_start = tick + 1
        first_committed = next_start - current.start_tick
        commit = max(1, min(self.commit_steps, len(current.actions) - first_committed))
        committed = current.actions[first_committed : first_committed + commit]
        prefix = committed if self.use_prefix and len(committed) == commit else None
        self.metrics.commit_steps_used.append(commit)
        future = self.runner.submit(self.get_observation(), prefix)
        return future, next_start, self.clock.now(), commit

    def _adapt(self, latency_s: float, chunk_length: int) -> None:
        needed = math.ceil(latency_s / self.dt)
        limit = chunk_length - self.execute_steps
        if needed > self.commit_steps and self.commit_steps < limit:
            new = min(needed, limit)
            logger.warning(
                "inference took %.0f ms (%d ticks) > %d committed ticks: committing %d from now on",
                latency_s * 1e3,
                needed,
                self.commit_steps,
                new,
            )
            self.commit_steps = new
