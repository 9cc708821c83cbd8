"""PlanarReach: the world, the expert, the LeRobot writer, the synchronous executor and the closed-loop evaluation
of the shipped checkpoints."""

import json
import subprocess
import sys

import numpy as np
import pytest

from xr0 import REPO_ROOT
from xr0.planar_reach.env import PlanarReachEnv, ReachSettings, ScriptedExpert, layout_seed
from xr0_client.realtime import FakeClock, RealtimeExecutor, SimulatedRunner, default_commit_steps

FIXTURES = REPO_ROOT / "fixtures" / "planar-reach"


def test_layouts_are_deterministic_per_seed_and_differ_between_seeds():
    first, second = PlanarReachEnv(), PlanarReachEnv()
    a, b = first.reset(7), second.reset(7)
    assert a["instruction"] == b["instruction"]
    assert np.array_equal(a["images"]["top"], b["images"]["top"])
    assert np.allclose(first.targets, second.targets)
    other = PlanarReachEnv()
    other.reset(8)
    assert not np.allclose(other.targets, first.targets)
    assert layout_seed(0, 3) != layout_seed(1, 3)
    assert a["images"]["top"].shape == a["images"]["wrist"].shape == (128, 128, 3)
    assert a["instruction"].startswith("reach the ") and a["state"].shape == (6,)


def test_each_observation_tier_says_what_the_state_holds_and_what_the_images_show():
    """goal_state: the named target's current position is in the state, and follows it when it moves; images:
    one target, the state has no goal; images_named: three targets, no goal in the state."""
    env = PlanarReachEnv(ReachSettings(target_speed=0.5))
    env.reset(3)
    for _ in range(10):
        env.step([0.0, 0.0])
    assert np.allclose(env.state[4:], env.targets[env.goal]) and len(env.targets) == 3
    for tier, targets in (("images", 1), ("images_named", 3)):
        env = PlanarReachEnv(ReachSettings(observation=tier))
        request = env.reset(3)
        assert request["state"].shape == (4,) and len(env.targets) == targets, tier
    with pytest.raises(ValueError, match="observation must be one of"):
        ReachSettings(observation="depth")


def test_a_jump_teleports_the_named_target_once_and_only_success_after_it_counts():
    env = PlanarReachEnv(ReachSettings(jump_at=(5, 9)))
    env.reset(11)
    assert 5 <= env.jump_tick <= 9
    env.targets[env.goal] = env.effector.copy()  # standing on the target before the jump is no success
    before = env.goal_position
    while env.steps < env.jump_tick - 1:
        env.step([0.0, 0.0])
        assert not env.success and not env.jumped
    env.step([0.0, 0.0])
    assert env.jumped and not env.success and not np.allclose(env.goal_position, before)
    assert np.linalg.norm(env.goal_position - env.effector) > 0.4
    assert np.allclose(env.state[4:], env.jumped_to)  # the state shows where the target went
    expert = ScriptedExpert(env)
    while not env.done:
        env.step(expert.act())
    assert env.success
    again = PlanarReachEnv(ReachSettings(jump_at=(5, 9)))
    again.reset(11)
    assert again.jump_tick == env.jump_tick  # a function of the layout seed
    with pytest.raises(ValueError, match="jump_at"):
        ReachSettings(jump_at=(0, 5))


def test_reaction_is_the_first_executed_velocity_within_30_degrees_of_the_new_target():
    from xr0.planar_reach.evaluate import aims_at

    assert aims_at(np.array([1.0, 0.5]), np.array([1.0, 0.0]))  # 26.6°
    assert not aims_at(np.array([1.0, 0.7]), np.array([1.0, 0.0]))  # 35°
    assert not aims_at(np.zeros(2), np.array([1.0, 0.0]))  # standing still aims nowhere


def test_speed_limit_bounds_and_refused_actions():
    env = PlanarReachEnv(ReachSettings(target_speed=0.5))
    env.reset(0)
    for _ in range(200):
        env.step([50.0, -50.0])
    assert np.linalg.norm(env.velocity) == pytest.approx(env.settings.max_speed)
    assert np.abs(env.effector).max() <= 1.0
    assert np.abs(env.targets).max() <= env.TARGET_BOUND
    with pytest.raises(ValueError, match="2 finite numbers"):
        env.step([np.nan, 0.0])
    with pytest.raises(ValueError, match="2 finite numbers"):
        env.step([1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="num_targets"):
        ReachSettings(num_targets=9)


@pytest.mark.parametrize("speed", [0.0, 0.2])
def test_the_scripted_expert_solves_the_task(speed):
    env = PlanarReachEnv(ReachSettings(target_speed=speed))
    for episode in range(20):
        env.reset(layout_seed(5, episode))
        expert = ScriptedExpert(env)
        while not env.done:
            env.step(expert.act())
        assert env.success, episode


def test_recorded_demonstrations_read_back_through_the_training_reader(tmp_path):
    from xr0.planar_reach.record import record
    from xr0.training.data import open_dataset

    summary = record(tmp_path / "data", episodes=3, seed=4, hold_steps=2)
    dataset = open_dataset(tmp_path / "data", 30)
    assert len(dataset) == summary["frames"] and summary["expert_failures"] == 0
    assert summary["observation"] == "goal_state" and dataset.states.shape[1] == 6
    assert sorted(dataset.cameras) == ["top", "wrist"]
    # Frame 0 of episode 0 is the observation of the reset layout, stored losslessly.
    env = PlanarReachEnv()
    env.reset(layout_seed(4, 0))
    sample = dataset[0]
    assert np.array_equal(sample["images"]["wrist"], env.render_wrist())
    assert sample["instruction"] == env.instruction
    assert np.allclose(sample["state"], env.state)
    expert_action = ScriptedExpert(env).act()
    assert np.allclose(sample["actions"][0], expert_action, atol=1e-6)
    info = json.loads((tmp_path / "data" / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "planar_reach"
    stats = json.loads((tmp_path / "data" / "meta" / "stats.json").read_text())
    assert np.allclose(stats["action"]["mean"], dataset.actions.mean(0), atol=1e-5)


def test_action_noise_perturbs_what_is_executed_and_records_the_command(tmp_path):
    """Without noise the state's velocity is the previous action (the shortcut a policy can copy); with it the
    velocity is the perturbed command, and every recorded action is still the expert's command at its state."""
    from xr0.planar_reach.record import record
    from xr0.training.data import open_dataset

    env = PlanarReachEnv()
    env.reset(layout_seed(4, 0))
    expert, goal, limit = ScriptedExpert(env), env.goal_position, env.settings.max_speed
    for noise in (0.0, 0.3):
        folder = tmp_path / f"data-{noise}"
        summary = record(folder, episodes=1, seed=4, moving_fraction=0.0, hold_steps=2, action_noise=noise)
        assert summary["action_noise"] == noise and summary["expert_failures"] == 0
        dataset = open_dataset(folder, 30)
        positions, velocities, actions = dataset.states[:, :2], dataset.states[:, 2:4], dataset.actions
        commands = expert.gain * (goal - positions)  # a static target: the expert's latency does not matter
        speeds = np.linalg.norm(commands, axis=1, keepdims=True)
        assert np.allclose(actions, commands * np.minimum(1.0, limit / speeds), atol=1e-5)
        gap = np.abs(velocities[1:] - actions[:-1]).max()  # executed velocity at t+1 vs command at t
        assert gap < 1e-6 if noise == 0 else 0.1 < gap < 5 * noise
    with pytest.raises(ValueError, match="action_noise"):
        record(tmp_path / "bad", episodes=1, action_noise=float("nan"))


def test_training_refuses_a_dataset_recorded_with_other_noise(tmp_path, capsys):
    from xr0.planar_reach import train
    from xr0.planar_reach.record import record

    record(tmp_path / "data", episodes=1, seed=4, hold_steps=2)
    with pytest.raises(SystemExit) as refused:
        train.main(["--work_dir", str(tmp_path), "--action_noise", "0.3"])
    assert refused.value.code == 2
    assert "was recorded with --action_noise 0.0, not 0.3" in capsys.readouterr().err
    assert not (tmp_path / "base").exists()  # refused before anything was written
    with pytest.raises(SystemExit) as refused:
        train.main(["--work_dir", str(tmp_path), "--observation", "images"])
    assert refused.value.code == 2
    assert "was recorded with --observation goal_state, not images" in capsys.readouterr().err


def test_the_writer_refuses_what_it_cannot_store(tmp_path):
    from xr0.training.lerobot_writer import LeRobotWriter

    writer = LeRobotWriter(tmp_path / "d", 30, "arm", 4, 2, {"top": (96, 96)})
    image = np.zeros((96, 96, 3), np.uint8)
    with pytest.raises(ValueError, match=r"states .* must be"):
        writer.add_episode(np.zeros((2, 3)), np.zeros((2, 2)), {"top": [image] * 2}, "t")
    with pytest.raises(ValueError, match="finite"):
        writer.add_episode(np.full((2, 4), np.inf), np.zeros((2, 2)), {"top": [image] * 2}, "t")
    with pytest.raises(ValueError, match=r"images\['top'\]"):
        writer.add_episode(np.zeros((2, 4)), np.zeros((2, 2)), {"top": [image[:50]] * 2}, "t")
    with pytest.raises(ValueError, match="no episodes"):
        writer.finish()


def run_synchronous(latency_s: float, ticks: int, until=None):
    clock = FakeClock()
    sent = []
    chunks = iter(np.arange(1, 100))

    def source(observation, prefix):
        assert prefix is None  # a synchronous robot commits nothing
        return np.full((6, 1), float(next(chunks)))

    executor = RealtimeExecutor(
        SimulatedRunner(source, clock, latency=lambda _: latency_s),
        lambda: {},
        sent.append,
        clock=clock,
        execute_steps=4,
        safe_action="zero",
        synchronous=True,
    )
    return executor.run(ticks, until=until), [float(a[0]) for a in sent]


def test_synchronous_execution_stops_the_arm_while_it_waits():
    metrics, sent = run_synchronous(latency_s=2.5 / 30, ticks=14)
    # Chunk 1 runs ticks 0-3 and chunk 2 is requested at tick 3 with 2.5 ticks of latency: usable at tick 6, so
    # ticks 4 and 5 wait (tick 3 had its action).
    assert sent == [1] * 4 + [0] * 2 + [2] * 4 + [0] * 2 + [3] * 2
    assert metrics.idle_ticks == 4 and metrics.late_switches == 0
    metrics, sent = run_synchronous(latency_s=0.0, ticks=12)
    assert sent == [1] * 4 + [2] * 4 + [3] * 4 and metrics.idle_ticks == 0


def test_the_loop_ends_when_told():
    calls = []
    metrics, sent = run_synchronous(0.0, ticks=50, until=lambda: calls.append(1) or len(calls) >= 5)
    assert len(sent) == 5 and metrics.ticks == 5


def test_commit_steps_cover_the_latency_in_ticks():
    assert [default_commit_steps(ms, 30) for ms in (0, 100, 200, 300, 101)] == [1, 3, 6, 9, 4]


def test_the_async_causal_recipe_is_async_with_a_causal_mask():
    from xr0.training.finetune import RECIPES

    rtc, band = RECIPES["async-causal"], RECIPES["async"]
    assert rtc["action_attention_window"] is None and band["action_attention_window"] == 4
    assert {k: v for k, v in rtc.items() if k != "action_attention_window"} == {
        k: v for k, v in band.items() if k != "action_attention_window"
    }


@pytest.mark.parametrize("variant", ["sync", "async-rtc", "async-lambda"])
def test_shipped_checkpoints_are_small_and_say_how_they_were_trained(variant):
    from xr0.configuration_xr0 import XR0Config

    directory = FIXTURES / variant
    assert (directory / "model.safetensors").stat().st_size <= 20e6
    recorded = json.loads((directory / "planar_reach.json").read_text())
    config = XR0Config.from_pretrained(directory)
    expected = {"sync": (4, 0.0), "async-rtc": (None, 0.5), "async-lambda": (4, 0.5)}[variant]
    assert (config.action_attention_window, config.action_prefix_probability) == expected
    assert recorded["training_minutes"] > 0 and recorded["dataset"]["seed"] == 0
    assert recorded["dataset"]["observation"] == "goal_state"
    assert (
        recorded["posttraining"]["recipe"]
        == {"sync": "sync", "async-rtc": "async-causal", "async-lambda": "async"}[variant]
    )


def evaluate_cli(*arguments):
    completed = subprocess.run(
        [sys.executable, "-m", "xr0.planar_reach.evaluate", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return completed


@pytest.mark.parametrize(
    "variant, mode, latency, prefix_mode, expected_prefix_mode",
    [
        ("sync", "sync", 200, None, "none"),
        ("async-lambda", "async", 200, None, "trained"),
        ("async-rtc", "async", 0, None, "trained"),
        ("sync", "async", 200, None, "none"),  # trained without prefixes: blind switching unless told
        ("sync", "async", 100, "guided", "guided"),
    ],
)
@pytest.mark.slow
def test_the_evaluation_command_runs_the_shipped_checkpoints(
    variant, mode, latency, prefix_mode, expected_prefix_mode, tmp_path
):
    completed = evaluate_cli(
        "--model", FIXTURES / variant, "--episodes", 3, "--mode", mode, "--latency_ms", latency,
        "--target_speed", 0.2, "--gif", tmp_path / "episode.gif",
        *(["--prefix_mode", prefix_mode, "--guidance_jacobian", "identity"] if prefix_mode else []),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 3 and result["mode"] == mode and result["latency_ms"] == latency
    assert result["prefix_mode"] == expected_prefix_mode and result["seam_jump"] > 0
    if expected_prefix_mode == "guided":
        assert result["guidance"] == {"jacobian": "identity", "max_weight": 5.0, "mask_schedule": "exp"}
    assert 0 <= result["success_ci95"][0] <= result["success_rate"] <= result["success_ci95"][1] <= 1
    if mode == "sync" and latency > 0:
        assert result["idle_ticks_per_episode"] > 0  # the arm waited for every chunk
    if mode == "async":
        assert result["idle_ticks_per_episode"] == 0 and result["commit_steps"] == max(
            1, latency * 30 // 1000
        )
    assert (tmp_path / "episode.gif").stat().st_size > 0


@pytest.mark.slow
def test_a_prefix_mode_without_async_execution_is_refused():
    completed = evaluate_cli(
        "--model", FIXTURES / "sync", "--episodes", 1, "--mode", "sync", "--prefix_mode", "guided"
    )
    assert completed.returncode == 2 and "needs --mode async" in completed.stderr
    completed = evaluate_cli("--model", FIXTURES / "sync", "--episodes", 1, "--max_guidance_weight", -1)
    assert completed.returncode == 2 and "max_weight" in completed.stderr


def test_evaluating_on_the_training_layouts_or_another_tier_is_refused():
    completed = evaluate_cli("--model", FIXTURES / "sync", "--episodes", 1, "--seed", 0)
    assert completed.returncode == 2 and "recorded this checkpoint's demonstrations" in completed.stderr
    completed = evaluate_cli("--model", FIXTURES / "sync", "--episodes", 1, "--observation", "images")
    assert completed.returncode == 2 and "trained on the goal_state tier" in completed.stderr


@pytest.mark.slow
def test_jump_rows_report_the_reaction(tmp_path):
    completed = evaluate_cli(
        "--model", FIXTURES / "async-lambda", "--episodes", 2, "--latency_ms", 100, "--jump_at", 10, 20,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["jump_at"] == [10, 20] and result["jumped_episodes"] == 2
    assert result["reacted_episodes"] == 2 and result["mean_reaction_ticks"] >= 0  # a working policy turns


class AimingPolicy:
    """Aims every action of its chunk at a point of the layout it is shown (what `aiming` should measure)."""

    def __init__(self, env, where):
        self.env, self.where = env, where

    def infer(self, request):
        state = request["state"]
        assert np.allclose(state[:2], self.env.effector)  # the request is the episode's first observation
        direction = self.where(self.env) - state[:2]
        return {"actions": np.tile(direction, (30, 1))}


def test_aiming_tells_a_policy_that_reads_the_colour_from_one_that_heads_for_the_centroid(monkeypatch):
    from xr0.planar_reach import report

    env = PlanarReachEnv()
    monkeypatch.setattr(report, "PlanarReachEnv", lambda settings: env)
    named = report.aiming(AimingPolicy(env, lambda e: e.goal_position), samples=20, seed=3)
    assert named["named_target"] > 0.999 and named["named_is_best"] == 1.0
    assert named["other_targets"] < 0.9 and named["centroid"] < 0.99
    centroid = report.aiming(AimingPolicy(env, lambda e: e.targets.mean(0)), samples=20, seed=3)
    assert centroid["centroid"] > 0.999 and centroid["named_target"] < 0.99
    assert 0 < centroid["named_is_best"] < 1  # the best-aligned target is then any of the three


def test_the_state_only_reference_heads_for_the_workspace_centre(monkeypatch):
    """The blind reference scores what the start positions give away: well above zero with the named target,
    though it cannot tell the named target from the others."""
    from xr0.planar_reach import report

    env = PlanarReachEnv()
    monkeypatch.setattr(report, "PlanarReachEnv", lambda settings: env)
    blind = report.aiming(report.HeadForTheCentre(), samples=60, seed=3)
    towards_centre = report.aiming(AimingPolicy(env, lambda e: np.zeros(2)), samples=60, seed=3)
    assert blind == pytest.approx(towards_centre)
    assert blind["named_target"] > 0.5 and blind["named_is_best"] < 0.6


class StubPolicy:
    """What `evaluate` reads of a policy besides its chunks: the checkpoint's config, the chunk length."""

    class model:
        class config:
            action_prefix_probability = 0.5

    class processor:
        @staticmethod
        def chunk_length(robot_type):
            return 30


def test_each_statistic_of_an_evaluation_is_over_its_own_episodes(monkeypatch):
    """`evaluate`'s line from three scripted episodes (the episodes themselves replaced): the success rate over all
    3; the mean time to success over the 2 successes ((1.0 + 2.0) / 2 = 1.5 s); idle ticks and chunks per episode
    over all 3 ((0 + 6 + 3) / 3 = 3, (4 + 5 + 6) / 3 = 5); the seam and inner jumps over every recorded delta of
    every episode ((1 + 2 + 3) / 3 = 2, (0.1 + 0.2 + 0.3 + 0.6) / 4 = 0.3), not over episode means; the reaction
    over the episodes that jumped and turned ((4 + 8) / 2 = 6), the ticks after the jump over those that then
    succeeded (10)."""
    from xr0.planar_reach import evaluate as module

    scripted = iter(
        [
            dict(success=True, time_to_success_s=1.0, idle_ticks=0, seam_deltas=[1.0], inner_deltas=[0.1, 0.2],
                 chunks=4, jumped=True, reaction_ticks=4, ticks_after_jump=10),
            dict(success=False, time_to_success_s=None, idle_ticks=6, seam_deltas=[2.0, 3.0], inner_deltas=[0.3],
                 chunks=5, jumped=True, reaction_ticks=None, ticks_after_jump=None),
            dict(success=True, time_to_success_s=2.0, idle_ticks=3, seam_deltas=[], inner_deltas=[0.6],
                 chunks=6, jumped=True, reaction_ticks=8, ticks_after_jump=None),
        ]
    )  # fmt: skip
    monkeypatch.setattr(module, "run_episode", lambda *args: next(scripted))
    line = module.evaluate(StubPolicy(), 3, latency_ms=100, jump_at=(10, 20))
    assert (line["successes"], line["episodes"], line["success_rate"]) == (2, 3, pytest.approx(2 / 3))
    assert line["mean_time_to_success_s"] == pytest.approx(1.5)
    assert line["idle_ticks_per_episode"] == pytest.approx(3.0) and line[
        "chunks_per_episode"
    ] == pytest.approx(5.0)
    assert line["seam_jump"] == pytest.approx(2.0) and line["mean_inner_jump"] == pytest.approx(0.3)
    assert (line["jumped_episodes"], line["reacted_episodes"]) == (3, 2)
    assert line["mean_reaction_ticks"] == pytest.approx(6.0)
    assert line["mean_ticks_to_success_after_jump"] == pytest.approx(10.0)
    assert line["prefix_mode"] == "trained" and line["commit_steps"] == 3  # the checkpoint's default; 100 ms
