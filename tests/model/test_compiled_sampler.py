"""The optimized sampler: the Euler loop traced whole (no graph breaks), compiled actions equal to eager ones, the
input checks still in force, CUDA-graph replay (on CUDA; the graph cache's logic on the CPU, through a shim of
torch.cuda's graphs and streams), and the latency benchmark run as users run it."""

import contextlib
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from tiny import encode, observation, tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CHECKPOINT = REPO_ROOT / "fixtures" / "tiny-xr0"


@pytest.fixture(scope="module")
def observations(model):
    """{batch size: observation}; the batch of two has prompts of different lengths (left padding)."""
    with torch.no_grad():
        return {1: encode(model, observation((5,))), 2: encode(model, observation((5, 9), seed=1))}


@pytest.fixture(autouse=True)
def eager_sampler(model):
    """Every test starts, and leaves the shared model, with the eager loop."""
    model.optimize_sampler(compile=False)
    yield
    model.optimize_sampler(compile=False)
    torch._dynamo.reset()


def draws(model, batch_size: int, action_length: int, prefix_length: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, action_length, model.config.action_dim)
    action_mask = torch.zeros(shape)
    action_mask[..., :7] = 1
    noise = torch.randn(shape, generator=generator)
    prefix = torch.randn(batch_size, prefix_length, model.config.action_dim, generator=generator)
    return action_mask, noise, (prefix if prefix_length else None)


def sample(model, observation, action_mask, noise, prefix):
    with torch.no_grad():
        return model.sample_actions(observation, action_mask, noise=noise, action_prefix=prefix)


@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.slow
def test_the_sampler_traces_as_one_graph_without_breaks(model, observations, with_prefix):
    action_mask, noise, prefix = draws(model, 1, 10, 3 if with_prefix else 0)
    with torch.no_grad():
        explanation = torch._dynamo.explain(model.sample_actions)(
            observations[1], action_mask, noise=noise, action_prefix=prefix
        )
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_one_velocity_evaluation_traces_as_one_graph(model, observations):
    action_mask, noise, _ = draws(model, 1, 10, 0)
    with torch.no_grad():
        explanation = torch._dynamo.explain(model.velocity)(
            noise, torch.full((1,), 0.2), observations[1], action_mask
        )
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("prefix_length", [0, 2])
@pytest.mark.parametrize("action_length", [4, 10, 30])
@pytest.mark.slow
def test_the_fullgraph_loop_gives_the_eager_actions(
    model, observations, action_length, prefix_length, batch_size
):
    """fullgraph=True fails on any graph break; the `eager` backend runs the captured graph as it was traced, so
    the actions must equal eager sampling to float rounding."""
    inputs = draws(model, batch_size, action_length, prefix_length)
    expected = sample(model, observations[batch_size], *inputs)
    model.optimize_sampler(backend="eager")
    actions = sample(model, observations[batch_size], *inputs)
    torch.testing.assert_close(actions, expected, rtol=0, atol=1e-6)
    if prefix_length:  # the committed steps come back as given
        torch.testing.assert_close(actions[:, :prefix_length], inputs[2])


@pytest.mark.skipif(
    int(transformers.__version__.split(".")[0]) < 5,
    reason="inductor compiles the graph both lines trace alike (the fullgraph tests run on both); one line runs it",
)
@pytest.mark.slow
def test_the_inductor_compiled_loop_gives_the_eager_actions(model, observations):
    inputs = draws(model, 2, 4, 2)
    expected = sample(model, observations[2], *inputs)
    model.optimize_sampler()  # inductor, as users run it
    actions = sample(model, observations[2], *inputs)
    tolerance = 1e-5 * max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actions, expected, rtol=0, atol=tolerance)


def test_input_checks_still_run_before_the_compiled_loop(model, observations):
    model.optimize_sampler(backend="eager")
    action_mask, noise, prefix = draws(model, 1, 4, 2)
    with pytest.raises(ValueError, match="`noise` contains NaN"):
        sample(model, observations[1], action_mask, torch.full_like(noise, float("nan")), None)
    with pytest.raises(ValueError, match="`action_prefix` contains NaN"):
        sample(model, observations[1], action_mask, noise, torch.full_like(prefix, float("inf")))
    with pytest.raises(ValueError, match=r"`noise` must have shape \(B, T, A\) = \(1, 4, 32\)"):
        sample(model, observations[1], action_mask, noise[:, :3], None)


def test_guided_sampling_is_untouched_by_the_optimized_loop(model, observations):
    action_mask, noise, prefix = draws(model, 1, 10, 5)

    def guided():
        with torch.no_grad():
            return model.sample_actions(
                observations[1], action_mask, noise=noise, action_prefix=prefix, prefix_mode="guided"
            )

    expected = guided()
    model.optimize_sampler(backend="eager")
    torch.testing.assert_close(guided(), expected, rtol=0, atol=0)


def test_compile_false_restores_the_eager_loop(model):
    model.optimize_sampler(backend="eager")
    assert model._inference_loop is not None
    model.optimize_sampler(compile=False)
    assert model._inference_loop is None


def test_cuda_graphs_are_refused_off_cuda(model):
    with pytest.raises(ValueError, match="`cuda_graphs=True` needs the model on a CUDA device; it is on cpu"):
        model.optimize_sampler(cuda_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph replay needs a CUDA device")
def test_cuda_graph_replay_gives_the_eager_actions():
    model = tiny_model().cuda()
    calls = []  # (observation, draws): two geometries, each twice with new inputs (the second call replays)
    for batch_size, action_length, prefix_length, batch in [
        (1, 10, 0, observation((5,))),
        (2, 4, 2, observation((5, 9), seed=1)),
    ]:
        with torch.no_grad():
            obs = encode(model, {key: value.cuda() for key, value in batch.items()})
        for seed in (0, 1):
            inputs = draws(model, batch_size, action_length, prefix_length, seed)
            calls.append((obs, [t.cuda() if t is not None else None for t in inputs]))
    expected = [sample(model, obs, *inputs) for obs, inputs in calls]
    model.optimize_sampler(compile=False, cuda_graphs=True)
    replayed = [sample(model, obs, *inputs) for obs, inputs in calls]
    assert len(model._inference_loop.graphs) == 2
    for actions, reference in zip(replayed, expected, strict=True):
        torch.testing.assert_close(actions, reference, rtol=0, atol=1e-5)


# ---- CUDAGraphLoop's cache on the CPU: torch.cuda's graphs and streams replaced by a shim -------------------------


class CPUGraphs:
    """Stands in for `torch.cuda.CUDAGraph`, `torch.cuda.graph` and the streams, with a graph's semantics: what runs
    under `graph(g)` is recorded, not computed (its output tensor holds NaN until a replay), and `g.replay()` runs
    it again on the tensors it was captured with, writing into the same output tensor. So only the cache's logic
    is under test: which graph a call replays, what it copies in and out, which graph it drops."""

    def __init__(self, monkeypatch):
        self.capturing = None
        self.captured = []  # (T, num_steps) of each capture, in order
        self.replays = 0
        shim = self

        class Graph:
            def __init__(self):
                self.recorded = []  # (loop, its arguments, its output)

            def replay(self):
                shim.replays += 1
                for loop, arguments, output in self.recorded:
                    output.copy_(loop(*arguments))

        class Stream:
            def wait_stream(self, other):
                pass

        @contextlib.contextmanager
        def graph(captured):
            self.capturing = captured
            try:
                yield
            finally:
                self.capturing = None

        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())

    def loop(self, loop):
        """`loop` as `CUDAGraphLoop` sees it: computed eagerly outside a capture, recorded inside one."""

        def run(observation, action_mask, noise, num_steps, *rest):
            output = loop(observation, action_mask, noise, num_steps, *rest)
            if self.capturing is not None:
                arguments = (observation, action_mask, noise, num_steps, *rest)
                self.capturing.recorded.append((loop, arguments, output))
                self.captured.append((noise.shape[1], num_steps))
                output.fill_(float("nan"))  # a capture computes nothing
            return output

        return run


@pytest.fixture
def cpu_graphs(model, monkeypatch):
    """The model sampling through a `CUDAGraphLoop` over its eager loop, on the CPU shim (16 graphs kept)."""
    from xr0.sampler_xr0 import CUDAGraphLoop, euler_integrate

    graphs = CPUGraphs(monkeypatch)
    model._inference_loop = CUDAGraphLoop(
        graphs.loop(functools.partial(euler_integrate, model)), max_graphs=16
    )
    return graphs


def eager(model, observation, action_mask, noise, prefix, num_steps=None):
    loop, model._inference_loop = model._inference_loop, None
    try:
        with torch.no_grad():
            return model.sample_actions(
                observation, action_mask, noise=noise, action_prefix=prefix, num_steps=num_steps
            )
    finally:
        model._inference_loop = loop


def test_the_graph_cache_replays_each_geometry_with_the_new_inputs(model, observations, cpu_graphs):
    """Two geometries (batch 1, T = 10, no prefix; batch 2, T = 4, a 2-step prefix), each called twice with new
    draws: one capture per geometry, every call replayed on its own inputs (copied into the static buffers), each
    result the eager loop's."""
    calls = [(1, 10, 0, 0), (1, 10, 0, 1), (2, 4, 2, 0), (2, 4, 2, 1)]
    for batch_size, action_length, prefix_length, seed in calls:
        inputs = draws(model, batch_size, action_length, prefix_length, seed)
        actions = sample(model, observations[batch_size], *inputs)
        torch.testing.assert_close(
            actions, eager(model, observations[batch_size], *inputs), rtol=0, atol=1e-6
        )
    assert cpu_graphs.captured == [(10, 5), (4, 5)] and cpu_graphs.replays == 4
    assert len(model._inference_loop.graphs) == 2


def test_the_number_of_euler_steps_is_part_of_a_graphs_geometry(model, observations, cpu_graphs):
    """Same tensors, 5 then 3 Euler steps: a graph replays a fixed number of steps, so 3 steps get a graph of
    their own and the actions of 3 steps (not the 5-step graph's)."""
    inputs = draws(model, 1, 10, 0)
    for steps in (5, 3, 5):
        with torch.no_grad():
            actions = model.sample_actions(observations[1], inputs[0], noise=inputs[1], num_steps=steps)
        torch.testing.assert_close(
            actions, eager(model, observations[1], *inputs, num_steps=steps), rtol=0, atol=1e-6
        )
    assert cpu_graphs.captured == [(10, 5), (10, 3)]


def test_a_replayed_result_is_the_callers_own_copy(model, observations, cpu_graphs):
    """The graph writes every replay into one static output tensor: a result returned without a copy would change
    under the caller's feet at the next call of that geometry (and alias a buffer the next replay overwrites)."""
    first_inputs, second_inputs = draws(model, 1, 10, 0, seed=0), draws(model, 1, 10, 0, seed=1)
    first = sample(model, observations[1], *first_inputs)
    kept = first.clone()
    second = sample(model, observations[1], *second_inputs)
    assert torch.equal(first, kept), "the second call changed the first call's result"
    assert not torch.equal(first, second) and first.data_ptr() != second.data_ptr()
    (_, _, static_output), *_ = model._inference_loop.graphs.values()
    assert static_output.data_ptr() not in (first.data_ptr(), second.data_ptr())


def test_the_least_recently_used_graph_is_dropped_first(model, observations, cpu_graphs):
    """At most 2 graphs kept: T = 4, 6, then 4 again (a replay: 4 is now the most recent), then 8 drops 6 (the
    least recently used, though 4 was captured first); 4 still replays, 6 is captured again."""
    model._inference_loop.max_graphs = 2
    for action_length in (4, 6, 4, 8, 4, 6):
        inputs = draws(model, 1, action_length, 0)
        actions = sample(model, observations[1], *inputs)
        torch.testing.assert_close(actions, eager(model, observations[1], *inputs), rtol=0, atol=1e-6)
    assert [length for length, _ in cpu_graphs.captured] == [4, 6, 8, 6]
    assert len(model._inference_loop.graphs) == 2


# ---- xr0-benchmark, run as users run it ------------------------------------------------------------------------


def benchmark(*arguments, timeout=600):
    return subprocess.run(
        [str(Path(sys.executable).with_name("xr0-benchmark")), *arguments],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=timeout,
    )


def test_benchmark_help_names_every_option():
    finished = benchmark("--help", timeout=60)
    assert finished.returncode == 0, finished.stderr
    for option in (
        "--model",
        "--device",
        "--dtype",
        "--attn_implementation",
        "--compile",
        "--cuda_graphs",
        "--views",
        "--batch_size",
        "--runs",
    ):
        assert option in finished.stdout


@pytest.mark.slow
def test_benchmark_of_the_tiny_checkpoint_prints_one_json_line_of_every_stage():
    finished = benchmark(
        *(
            "--model",
            TINY_CHECKPOINT,
            "--runs",
            "2",
            "--warmup",
            "1",
            "--action_length",
            "4",
            "--batch_size",
            "2",
        ),
        *("--compile", "--compile_backend", "eager"),
    )
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result["stages_ms"]) == {
        "processor",
        "prefill",
        "dit_step",
        "chunk",
        "optimized_chunk",
        "optimized_dit_step",
    }
    for stage in result["stages_ms"].values():
        assert 0 < stage["p50"] <= stage["p90"] <= stage["max"]
    assert result["max_abs_action_difference"] <= 1e-5
    assert result["speedup"]["chunk"] > 0 and result["batch_size"] == 2 and result["views"] == 2


@pytest.mark.slow
def test_benchmark_of_the_published_dit_uses_its_real_geometry():
    finished = benchmark(
        *("--model", "published-dit", "--runs", "1", "--warmup", "0", "--action_length", "4"),
        *("--prompt_length", "16"),
    )
    assert finished.returncode == 0, finished.stderr
    result = json.loads(finished.stdout)
    assert (result["prompt_length"], result["action_length"], result["num_steps"]) == (16, 4, 5)
    assert set(result["stages_ms"]) == {"dit_step", "chunk"}


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ("--model", "published-dit", "--cuda_graphs"),
            "--cuda_graphs needs a CUDA device, got --device cpu",
        ),
        (("--model", "published-dit", "--runs", "0"), "--runs must be >= 1, got 0"),
        (("--model", "published-dit", "--dtype", "int8"), "argument --dtype: invalid choice"),
    ],
)
def test_benchmark_refuses_bad_arguments_with_status_2(arguments, message):
    finished = benchmark(*arguments, timeout=120)
    assert finished.returncode == 2
    assert message in finished.stderr


def test_the_server_refuses_cuda_graphs_off_cuda():
    finished = subprocess.run(
        [
            str(Path(sys.executable).with_name("xr0-serve")),
            "--model",
            TINY_CHECKPOINT,
            "--device",
            "cpu",
            "--cuda_graphs",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=120,
    )
    assert finished.returncode == 2
    assert "--cuda_graphs needs a CUDA device; the policy would run on cpu" in finished.stderr
