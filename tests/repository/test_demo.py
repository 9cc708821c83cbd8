"""The demo (xr0-demo): its figure of the inputs and the chunk, its timings, its command line."""

import logging
import re
import statistics

import numpy as np
import pytest
import torch
from test_processing import image
from transformers import AutoModel, AutoProcessor

from xr0 import REPO_ROOT
from xr0.scripts import demo

TINY_CHECKPOINT = REPO_ROOT / "fixtures" / "tiny-xr0"


@pytest.fixture(autouse=True)
def root_logging_restored():
    """demo.main configures the root logger as a command line does (basicConfig(force=True)), onto this test's
    captured stderr, which closes after the test: later tests' log records must not go there."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def tiny():
    model = AutoModel.from_pretrained(TINY_CHECKPOINT, trust_remote_code=True, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(TINY_CHECKPOINT, trust_remote_code=True)


def data_x_extent(axes, patch) -> tuple:
    """(x min, x max) of a patch in data coordinates, whatever the patch type."""
    display = patch.get_transform().transform(patch.get_path().vertices)
    x = axes.transData.inverted().transform(display)[:, 0]
    return float(x.min()), float(x.max())


def test_the_figure_shows_the_views_the_instruction_and_each_named_dim(tmp_path, tiny):
    _, processor = tiny
    actions = np.random.default_rng(0).normal(size=(10, 7)).astype(np.float32)
    labels = processor.robot_spec("libero_all").action_labels(7)
    views = {"base (Base view)": image(0), "wrist_left (Left-Wrist view)": image(1, (128, 96))}
    figure = demo.plot_chunk(actions, labels, views, "Put the bowl on the plate.", 4, "XR0 action chunk")

    assert "Put the bowl on the plate." in figure.get_suptitle()
    view_axes, dim_axes = figure.axes[:2], figure.axes[2:]
    assert [axes.get_title() for axes in view_axes] == list(views)
    assert [axes.images[0].get_array().shape for axes in view_axes] == [(224, 224, 3), (128, 96, 3)]
    assert [axes.get_title() for axes in dim_axes] == [
        "Δx",
        "Δy",
        "Δz",
        "Δrot x",
        "Δrot y",
        "Δrot z",
        "gripper",
    ]
    assert [axes.get_ylabel() for axes in dim_axes] == ["1 = 5 cm"] * 3 + ["1 = 0.5 rad"] * 3 + [
        "-1 open, +1 close"
    ]
    for dim, axes in enumerate(dim_axes):
        (line,) = axes.lines
        assert np.allclose(line.get_xdata(), np.arange(10)) and np.allclose(line.get_ydata(), actions[:, dim])
        (shade,) = axes.patches
        assert data_x_extent(axes, shade) == pytest.approx((-0.5, 3.5))  # steps 0..3 executed
    assert dim_axes[0].get_legend().get_texts()[0].get_text() == "executed (4 of 10)"
    assert {axes.get_xlabel() for axes in dim_axes[3:]} == {"step"}  # the bottom of each column

    path = tmp_path / "chunk.png"
    figure.savefig(path, dpi=100)
    from PIL import Image

    with Image.open(path) as saved:
        assert saved.size == (1280, 800)


def test_unnamed_dims_are_labelled_dim_i(tiny):
    _, processor = tiny
    labels = processor.robot_spec("agibot_pt_v3").action_labels(2)
    figure = demo.plot_chunk(np.zeros((30, 2)), labels, {"head": image(0)}, "wave", 30, "t")
    assert [axes.get_title() for axes in figure.axes[1:]] == ["dim 0", "dim 1"]
    assert [axes.get_ylabel() for axes in figure.axes[1:]] == ["", ""]


def test_timings_are_per_stage_over_the_timed_runs_only(tiny):
    model, processor = tiny
    observation = dict(
        images={"base": image(0), "wrist_left": image(1)},
        instruction="Pick up the bowl.",
        state=np.zeros(8),
        robot_type="libero_all",
    )
    decoded, prompt_length, stages = demo.measure(
        model, processor, observation, torch.device("cpu"), seed=0, runs=3, warmup_runs=2
    )
    assert decoded.shape == (10, 7) and np.isfinite(decoded).all() and prompt_length > 98
    dit_steps = [f"DiT step {k}" for k in range(model.config.num_inference_steps)]
    assert list(stages) == ["processor", "VLM prefill", *dit_steps, "total"]
    assert all(len(seconds) == 3 and min(seconds) > 0 for seconds in stages.values())  # warm-up runs left out
    for run in range(3):  # the stages are parts of each run's total
        assert sum(stages[stage][run] for stage in stages if stage != "total") <= stages["total"][run]
    # Same seed, same chunk: the runs timed the same work.
    again, _, _ = demo.measure(
        model, processor, observation, torch.device("cpu"), seed=0, runs=1, warmup_runs=0
    )
    assert np.allclose(again, decoded, atol=1e-6)
    assert not model.action_projector._forward_pre_hooks and not model.action_output_layer._forward_hooks


def test_the_printed_timing_is_the_median_of_the_runs(tiny, capsys, tmp_path, monkeypatch):
    recorded = {}
    real_measure = demo.measure

    def measure(*args, **kwargs):
        recorded["result"] = real_measure(*args, **kwargs)
        return recorded["result"]

    monkeypatch.setattr(demo, "measure", measure)
    demo.main(
        ["--runs", "3", "--warmup_runs", "0", "--execute_steps", "4", "--plot", str(tmp_path / "p.png")]
    )
    out = capsys.readouterr().out
    _, _, stages = recorded["result"]
    line = next(row for row in out.splitlines() if row.strip().startswith("VLM prefill"))
    assert float(line.split()[2]) == pytest.approx(statistics.median(stages["VLM prefill"]) * 1e3, abs=0.01)
    assert "median of 3 runs after 0 warm-up" in out and (tmp_path / "p.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--runs", "0"], "--runs must be >= 1"),
        (["--image", "base"], "--image: expected VIEW=PATH, got 'base'"),
        (["--image", "top=x.png"], "--image: view 'top' is not one of this robot type's views"),
        (["--execute_steps", "11"], r"--execute_steps must be in \[1, 10\]"),
    ],
)
def test_bad_flags_are_refused_by_name(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        demo.main([*argv, "--plot", str(tmp_path / "p.png")])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "p.png").exists()
