"""XR0 under FSDP2 (`torch.distributed.fsdp.fully_shard`), run by torchrun with gloo processes on the CPU (the
test in training/test_distributed.py starts it with 1 and with 2 processes):

    torchrun --nproc_per_node 2 tests/fsdp_worker.py CHECKPOINT OUTPUT {train,resume} [--mixed_precision bf16]

Each `_no_split_modules` block (the DiT layers, Qwen3-VL's text decoder layers and vision blocks) is a wrap unit,
then the whole model. A global batch of 4 samples (the same on every layout, with per-sample seeds for the
training draws) is split evenly over the ranks; SGD steps; then:
- train:  3 steps, a sharded checkpoint (torch.distributed.checkpoint: model + optimizer) after step 2, and the
          full state dict gathered on rank 0 written as a complete model directory in OUTPUT/final;
- resume: load the step-2 checkpoint of a `train` run in OUTPUT, run step 3, write OUTPUT/resumed.
"""

import argparse
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

sys.path.insert(0, str(Path(__file__).parent))
from tiny import action_mask, observation, row  # noqa: E402

from xr0 import REPO_ROOT  # noqa: E402
from xr0.checkpoint_layout import REMOTE_CODE_FILES  # noqa: E402
from xr0.modeling_xr0 import XR0ForActionGeneration  # noqa: E402

GLOBAL_BATCH = 4
STEPS = 3
CHECKPOINT_STEP = 2
LEARNING_RATE = 0.05


def shard(model: XR0ForActionGeneration, mixed_precision: str) -> XR0ForActionGeneration:
    """One FSDP2 unit per block class the model names as unsplittable, then the root (embeddings, projectors)."""
    policy = MixedPrecisionPolicy()
    if mixed_precision == "bf16":  # compute in bf16, gradients reduced and parameters kept in fp32
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    units = set(model._no_split_modules)
    wrapped = [module for module in model.modules() if type(module).__name__ in units]
    assert {type(module).__name__ for module in wrapped} == units, "every wrap unit class exists in the model"
    for module in wrapped:
        # A text decoder layer's K/V leave it through the cache, not its output: its gradient can arrive when
        # FSDP has not re-gathered the layer (the pre-backward hook watches outputs), so its parameters stay
        # gathered from forward to backward.
        keep = type(module).__name__ == "Qwen3VLTextDecoderLayer"
        fully_shard(module, mp_policy=policy, reshard_after_forward=not keep)
    fully_shard(model, mp_policy=policy)
    return model


def rank_batch(model, rank: int, world_size: int) -> dict:
    """This rank's share of the global batch: rows rank·k .. rank·k + k - 1, k = 4 / world size."""
    batch = observation((5,) * GLOBAL_BATCH, seed=3)  # equal prompt lengths: rows concatenate without padding
    generator = torch.Generator().manual_seed(7)
    actions = torch.randn(
        GLOBAL_BATCH, model.config.action_length, model.config.action_dim, generator=generator
    )
    seeds = torch.arange(GLOBAL_BATCH) + 1000
    share = GLOBAL_BATCH // world_size
    rows = [row(batch, i) for i in range(rank * share, (rank + 1) * share)]
    inputs = {key: torch.cat([r[key] for r in rows]) for key in rows[0]}
    chosen = slice(rank * share, (rank + 1) * share)
    return dict(
        inputs,
        action_mask=action_mask(share, model.config),
        actions=actions[chosen],
        sample_seeds=seeds[chosen],
    )


def save_full(model, checkpoint: Path, output: Path) -> None:
    """The full state dict gathered on rank 0 (collective: every rank calls it), written as a model directory."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    if dist.get_rank() == 0:
        full = XR0ForActionGeneration.from_pretrained(checkpoint)
        full.load_state_dict(state)
        full.save_pretrained(output)
        for name in REMOTE_CODE_FILES:  # AutoModel(trust_remote_code=True) loads it
            shutil.copy(REPO_ROOT / name, output / name)
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("mode", choices=["train", "resume"])
    parser.add_argument("--mixed_precision", choices=["no", "bf16"], default="no")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = shard(XR0ForActionGeneration.from_pretrained(args.checkpoint).train(), args.mixed_precision)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    batch = rank_batch(model, rank, world_size)
    first_step = 1
    if args.mode == "resume":
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(args.output / f"checkpoint-{CHECKPOINT_STEP}"))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        first_step = CHECKPOINT_STEP + 1
    for step in range(first_step, STEPS + 1):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step {step} loss {float(loss):.6f}", flush=True)
        if args.mode == "train" and step == CHECKPOINT_STEP:
            model_state, optimizer_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optimizer": optimizer_state}
            dcp.save(state, checkpoint_id=str(args.output / f"checkpoint-{CHECKPOINT_STEP}"))
    save_full(model, args.checkpoint, args.output / ("final" if args.mode == "train" else "resumed"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
