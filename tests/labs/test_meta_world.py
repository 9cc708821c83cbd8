"""Meta-World as the robot type `metaworld`: the observation and its names, seeded configurations, the experts'
demonstrations through the training reader, goal jumps, sync execution holding still, and `xr0-eval-metaworld`
on the shipped checkpoint from a subprocess."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from xr0 import REPO_ROOT
from xr0.meta_world import evaluate
from xr0.meta_world.env import (  # first: it chooses the headless OpenGL (EGL) before mujoco is imported
    ACTION_NAMES,
    CHUNK_LENGTH,
    MT10,
    ROBOT_SPEC,
    STATE_NAMES,
    MetaWorldTask,
    configuration_seed,
    resolve_tasks,
)

pytest.importorskip("metaworld", reason="Meta-World is installed by scripts/test.sh (pip install metaworld)")

FIXTURE = REPO_ROOT / "fixtures" / "metaworld" / "mt10"


@pytest.fixture(scope="module")
def reach():
    world = MetaWorldTask("reach-v3")
    yield world
    world.close()


def test_the_robot_type_names_every_dim_and_registers():
    from xr0.processing_xr0 import XR0Processor

    assert len(STATE_NAMES) == len(set(STATE_NAMES)) == 39 and len(ACTION_NAMES) == 4
    assert STATE_NAMES[:4] == ["hand_x", "hand_y", "hand_z", "gripper_opening"]
    assert STATE_NAMES[18] == "previous_hand_x" and STATE_NAMES[36:] == ["goal_x", "goal_y", "goal_z"]
    processor = XR0Processor.from_pretrained(REPO_ROOT, action_length=CHUNK_LENGTH, state_dim=39)
    spec = processor.register_robot_type("metaworld", **ROBOT_SPEC)
    assert spec.state_names == tuple(STATE_NAMES) and spec.chunk_length == CHUNK_LENGTH
    assert [key for key, _ in spec.views] == ["corner", "gripperPOV"]
    with pytest.raises(ValueError, match="state_names"):
        processor.register_robot_type("other", state_names=["x"] * 40)  # wider than the state


def test_observations_hold_the_39_values_and_two_upright_views(reach):
    request = reach.reset(configuration_seed(1, "reach-v3", 0))
    state = request["state"]
    assert state.shape == (39,) and state.dtype == np.float32
    assert np.allclose(state[36:39], reach.env._target_pos)  # the goal is visible (not MT1's hidden goal)
    assert np.allclose(state[0:3], reach.env.get_endeff_pos(), atol=1e-6)
    for key in ("corner", "gripperPOV"):
        assert request["images"][key].shape == (128, 128, 3) and request["images"][key].dtype == np.uint8
    reach.renderer.update_scene(reach.env.data, camera="corner")
    assert np.array_equal(request["images"]["corner"], reach.renderer.render()[::-1])  # flipped upright
    assert request["instruction"] == MT10["reach-v3"] and request["robot_type"] == "metaworld"
    with pytest.raises(ValueError, match="4 finite numbers"):
        reach.step([np.nan, 0, 0, 0])


def test_configurations_are_a_function_of_the_seed(reach):
    first = reach.reset(configuration_seed(3, "reach-v3", 5))["state"]
    again = reach.reset(configuration_seed(3, "reach-v3", 5))["state"]
    other = reach.reset(configuration_seed(4, "reach-v3", 5))["state"]
    assert np.array_equal(first, again) and not np.allclose(first[36:], other[36:])
    seeds = {configuration_seed(0, task, i) for task in MT10 for i in range(50)}
    assert not seeds & {configuration_seed(1, task, i) for task in MT10 for i in range(50)}
    assert resolve_tasks(["mt10"]) == list(MT10) and resolve_tasks(["push", "push-v3"]) == ["push-v3"]
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        resolve_tasks(["fly"])


@pytest.mark.slow
def test_demonstrations_read_back_through_the_training_reader(tmp_path):
    from xr0.meta_world.record import record
    from xr0.training.data import open_dataset

    summary = record(tmp_path / "data", ["reach-v3"], episodes=1, seed=5, hold_steps=2)
    dataset = open_dataset(tmp_path / "data", CHUNK_LENGTH)
    assert summary["tasks"]["reach-v3"]["expert_failures"] == 0 and len(dataset) == summary["frames"]
    world = MetaWorldTask("reach-v3")
    try:
        request = world.reset(configuration_seed(5, "reach-v3", 0))
        sample = dataset[0]
        assert np.allclose(sample["state"], request["state"]) and sample["instruction"] == MT10["reach-v3"]
        assert np.array_equal(sample["images"]["corner"], request["images"]["corner"])
        assert np.allclose(sample["actions"][0], world.expert_action(), atol=1e-6)
    finally:
        world.close()
    info = json.loads((tmp_path / "data" / "meta" / "info.json").read_text())
    assert info["features"]["observation.state"]["shape"] == [39] and info["robot_type"] == "metaworld"


@pytest.mark.slow
def test_failed_tries_are_replaced_until_each_task_has_its_demonstrations(tmp_path, monkeypatch, capsys):
    """A try the expert does not finish is left out and the next configuration is tried, up to 2·N + 10 tries;
    a task that never gets N says so in the summary and on stderr."""
    from xr0.meta_world import record as recorder

    tried = []
    real = recorder.demonstrate

    def first_fails(world, configuration, *args):
        tried.append(configuration)
        return None if len(tried) == 1 else real(world, configuration, *args)

    monkeypatch.setattr(recorder, "demonstrate", first_fails)
    summary = recorder.record(tmp_path / "data", ["reach-v3"], episodes=1, seed=5, hold_steps=2)
    assert summary["tasks"]["reach-v3"] | {"mean_length": None} == {
        "instruction": MT10["reach-v3"], "episodes": 1, "tries": 2, "expert_failures": 1, "mean_length": None,
    }  # fmt: skip
    assert tried == [configuration_seed(5, "reach-v3", 0), configuration_seed(5, "reach-v3", 1)]

    monkeypatch.setattr(recorder, "demonstrate", lambda *args: None)
    with pytest.raises(ValueError, match="no episodes"):  # nothing to train on: no dataset
        recorder.record(tmp_path / "none", ["reach-v3"], episodes=1, seed=5, hold_steps=2)
    assert recorder.max_tries(1) == 12
    assert "reach-v3: 0 of 1 demonstrations, the expert failed 12 of 12 tries" in capsys.readouterr().err


def test_a_goal_jump_moves_the_goal_and_only_success_after_it_counts(reach):
    configuration = configuration_seed(1, "reach-v3", 2)
    straight = evaluate.run_episode(reach, configuration, 250, evaluate.expert_loop(reach))
    jump = evaluate.GoalJump(10, 10)
    tick, new_goal = jump.plan(reach, configuration)
    seen = []
    jumped = evaluate.run_episode(
        reach,
        configuration,
        250,
        evaluate.expert_loop(reach),
        jump,
        on_step=lambda w: seen.append(w.state[36:].copy()),
    )
    assert straight["success"] and jumped["success"] and tick == 10
    assert np.allclose(seen[tick], new_goal) and not np.allclose(seen[tick - 1], new_goal)
    assert jumped["steps"] == tick + jumped["steps_after_jump"] and jumped["steps_after_jump"] > 0
    assert np.linalg.norm(reach.state[:3] - new_goal) < 0.05  # it reached the new goal, not the first one


class ConstantPolicy:
    """Every chunk moves the hand +x and closes the gripper: what holding still must interrupt."""

    class processor:
        @staticmethod
        def chunk_length(robot_type):
            return CHUNK_LENGTH

    def infer(self, observation):
        return {"actions": np.tile(np.array([1.0, 0.0, 0.0, 1.0], np.float32), (CHUNK_LENGTH, 1))}


def test_sync_execution_holds_the_arm_still_and_keeps_the_grip_while_it_waits(reach, monkeypatch):
    sent = []
    step = reach.step
    monkeypatch.setattr(reach, "step", lambda action: sent.append(np.asarray(action)) or step(action))
    metrics = {}
    evaluate.run_episode(
        reach,
        configuration_seed(1, "reach-v3", 3),
        40,
        evaluate.policy_loop(reach, ConstantPolicy(), 0, "sync", 0.1, 8, 8, 40, metrics),
    )
    # 8 actions, then the rest of the 100 ms (8 ticks at 80 Hz) from the request after the 8th action: 7 ticks of
    # no motion with the gripper still closed, and again.
    assert [round(a[0]) for a in sent[:23]] == [1] * 8 + [0] * 7 + [1] * 8
    assert all(a[3] == 1.0 for a in sent) and metrics["idle_ticks"] >= 14


def eval_cli(*arguments):
    return subprocess.run(
        [sys.executable, "-m", "xr0.meta_world.evaluate", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_shipped_checkpoint_is_small_and_says_how_it_was_trained():
    from xr0.configuration_xr0 import XR0Config

    assert (FIXTURE / "model.safetensors").stat().st_size <= 25e6
    recorded = json.loads((FIXTURE / "metaworld.json").read_text())
    assert recorded["training"]["recipe"] == "async" and recorded["training_minutes"] <= 60
    assert sorted(recorded["dataset"]["tasks"]) == sorted(MT10) and recorded["dataset"]["seed"] == 0
    config = XR0Config.from_pretrained(FIXTURE)
    assert config.state_dim == 39 and config.action_attention_window == 4


@pytest.mark.slow
def test_the_evaluation_command_scores_policy_and_expert_and_resumes(tmp_path):
    results = tmp_path / "results.json"
    arguments = ["--model", FIXTURE, "--tasks", "reach", "--episodes", 1, "--results_file", results]
    completed = eval_cli(*arguments, "--video", "all", "--video_dir", tmp_path / "videos")
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = [json.loads(line) for line in completed.stdout.strip().splitlines()]
    assert [line["task"] for line in lines] == ["reach-v3", "all"]
    overall = lines[-1]
    assert overall["episodes"] == 1 and overall["expert_success_rate"] == 1.0
    assert overall["prefix_mode"] == "trained" and overall["seam_jump"] is not None  # trained with prefixes
    assert 0 <= overall["success_ci95"][0] <= overall["success_rate"] <= overall["success_ci95"][1] <= 1
    assert (tmp_path / "videos" / "reach-v3-000.mp4").stat().st_size > 0
    again = eval_cli(*arguments)  # everything is in the results file already: nothing is run again
    assert (
        again.returncode == 0
        and json.loads(again.stdout.strip().splitlines()[-1])["episodes_per_minute"] == 0
    )
    refused = eval_cli(*arguments[:-1], tmp_path / "other.json", "--seed", 0)
    assert refused.returncode == 2 and "recorded this checkpoint's demonstrations" in refused.stderr
    mismatch = eval_cli(*arguments, "--mode", "sync")
    assert mismatch.returncode == 2 and "recorded by another run" in mismatch.stderr
    mismatch = eval_cli(*arguments, "--prefix_mode", "guided")
    assert mismatch.returncode == 2 and "recorded by another run" in mismatch.stderr
    refused = eval_cli(*arguments, "--mode", "sync", "--prefix_mode", "trained")
    assert refused.returncode == 2 and "needs --mode async" in refused.stderr


def scored(success, steps, expert_success, expert_steps, idle_ticks=0, seam_jump=None, jump=None):
    """One episode record as `evaluate` writes it; `jump` = (tick, policy steps after, expert steps after)."""
    tick, after, expert_after = jump or (None, None, None)
    return {
        "success": success, "steps": steps, "expert_success": expert_success, "expert_steps": expert_steps,
        "idle_ticks": idle_ticks, "seam_jump": seam_jump, "jump_tick": tick, "steps_after_jump": after,
        "expert_steps_after_jump": expert_after,
    }  # fmt: skip


def test_each_mean_of_a_task_line_is_over_its_own_episodes():
    """The policy's mean steps are over the episodes the policy solved, the expert's over those the expert solved
    (the same configurations, but not the same episodes succeed), the idle ticks over every episode, the seam jump
    over the episodes that had a seam. Hand-computed: policy solved #0 (100) and #2 (120): 110; the expert solved
    #0 (50) and #1 (70): 60, not (50 + 250) / 2 = 150 over the policy's successes; idle (0 + 4 + 2) / 3 = 2; seams
    (0.1 + 0.3) / 2 = 0.2."""
    episodes = [
        scored(True, 100, True, 50, idle_ticks=0, seam_jump=0.1),
        scored(False, 250, True, 70, idle_ticks=4, seam_jump=0.3),
        scored(True, 120, False, 250, idle_ticks=2),
    ]
    line = evaluate.task_line("reach-v3", episodes)
    assert line["success_rate"] == pytest.approx(2 / 3) and line["expert_success_rate"] == pytest.approx(
        2 / 3
    )
    assert line["mean_steps_to_success"] == pytest.approx(110.0)
    assert line["expert_mean_steps_to_success"] == pytest.approx(60.0)
    assert line["idle_ticks_per_episode"] == pytest.approx(2.0) and line["seam_jump"] == pytest.approx(0.2)
    assert "mean_steps_after_jump" not in line  # no jump in these episodes
    nobody = evaluate.task_line("reach-v3", [scored(False, 250, False, 250)])
    assert nobody["mean_steps_to_success"] is None and nobody["expert_mean_steps_to_success"] is None


def test_the_steps_after_a_jump_are_each_of_their_own_successes():
    """Goal jumps: the policy's steps after the jump are averaged over the episodes the policy solved after it
    (40, 35: 37.5), the expert's over those the expert solved (25, 30: 27.5)."""
    episodes = [
        scored(True, 60, True, 45, jump=(20, 40, 25)),
        scored(False, 250, True, 52, jump=(22, None, 30)),
        scored(True, 56, False, 250, jump=(21, 35, None)),
    ]
    line = evaluate.task_line("push-v3", episodes)
    assert line["mean_steps_after_jump"] == pytest.approx(37.5)
    assert line["expert_mean_steps_after_jump"] == pytest.approx(27.5)


def test_a_run_reports_its_own_episodes_of_a_results_file_that_holds_more(tmp_path):
    """`evaluate` resuming a results file that holds 3 episodes of reach and 1 of push, asked for 2 episodes of
    reach: everything it needs is recorded (nothing runs), and its lines are over reach's episodes 0 and 1 only:
    success 1 of 2, mean steps 80, expert mean steps (40 + 60) / 2 = 50; the push episode and reach's episode 2
    (a success in 10 steps) count nowhere."""
    from xr0_client.evaluation import ResultsFile

    def record(task, episode, success, steps, expert_steps):
        return {"suite": "metaworld", "task": task, "episode": episode, "seed": episode,
                **scored(success, steps, True, expert_steps, idle_ticks=episode)}  # fmt: skip

    results = ResultsFile(tmp_path / "results.json", {"run": 1})
    for entry in [
        record("reach-v3", 0, True, 80, 40),
        record("reach-v3", 1, False, 250, 60),
        record("reach-v3", 2, True, 10, 10),
        record("push-v3", 0, True, 5, 5),
    ]:
        results.add(entry)

    class RecordedOnly(ConstantPolicy):
        class model:
            class config:
                action_prefix_probability = 0.5

        def infer(self, observation):
            raise AssertionError("every episode is in the results file: nothing may run")

    reach_line, overall = evaluate.evaluate(RecordedOnly(), ["reach-v3"], 2, results=results)
    for line in (reach_line, overall):
        assert (line["episodes"], line["successes"]) == (2, 1)
        assert line["mean_steps_to_success"] == pytest.approx(80.0)
        assert line["expert_mean_steps_to_success"] == pytest.approx(50.0)
        assert line["idle_ticks_per_episode"] == pytest.approx(0.5)
    assert overall["task"] == "all" and overall["tasks"] == 1


@pytest.mark.slow
def test_the_training_command_records_then_trains_in_one_run(tmp_path):
    """`python -m xr0.meta_world.train` as documented, shortened (one task, one demonstration, two steps): it records,
    then trains in the same command and exits 0. Training imports triton with torch, which crashes a process that
    has made MuJoCo's EGL context (segmentation fault), so the recording must not run in the training's process."""
    work = tmp_path / "work"
    completed = subprocess.run(
        [sys.executable, "-m", "xr0.meta_world.train", "--work_dir", str(work), "--tasks", "reach",
         "--episodes", "1", "--steps", "2", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    summary = json.loads((work / "mt10" / "metaworld.json").read_text())
    assert summary["steps"] == 2 and list(summary["dataset"]["tasks"]) == ["reach-v3"]
