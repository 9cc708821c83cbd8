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

How the next chunk uses the current one (`prefix_mode`): "trained" sends the Δt_c committed actions as its
`action_prefix` (checkpoints post-trained with prefixes keep them as clean tokens); "guided" sends every action of
C from s_N on (the overlap) with `inference_delay` = Δt_c, and the policy steers the new chunk toward them by
guided inpainting (any checkpoint); "none" sends nothing: the new chunk is inferred blind to C (naive async).

`synchronous=True` is the baseline the report compares against: after T_e actions the robot sends the safe action
until the next chunk arrives (those ticks are idle), and that chunk, inferred without a prefix, runs from its first
action at the tick it arrives.

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

from .robot_types import MODEL_PREFIX_MODES

logger = logging.getLogger("xr0.realtime")


# How the executor conditions the next chunk on the current one: not at all, or in one of the model's modes.
PREFIX_MODES = ("none", *MODEL_PREFIX_MODES)


class ChunkSource(Protocol):
    def __call__(self, observation: dict, action_prefix: Optional[np.ndarray]) -> np.ndarray:
        """observation (server format, with the prefix's `prefix_mode` and `inference_delay` when there is one)
        + the current chunk's actions for the next chunk's first p steps (p, D), or None -> chunk (T, D)."""


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
    """Runs inference in one background thread (wall-clock deployments). One thread, because a client holds one
    connection: an inference the executor abandoned after `inference_timeout` delays its retry until it returns
    (the client's own timeout bounds that)."""

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
    def __init__(self, result, ready_at: float, clock: FakeClock, error: Optional[BaseException] = None):
        self._result, self._ready_at, self._clock, self._error = result, ready_at, clock, error

    def done(self) -> bool:
        return self._clock.now() >= self._ready_at

    def result(self) -> tuple:
        if not self.done():
            raise RuntimeError("simulated inference not finished yet")
        if self._error is not None:
            raise self._error
        return self._result, self._ready_at


class SimulatedRunner:
    """Computes each chunk at once but makes it available only `latency(k)` seconds of FakeClock time later."""

    def __init__(self, source: ChunkSource, clock: FakeClock, latency: Callable[[int], float]):
        self.source, self.clock, self.latency = source, clock, latency
        self._count = 0

    def submit(self, observation: dict, action_prefix: Optional[np.ndarray]) -> _SimulatedFuture:
        ready_at = self.clock.now() + self.latency(self._count)
        self._count += 1
        try:
            return _SimulatedFuture(self.source(observation, action_prefix), ready_at, self.clock)
        except Exception as error:  # noqa: BLE001 - delivered when the simulated inference "finishes"
            return _SimulatedFuture(None, ready_at, self.clock, error)

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
    # |a_t - a_{t-1}| where t is the first tick of a new chunk and a_{t-1} the action sent the tick before (the
    # previous chunk's, or the safe action when the robot waited for this one).
    seam_deltas: list = field(default_factory=list)
    # |a_t - a_{t-1}| where a_{t-1} and a_t are consecutive actions of one chunk: ticks that sent the safe action
    # add nothing here, whatever the safe action ("hold", "zero" or a function), so a mean is that of chunk steps.
    inner_deltas: list = field(default_factory=list)
    commit_steps_used: list = field(default_factory=list)
    failures: int = 0  # inferences that raised, timed out or returned an unusable chunk
    safe_ticks: int = 0  # ticks that sent the safe action (the chunk ran out)
    stopped: Optional[str] = None  # why the loop stopped early (the failure policy), else None

    def summary(self) -> dict:
        """The metrics as JSON-safe numbers: a statistic of nothing (no inference finished, no seam yet) is None,
        not NaN, so that `json.dumps` writes standard JSON (null)."""

        def percentile(values, q):
            return float(np.percentile(values, q)) if values else None

        def mean(values):
            return float(np.mean(values)) if values else None

        latencies_ms = [1e3 * s for s in self.latencies_s]
        return {
            "ticks": self.ticks,
            "chunks": self.chunks,
            "idle_ticks": self.idle_ticks,
            "late_switches": self.late_switches,
            "latency_ms_p50": percentile(latencies_ms, 50),
            "latency_ms_p90": percentile(latencies_ms, 90),
            "latency_ms_p99": percentile(latencies_ms, 99),
            "latency_ms_max": max(latencies_ms, default=None),
            "seam_delta_mean": mean(self.seam_deltas),
            "inner_delta_mean": mean(self.inner_deltas),
            "commit_steps_last": self.commit_steps_used[-1] if self.commit_steps_used else None,
            "failures": self.failures,
            "safe_ticks": self.safe_ticks,
            "stopped": self.stopped,
        }

    def line(self) -> str:
        """One line for logs and shutdown: chunks executed, ticks, idle ticks, failures, median latency."""
        latency = f"{1e3 * float(np.median(self.latencies_s)):.0f} ms" if self.latencies_s else "n/a"
        return (
            f"executed {self.chunks} chunks in {self.ticks} ticks ({self.idle_ticks} idle, "
            f"{self.late_switches} late switches, {self.failures} failed inferences; median latency {latency})"
        )


class InferenceFailure(RuntimeError):
    """An inference that raised, timed out or returned a chunk that must not reach the robot."""


class RealtimeExecutor:
    """
    Args:
        runner: `ThreadedRunner` or `SimulatedRunner`.
        get_observation: () -> observation dict (server format) at the current tick.
        send_action: (D,) action -> None, called once per tick. Only finite actions of width D reach it.
        control_hz: control rate (30 Hz as the report).
        execute_steps: T_e, ticks of a chunk before the next inference starts.
        commit_steps: Δt_c, committed actions sent as the next chunk's prefix (>= expected latency in ticks).
        prefix_mode: "trained" (the committed actions as prefix), "guided" (the whole overlap, the committed
            actions first, for guided inpainting) or "none" (no prefix: plain chunk switching, for comparison).
        adapt_commit: after a late chunk, grow Δt_c to the observed latency (bounded by T - T_e).
        action_dim: D, the width every chunk must have (default: the first chunk's).
        safe_action: what to send when the current chunk has run out and no new chunk is usable: "hold" (the
            last action sent: position-controlled robots stay put), "zero" (zeros: velocity-controlled robots
            stop) or a function of the last action sent (D,) -> (D,) (e.g. stop moving, keep the gripper's
            command).
        max_consecutive_failures: stop the loop (`metrics.stopped`) after this many failed inferences in a row;
            None = never stop, keep retrying.
        inference_timeout: seconds after which a pending inference counts as failed and is retried (None = wait).
        synchronous: wait for each chunk instead of executing while it is inferred (no prefix, no commit).
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
        prefix_mode: str = "trained",
        adapt_commit: bool = True,
        action_dim: Optional[int] = None,
        safe_action: str = "hold",
        max_consecutive_failures: Optional[int] = 3,
        inference_timeout: Optional[float] = None,
        synchronous: bool = False,
    ):
        if execute_steps < 1 or commit_steps < 1:
            raise ValueError("execute_steps and commit_steps must be >= 1")
        if prefix_mode not in PREFIX_MODES:
            raise ValueError(f"prefix_mode must be one of {PREFIX_MODES}, got {prefix_mode!r}")
        if not (callable(safe_action) or safe_action in ("hold", "zero")):
            raise ValueError(f"safe_action must be 'hold', 'zero' or a function, got {safe_action!r}")
        if max_consecutive_failures is not None and max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be >= 1 or None")
        self.runner, self.get_observation, self.send_action = runner, get_observation, send_action
        self.clock = clock or getattr(runner, "clock", None) or MonotonicClock()
        self.dt = 1.0 / control_hz
        self.execute_steps, self.commit_steps = execute_steps, commit_steps
        self.prefix_mode, self.adapt_commit = prefix_mode, adapt_commit
        self.action_dim, self.safe_action = action_dim, safe_action
        self.max_consecutive_failures, self.inference_timeout = max_consecutive_failures, inference_timeout
        self.synchronous = synchronous
        self.metrics = ExecutionMetrics()
        self._consecutive_failures = 0

    # ---- chunks that may reach the robot ----

    def _usable(self, future) -> tuple:
        """(chunk (T, D), finish time) of a done future, or InferenceFailure."""
        try:
            chunk, finished = future.result()
        except Exception as error:  # noqa: BLE001 - a failed inference is a fault to ride out, not a crash
            raise InferenceFailure(f"inference failed: {type(error).__name__}: {error}") from error
        chunk = np.asarray(chunk)
        width = self.action_dim
        if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.dtype.kind not in "iuf":
            raise InferenceFailure(
                f"unusable chunk of shape {chunk.shape} and dtype {chunk.dtype}: expected (T, D)"
            )
        if width is not None and chunk.shape[1] != width:
            raise InferenceFailure(f"chunk of width {chunk.shape[1]}, expected {width}")
        if not np.isfinite(chunk).all():
            raise InferenceFailure("chunk holds NaN or infinite actions")
        if self.action_dim is None:
            self.action_dim = chunk.shape[1]
        self._consecutive_failures = 0
        return chunk.astype(np.float64), finished

    def _failed(self, tick: int, failure: Exception) -> bool:
        """Counts a failure; True when the failure policy says stop."""
        self.metrics.failures += 1
        self._consecutive_failures += 1
        logger.warning("tick %d: %s (%d in a row); retrying", tick, failure, self._consecutive_failures)
        limit = self.max_consecutive_failures
        if limit is not None and self._consecutive_failures >= limit:
            self.metrics.stopped = (
                f"{self._consecutive_failures} consecutive failed inferences (last: {failure})"
            )
            logger.error("stopping: %s", self.metrics.stopped)
            return True
        return False

    def _timed_out(self, submitted: float) -> bool:
        return self.inference_timeout is not None and self.clock.now() - submitted > self.inference_timeout

    # ---- the loop ----

    def run(self, num_ticks: int, until: Optional[Callable[[], bool]] = None) -> ExecutionMetrics:
        """Runs `num_ticks` control ticks after the first chunk arrived, or until `until()` (checked after each
        tick's action; e.g. the task succeeded) returns True. Ctrl-C stops it between two actions: `metrics`
        then says "interrupted" and KeyboardInterrupt goes on to the caller (`xr0_common.cli.exit_on_interrupt`
        turns it into a summary line and exit status 130)."""
        try:
            return self._run(num_ticks, until)
        except KeyboardInterrupt:
            self.metrics.stopped = "interrupted"
            raise

    def _run(self, num_ticks: int, until: Optional[Callable[[], bool]]) -> ExecutionMetrics:
        metrics = self.metrics
        start_time = self.clock.now()
        tick = 0
        current = None
        while current is None:  # nothing to execute before the first usable chunk
            submitted = self.clock.now()
            future = self.runner.submit(self.get_observation(), None)
            while not future.done() and not self._timed_out(submitted):
                tick += 1
                self.clock.sleep_until(start_time + tick * self.dt)
            try:
                if not future.done():
                    raise InferenceFailure(f"no chunk within {self.inference_timeout} s")
                chunk, finished = self._usable(future)
            except InferenceFailure as failure:
                if self._failed(tick, failure):
                    return metrics
                tick += 1  # retry on the next tick, not in a tight loop
                self.clock.sleep_until(start_time + tick * self.dt)
                continue
            metrics.latencies_s.append(finished - submitted)
            current = _Chunk(chunk, tick)
        metrics.startup_ticks = tick
        metrics.chunks = 1
        pending = None  # (future, chunk start tick, submit time, commit steps)
        previous_action = None
        holding = False
        end_tick = tick + num_ticks
        while tick < end_tick:
            self.clock.sleep_until(start_time + tick * self.dt)
            switched = False
            if pending is not None and not pending[0].done() and self._timed_out(pending[2]):
                if self._failed(tick, InferenceFailure(f"no chunk within {self.inference_timeout} s")):
                    break
                pending = None  # retried below, from the chunk still running
            if pending is not None and pending[0].done():
                future, next_start, submitted, commit = pending
                if tick >= next_start + commit:
                    pending = None
                    try:
                        chunk, finished = self._usable(future)
                    except InferenceFailure as failure:
                        if self._failed(tick, failure):
                            break
                    else:
                        if not self.synchronous and tick > next_start + commit:
                            metrics.late_switches += 1
                            logger.warning(
                                "chunk %d arrived %d tick(s) after its switch tick: executed the previous "
                                "chunk meanwhile",
                                metrics.chunks,
                                tick - (next_start + commit),
                            )
                        metrics.latencies_s.append(finished - submitted)
                        current = _Chunk(chunk, tick if self.synchronous else next_start)
                        if tick - current.start_tick >= len(current.actions):
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
                        if self.adapt_commit and not self.synchronous:
                            self._adapt(finished - submitted, len(current.actions))

            index = tick - current.start_tick
            idle = index >= len(current.actions)
            if not idle:
                action = current.actions[index]
            else:
                action = self._safe(previous_action)
                if not holding and not self.synchronous:  # waiting is what a synchronous robot does
                    logger.warning(
                        "tick %d: chunk exhausted and the next one is not ready: %s", tick, self.safe_action
                    )
                metrics.idle_ticks += 1
                metrics.safe_ticks += 1
            self.send_action(action)
            if previous_action is not None:
                delta = float(np.linalg.norm(action - previous_action))
                if switched:
                    metrics.seam_deltas.append(delta)
                elif not idle and not holding:  # two consecutive actions of one chunk
                    metrics.inner_deltas.append(delta)
            holding = idle
            previous_action = action
            metrics.ticks += 1
            if until is not None and until():
                break

            if pending is None and index + 1 >= self.execute_steps:
                pending = self._start_next(current, tick)
            tick += 1
        return metrics

    def _safe(self, previous_action: np.ndarray) -> np.ndarray:
        if self.safe_action == "hold":
            return previous_action
        if self.safe_action == "zero":
            return np.zeros(self.action_dim)
        action = np.asarray(self.safe_action(previous_action), dtype=np.float64)
        if action.shape != (self.action_dim,) or not np.isfinite(action).all():
            raise ValueError(f"safe_action returned {action!r}: expected {self.action_dim} finite values")
        return action

    def _start_next(self, current: _Chunk, tick: int):
        """After tick `tick`, infer the chunk starting at tick + 1, conditioned on the committed actions."""
        next_start = tick + 1
        first_committed = next_start - current.start_tick
        if self.synchronous:  # the robot stops here and waits: nothing is committed
            current.actions = current.actions[:first_committed]
            future = self.runner.submit(self.get_observation(), None)
            return future, next_start, self.clock.now(), 0
        commit = max(1, min(self.commit_steps, len(current.actions) - first_committed))
        committed = current.actions[first_committed : first_committed + commit]
        self.metrics.commit_steps_used.append(commit)
        observation, prefix = self.get_observation(), None
        if self.prefix_mode != "none" and len(committed) == commit:
            if self.prefix_mode == "trained":
                prefix = committed
                observation = dict(observation, prefix_mode="trained")
            else:  # the whole overlap, its first `commit` actions committed
                prefix = current.actions[first_committed:]
                observation = dict(observation, prefix_mode="guided", inference_delay=commit)
        future = self.runner.submit(observation, prefix)
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


# A latency of k ticks must arrive on the k-th tick, not one later because k·dt rounds up by an ulp.
TICK_ROUNDING = 1e-9


def default_commit_steps(latency_ms: float, control_hz: float) -> int:
    """The committed actions that cover an inference latency: the latency in control ticks, rounded up, >= 1."""
    return max(1, math.ceil(latency_ms / 1e3 * control_hz - 1e-6))


def simulate_episode(
    source: ChunkSource,
    get_observation: Callable[[], dict],
    step_world: Callable[[np.ndarray], None],
    *,
    control_hz: float,
    latency_s: float,
    mode: str,
    execute_steps: int,
    commit_steps: int,
    max_ticks: int,
    until: Callable[[], bool],
    safe_action="hold",
    action_dim: Optional[int] = None,
    prefix_mode: str = "trained",
) -> ExecutionMetrics:
    """One closed-loop episode of a simulated world through `RealtimeExecutor` on a `FakeClock`: each chunk is
    computed from the observation of the tick it was requested at and becomes usable `latency_s` later. `mode`
    "sync": after `execute_steps` actions the robot sends the safe action until the next chunk arrives; "async":
    it keeps executing its committed actions (`commit_steps`), which condition the next chunk as `prefix_mode`
    says (`RealtimeExecutor`).

    The action sent at tick t acts over [t, t + 1): `step_world(action)` runs when the next tick begins, so the
    observation requested at tick t shows the world at t and a latency of k ticks is k ticks of world time. The
    world waits for the very first chunk (no action is sent before it), which costs the same in both modes.
    An executor that stops (a failed inference) raises."""
    if mode not in ("sync", "async"):
        raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
    clock = FakeClock()
    sent = []

    def act(action) -> None:
        if sent:
            step_world(sent.pop())
        sent.append(action)

    runner = SimulatedRunner(source, clock, latency=lambda _: max(0.0, latency_s - TICK_ROUNDING))
    executor = RealtimeExecutor(
        runner,
        get_observation,
        act,
        clock=clock,
        control_hz=control_hz,
        execute_steps=execute_steps,
        commit_steps=commit_steps,
        adapt_commit=False,
        action_dim=action_dim,
        safe_action=safe_action,
        max_consecutive_failures=1,
        synchronous=mode == "sync",
        prefix_mode=prefix_mode,
    )
    metrics = executor.run(max_ticks, until=until)
    if metrics.stopped:
        raise RuntimeError(f"the executor stopped: {metrics.stopped}")
    return metrics
