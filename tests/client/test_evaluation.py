"""The evaluation bookkeeping every benchmark runner shares (xr0_client.evaluation): intervals, the resumable
results file, progress and videos."""

import json
import logging
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from xr0_client.evaluation import (
    EpisodeVideo,
    Progress,
    ResultsError,
    ResultsFile,
    format_summary,
    wilson_interval,
)

RUN = {"benchmark": "libero", "checkpoint": {"name": "tiny-xr0", "revision": "abc"}, "settings": {"seed": 7}}


def episode(task, index, success, suite="libero_spatial", seed=7):
    return {
        "suite": suite,
        "task": task,
        "episode": index,
        "seed": seed,
        "success": success,
        "instruction": f"t{task}",
    }


def test_wilson_interval():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(200, 200)[1] == 1.0
    assert all(np.isnan(wilson_interval(0, 0)))


def test_results_per_task_and_suite_resume_from_the_file(tmp_path):
    path = tmp_path / "results.json"
    results = ResultsFile(path, RUN)
    for record in [
        episode(0, 0, True),
        episode(0, 1, False),
        episode(1, 0, True),
        episode(0, 0, False, "libero_goal"),
    ]:
        results.add(record)
    saved = json.loads(path.read_text())
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert path.stat().st_mode == plain.stat().st_mode, "the file gets the usual mode, not mkstemp's 0600"
    spatial = saved["suites"]["libero_spatial"]
    assert (spatial["episodes"], spatial["successes"], spatial["success_rate"]) == (
        3,
        2,
        pytest.approx(2 / 3),
    )
    assert spatial["ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    assert spatial["tasks"]["0"]["success_rate"] == 0.5 and spatial["tasks"]["0"]["instruction"] == "t0"
    assert spatial["tasks"]["1"]["ci95"] == pytest.approx(list(wilson_interval(1, 1)))
    assert spatial["seeds"] == [7] and saved["suites"]["libero_goal"]["successes"] == 0
    assert saved["run"] == RUN
    assert "libero_spatial    all     66.7%" in format_summary(results.summary())

    resumed = ResultsFile(path, RUN)
    assert resumed.done("libero_spatial", 0, 1) and not resumed.done("libero_spatial", 0, 2)
    assert resumed.summary() == results.summary()


def test_an_episode_is_done_only_in_the_suite_that_recorded_it(tmp_path):
    """LIBERO's suites (and CALVIN's splits) number their tasks and episodes alike: task 0 episode 1 of
    libero_spatial is another episode than task 0 episode 1 of libero_goal. A run of libero_goal resuming a file
    that holds libero_spatial's must run its own episodes, not skip them."""
    path = tmp_path / "results.json"
    recorded = ResultsFile(path, RUN)
    for index in range(2):
        recorded.add(episode(0, index, True))
    recorded.add(episode(1, 0, False, "libero_goal"))
    resumed = ResultsFile(path, RUN)
    assert resumed.done("libero_spatial", 0, 1) and resumed.done("libero_goal", 1, 0)
    assert not resumed.done("libero_goal", 0, 1) and not resumed.done("libero_spatial", 1, 0)
    assert not resumed.done("libero_spatial", 1, 1) and not resumed.done("libero_spatial", 2, 0)


def test_a_file_of_another_run_is_refused_not_mixed(tmp_path):
    path = tmp_path / "results.json"
    ResultsFile(path, RUN).add(episode(0, 0, True))
    other = {**RUN, "checkpoint": {"name": "tiny-xr0", "revision": "def"}}
    with pytest.raises(ResultsError, match="different checkpoint"):
        ResultsFile(path, other)
    path.write_text("{")
    with pytest.raises(ResultsError, match="not a results file"):
        ResultsFile(path, RUN)


WRITER = """
import sys
from xr0_client.evaluation import ResultsFile
results = ResultsFile(sys.argv[1], {"benchmark": "x"})
print("ready", flush=True)
for i in range(len(results.episodes), 10**6):
    results.add({"suite": "s", "task": 0, "episode": i, "seed": 0, "success": i % 2 == 0, "note": "x" * 2000})
"""


def test_a_killed_run_leaves_a_complete_file(tmp_path):
    """SIGKILL at arbitrary moments of a run that rewrites its file after every episode: what is left always
    parses and only grows."""
    path = tmp_path / "results.json"
    counts = []
    for delay in (0.3, 0.45, 0.6):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        counts.append(len(json.loads(path.read_text())["episodes"]))
    assert counts[0] >= 1 and counts == sorted(counts), counts


def test_progress_without_tqdm_logs_a_line_per_episode(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
    progress = Progress(total=2, done=1)
    with caplog.at_level(logging.INFO, logger="xr0.evaluation"):
        progress.status("step 10/20")
        progress.episode_done("task 0 episode 1: success")
    progress.close()
    assert "[2/2] task 0 episode 1: success" in caplog.text


def test_episode_video_is_a_decodable_mp4(tmp_path):
    av = pytest.importorskip("av")
    video = EpisodeVideo(tmp_path / "episode.mp4", fps=20)
    for step in range(6):
        video.add(np.full((64, 130, 3), 40 * step, np.uint8))
    path = video.finish(keep=True)
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert container.streams.video[0].codec_context.name == "h264"
    assert len(frames) == 6 and frames[0].shape == (64, 130, 3)
    assert abs(float(frames[5].mean()) - 200) < 8  # the last frame's grey level survives the encoding

    dropped = EpisodeVideo(tmp_path / "success.mp4")
    dropped.add(np.zeros((32, 32, 3), np.uint8))
    assert dropped.finish(keep=False) is None and not (tmp_path / "success.mp4").exists()
