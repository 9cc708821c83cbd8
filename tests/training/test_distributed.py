"""Training past one process, executed: torchrun with two gloo processes (one node and two "nodes" on 127.0.0.1)
against one process with the same global batch and seed, its resume, and a rank that dies."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import astuple
from pathlib import Path

import pytest
import torch
import transformers
from robot_datasets import write_conversations
from safetensors.torch import load_file
from tiny import tiny_model

from xr0.recipe_xr0 import sample_training_draws

TORCHRUN = Path(sys.executable).with_name("torchrun")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
ENV.pop(
    "CI", None
)  # transformers' library logger propagates under CI: keep the ranks' output as users see it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def finetune_arguments(checkpoint, dataset, output, per_device_batch: int, *extra) -> list:
    return [
        "--model", str(checkpoint), "--dataset", str(dataset), "--robot_type", "tiny_arm",
        "--output_dir", str(output), "--per_device_train_batch_size", str(per_device_batch),
        "--learning_rate", "2e-3", "--lr_scheduler_type", "constant", "--logging_steps", "1",
        "--report_to", "none", "--seed", "0", "--recipe", "async", "--dataloader_num_workers", "0",
        "--use_cpu", "true", "--save_strategy", "no", *extra,
    ]  # fmt: skip


def run(command: list, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, capture_output=True, text=True, env=ENV, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    return result


def torchrun(arguments: list, nproc: int = 2) -> list:
    return [
        str(TORCHRUN), "--nnodes", "1", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "xr0.training.finetune", *arguments, "--ddp_backend", "gloo",
    ]  # fmt: skip


def one_process(arguments: list) -> list:
    return [sys.executable, "-m", "xr0.training.finetune", *arguments]


def max_relative_difference(a: Path, b: Path) -> float:
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sorted(first) == sorted(second)
    return max(
        float((first[k] - second[k]).abs().max() / second[k].abs().max().clamp(min=1e-12)) for k in first
    )


def test_a_samples_training_draws_depend_on_its_seed_only():
    """The property equality across process layouts needs: a sample draws the same noise, flow time, prefix and
    hidden tokens whatever batch (rank, position) it is in."""
    model = tiny_model()
    actions = torch.zeros(6, 10, model.config.action_dim)  # 3 samples x 2 repeats
    together = sample_training_draws(model.config, actions, 2, sample_seeds=torch.tensor([11, 22, 33]))
    apart = sample_training_draws(model.config, actions[:4], 2, sample_seeds=torch.tensor([33, 11]))
    for whole, part in zip(astuple(together), astuple(apart), strict=True):
        torch.testing.assert_close(part[:2], whole[4:6], atol=0, rtol=0)  # sample 33's two repeats
        torch.testing.assert_close(part[2:4], whole[0:2], atol=0, rtol=0)  # sample 11's
    # Seeds drive the draws (the comparison is not vacuous): another seed, other noise.
    other = sample_training_draws(model.config, actions[:2], 2, sample_seeds=torch.tensor([12]))
    assert not torch.equal(other.noise, together.noise[:2])


@pytest.mark.slow
def test_resuming_inside_an_epoch_under_the_async_recipe_is_exact(tiny_checkpoint, lerobot_dir, tmp_path):
    """An interrupted async run resumed from checkpoint-4 ends where the uninterrupted run ends at step 6."""
    straight = tmp_path / "straight"
    common = ("--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2")
    run(one_process(finetune_arguments(tiny_checkpoint, lerobot_dir, straight, 4, *common)))
    resumed = tmp_path / "resumed"
    checkpoint = straight / "checkpoint-4"
    run(
        one_process(
            finetune_arguments(
                tiny_checkpoint, lerobot_dir, resumed, 4, *common, "--resume_from_checkpoint", str(checkpoint)
            )
        )
    )
    assert max_relative_difference(resumed, straight) < 1e-6
    assert max_relative_difference(checkpoint, straight) > 1e-4  # steps 5-6 changed the weights


@pytest.mark.slow
def test_torchrun_on_one_and_on_two_nodes_equals_one_process(tiny_checkpoint, lerobot_dir, tmp_path):
    """Global batch 4, seed 0, 13 steps, one past the end of the first epoch (the next one reshuffled): one
    process with batches of 4, torchrun with two processes of 2 on one node, `accelerate launch` with two
    processes, and two single-process "nodes" meeting over 127.0.0.1 end with the same weights, so every sample
    of an epoch went to exactly one rank once, and both loss terms are normalized over the global batch; logs and
    the saved directory come from rank 0 alone. Plain SGD, so that the weights show the gradients: AdamW divides
    each update by the root of its running squared gradient, which in the first steps turns float rounding
    (summation order across ranks) into differences of up to 1e-4 of a weight's scale. And no gradient clipping
    (the Trainer clips at norm 1.0 by default): the tiny model's gradients are larger, so clipping would scale
    every step's gradient to norm 1 and hide a loss off by a uniform factor, e.g. ranks normalizing by the global
    count instead of its mean over the ranks (half the gradient with two ranks)."""
    steps = ("--max_steps", "13", "--optim", "sgd", "--max_grad_norm", "0")
    single = tmp_path / "single"
    run(one_process(finetune_arguments(tiny_checkpoint, lerobot_dir, single, 4, *steps)))

    node = tmp_path / "one-node"
    result = run(torchrun(finetune_arguments(tiny_checkpoint, lerobot_dir, node, 2, *steps)))
    assert max_relative_difference(node, single) < 1e-5
    log = result.stdout + result.stderr
    assert log.count("'flow_loss'") == 13, log[-3000:]  # every step logged once: rank 0 logs
    assert float(re.findall(r"'epoch': '?([0-9.]+)", log)[-1]) > 1, "the run crossed an epoch boundary"
    assert log.count("training ") == 1, log[-3000:]  # xr0's own messages: rank 0 only

    # The same two processes through accelerate's launcher. Its --cpu mode starts one process (several need
    # mpirun); its multi-process launcher starts two, which train on the CPU over gloo (--use_cpu, --ddp_backend).
    accelerated = tmp_path / "accelerate"
    launch = [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "xr0.training.finetune",
    ]  # fmt: skip
    arguments = finetune_arguments(
        tiny_checkpoint, lerobot_dir, accelerated, 2, *steps, "--ddp_backend", "gloo"
    )
    result = run([*launch, *arguments])
    assert max_relative_difference(accelerated, single) < 1e-5
    assert (result.stdout + result.stderr).count("'flow_loss'") == 13

    nodes = tmp_path / "two-nodes"
    port = free_port()
    launches = [
        subprocess.Popen(
            [
                str(TORCHRUN),
                "--nnodes",
                "2",
                "--node_rank",
                str(rank),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                "-m",
                "xr0.training.finetune",
                # Each node names its own directory: only the first node's may receive files.
                *finetune_arguments(tiny_checkpoint, lerobot_dir, nodes / f"node{rank}", 2, *steps),
                "--ddp_backend",
                "gloo",
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
            stdin=subprocess.DEVNULL,
        )
        for rank in (0, 1)
    ]
    outputs = [launch.communicate(timeout=600)[0] for launch in launches]
    assert [launch.returncode for launch in launches] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert max_relative_difference(nodes / "node0", single) < 1e-5
    written_by_node1 = sorted(p.name for p in (nodes / "node1").rglob("*") if p.is_file())
    assert written_by_node1 == [], written_by_node1


@pytest.mark.skipif(
    int(transformers.__version__.split(".")[0]) < 5,
    reason="transformers 4.57's Trainer saves a gloo run's optimizer state tagged 'cpu:0' and cannot load it back "
    "(torch.load: 'don't know how to restore data location'): a CPU-only limitation of that line",
)
@pytest.mark.slow
def test_resuming_a_two_process_run_is_exact(tiny_checkpoint, lerobot_dir, tmp_path):
    common = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")
    straight = tmp_path / "straight"
    run(torchrun(finetune_arguments(tiny_checkpoint, lerobot_dir, straight, 2, *common)))
    resumed = tmp_path / "resumed"
    checkpoint = straight / "checkpoint-2"
    resume = ("--resume_from_checkpoint", str(checkpoint))
    run(torchrun(finetune_arguments(tiny_checkpoint, lerobot_dir, resumed, 2, *common, *resume)))
    assert max_relative_difference(resumed, straight) < 1e-6
    assert max_relative_difference(checkpoint, straight) > 1e-4


def worker_environment(pid) -> list:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_run_with_its_rank_named(tiny_checkpoint, lerobot_dir, tmp_path):
    """SIGKILL one worker mid-run: torchrun ends the other and exits non-zero within a bounded time, naming the
    failed rank and the signal, instead of hanging in a collective."""
    launch = subprocess.Popen(
        torchrun(
            finetune_arguments(tiny_checkpoint, lerobot_dir, tmp_path / "run", 2, "--max_steps", "10000")
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        stdin=subprocess.DEVNULL,
    )
    lines = []
    for line in launch.stdout:  # wait until training runs: the first logged step
        lines.append(line)
        if "'flow_loss'" in line:
            break
    workers = subprocess.run(["pgrep", "-P", str(launch.pid)], capture_output=True, text=True).stdout.split()
    victim = next(int(pid) for pid in workers if "RANK=1" in worker_environment(pid))
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    rest, _ = launch.communicate(timeout=120)
    elapsed = time.monotonic() - started
    report = "".join(lines) + rest
    assert launch.returncode != 0 and elapsed < 120
    assert "rank      : 1" in report or "rank: 1" in report, report[-3000:]
    assert "SIGKILL" in report or "Signal 9" in report, report[-3000:]


@pytest.mark.slow
def test_lora_under_torchrun_trains_the_same_adapters_and_expert_as_one_process(
    tiny_checkpoint, lerobot_dir, tmp_path
):
    """LoRA on the VLM and the fully trained action expert (PEFT modules_to_save) are synchronized across the two
    ranks: the merged result equals one process's."""
    steps = ("--max_steps", "2", "--optim", "sgd", "--lora_rank", "4")
    single = tmp_path / "single"
    run(one_process(finetune_arguments(tiny_checkpoint, lerobot_dir, single, 4, *steps)))
    ranks = tmp_path / "ranks"
    run(torchrun(finetune_arguments(tiny_checkpoint, lerobot_dir, ranks, 2, *steps)))
    assert max_relative_difference(ranks, single) < 1e-5
    base = load_file(str(tiny_checkpoint / "model.safetensors"))
    merged = load_file(str(ranks / "model.safetensors"))
    changed = {k.split(".")[0] for k in base if not torch.equal(base[k], merged[k])}
    assert {"vlm", "dit"} <= changed, changed  # the adapters merged into the VLM, and the expert, trained


@pytest.mark.slow
def test_a_rank_with_only_vision_language_samples_does_not_stall_the_others(
    tiny_checkpoint, lerobot_dir, tmp_path
):
    """Co-training with one sample per rank and step: some steps give one rank a vision-language sample and the
    other a robot frame; the first still joins the action loss's all-reduces, so the run neither hangs nor
    fails (a 60 s collective timeout would fail it)."""
    conversations = write_conversations(tmp_path / "vl")
    arguments = ("--max_steps", "6", "--vl_dataset", str(conversations), "--robot_per_vl", "1")
    run(
        torchrun(
            finetune_arguments(
                tiny_checkpoint, lerobot_dir, tmp_path / "run", 1, *arguments, "--ddp_timeout", "60"
            )
        ),
        timeout=300,
    )


def run_fsdp_worker(checkpoint, output, mode: str, nproc: int, *extra) -> str:
    command = [
        str(TORCHRUN), "--nnodes", "1", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(Path(__file__).parents[1] / "fsdp_worker.py"),
        str(checkpoint), str(output), mode, *extra,
    ]  # fmt: skip
    return run(command).stdout


@pytest.mark.skipif(
    int(transformers.__version__.split(".")[0]) < 5,
    reason="FSDP2's sharding is torch's, the same under both transformers lines; one line runs it (CI time)",
)
@pytest.mark.slow
def test_fsdp2_trains_as_the_unsharded_model_saves_full_checkpoints_and_resumes(tiny_checkpoint, tmp_path):
    """FSDP2 (`fully_shard`, one unit per `_no_split_modules` block) over two gloo processes: three SGD steps on
    a global batch of 4 give the weights of the same steps on the plain model in one process; the full state
    dict gathered on rank 0 is a model directory AutoModel loads, with the plain model's actions; resuming from
    the sharded step-2 checkpoint (torch.distributed.checkpoint) ends where the uninterrupted run ends; bf16
    mixed precision trains near the fp32 run."""
    import fsdp_worker
    from transformers import AutoModel

    from xr0.modeling_xr0 import XR0ForActionGeneration

    plain = XR0ForActionGeneration.from_pretrained(tiny_checkpoint).train()
    optimizer = torch.optim.SGD(plain.parameters(), lr=fsdp_worker.LEARNING_RATE)
    batch = fsdp_worker.rank_batch(plain, rank=0, world_size=1)
    for _ in range(fsdp_worker.STEPS):
        optimizer.zero_grad()
        plain(**batch).loss.backward()
        optimizer.step()
    plain.eval().save_pretrained(tmp_path / "plain")

    sharded = tmp_path / "sharded"
    run_fsdp_worker(tiny_checkpoint, sharded, "train", 2)
    assert max_relative_difference(sharded / "final", tmp_path / "plain") < 1e-5
    assert max_relative_difference(sharded / "final", tiny_checkpoint) > 1e-3, "the steps changed the weights"

    loaded = AutoModel.from_pretrained(sharded / "final", trust_remote_code=True).eval()
    assert type(loaded).__module__ != XR0ForActionGeneration.__module__, "loaded through the directory's code"
    inputs = {k: v for k, v in batch.items() if k not in ("actions", "sample_seeds")}
    with torch.no_grad():
        expected = plain(**inputs, seed=0).actions
        actions = loaded(**inputs, seed=0).actions
    torch.testing.assert_close(actions, expected, rtol=0, atol=1e-5)

    run_fsdp_worker(tiny_checkpoint, sharded, "resume", 2)
    assert max_relative_difference(sharded / "resumed", sharded / "final") < 1e-6

    # bf16 compute, fp32 gradient reduction and master weights: near the fp32 run.
    run_fsdp_worker(tiny_checkpoint, tmp_path / "bf16", "train", 2, "--mixed_precision", "bf16")
    moved = max_relative_difference(sharded / "final", tiny_checkpoint)
    assert max_relative_difference(tmp_path / "bf16" / "final", sharded / "final") < 0.2 * moved
    saved = load_file(str(tmp_path / "bf16" / "final" / "model.safetensors"))
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in saved.values())
