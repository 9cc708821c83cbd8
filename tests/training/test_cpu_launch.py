"""A multi-process launch on a machine without a GPU trains one model: torchrun without `--use_cpu` trains
data-parallel on the CPU (said once), and `--use_cpu false` is refused before the first step."""

import subprocess

import pytest
from safetensors.torch import load_file
from test_distributed import ENV, TORCHRUN, finetune_arguments, free_port, one_process, run

from xr0.training.finetune import has_accelerator

pytestmark = pytest.mark.slow  # two torchrun launches of two processes each


def arguments(checkpoint, dataset, output, per_device_batch: int, *extra) -> list:
    """The distributed tests' xr0-finetune arguments as a user on a laptop writes them: without --use_cpu; SGD, no
    clipping, 3 steps."""
    common = finetune_arguments(checkpoint, dataset, output, per_device_batch)
    at = common.index("--use_cpu")
    return [
        *common[:at],
        *common[at + 2 :],
        "--max_steps",
        "3",
        "--optim",
        "sgd",
        "--max_grad_norm",
        "0",
        *extra,
    ]


def relative_update_difference(initial, first, second) -> float:
    """||update of `first` - update of `second`|| / ||update of `second`||, over every trained weight."""
    start, a, b = (load_file(str(d / "model.safetensors")) for d in (initial, first, second))
    difference = sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in b)
    update = sum(float((b[k].float() - start[k].float()).pow(2).sum()) for k in b)
    return (difference / update) ** 0.5


def torchrun(argv: list) -> list:
    return [
        str(TORCHRUN), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "xr0.training.finetune", *argv, "--ddp_backend", "gloo",
    ]  # fmt: skip


def test_torchrun_without_use_cpu_trains_one_model_data_parallel(tiny_checkpoint, lerobot_dir, tmp_path):
    """Two processes of batch 2 end where one process of batch 4 ends (plain SGD, no clipping: a replica per rank
    on the whole data, which the Trainer does without --use_cpu on a CPU machine, differs by ~0.7 of the update)."""
    if has_accelerator():
        pytest.skip("the launch this guards is one on a machine without a GPU")
    single = tmp_path / "single"
    run(one_process(arguments(tiny_checkpoint, lerobot_dir, single, 4)))
    launched = tmp_path / "torchrun"
    result = run(torchrun(arguments(tiny_checkpoint, lerobot_dir, launched, 2)))
    assert relative_update_difference(tiny_checkpoint, launched, single) < 1e-3
    log = result.stdout + result.stderr
    assert log.count("training data-parallel on the CPU (--use_cpu true)") == 1, log[-3000:]
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in log, log[-3000:]


def test_torchrun_with_use_cpu_false_is_refused_before_training(tiny_checkpoint, lerobot_dir, tmp_path):
    if has_accelerator():
        pytest.skip("on a machine with a GPU, --use_cpu false is the ordinary launch")
    output = tmp_path / "refused"
    result = subprocess.run(
        torchrun(arguments(tiny_checkpoint, lerobot_dir, output, 2, "--use_cpu", "false")),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "Pass --use_cpu true" in result.stdout + result.stderr
    assert not (output / "model.safetensors").exists()
