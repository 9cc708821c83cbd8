"""Training-step memory of the real 4.7B XR0, estimated from the model built on the meta device (numbers, not a
test; activations are not included: they depend on batch size, prompt length and checkpointing).

    python -m xr0.training.estimate_memory [--gpus 8]

Per parameter: fp32 master weight 4 B; trainable ones add an fp32 gradient 4 B and AdamW's two fp32 moments 8 B;
frozen ones can be held in bf16 (2 B). LoRA adds rank·(in + out) trainable values per adapted projection.
Per GPU, for N GPUs: DDP holds everything on every GPU; DeepSpeed ZeRO-2 shards gradients and AdamW's moments
(weights stay whole), and so does FSDP as training/accelerate/fsdp.yaml configures it (parameters kept gathered
from forward to backward, which this model's cached keys/values need); ZeRO-3 shards the weights too.
"""

import re

from xr0_common.cli import ArgumentParser

GIB = 2**30


def estimate(lora_rank: int = 16) -> list:
    import torch

    from ..configuration_xr0 import XR0Config
    from ..modeling_xr0 import XR0ForActionGeneration
    from .finetune import LORA_TARGET

    with torch.device("meta"):
        model = XR0ForActionGeneration(XR0Config())
    parameters = dict(model.named_parameters())
    total = sum(p.numel() for p in parameters.values())
    embeddings = model.get_input_embeddings().weight.numel()
    expert = sum(p.numel() for n, p in parameters.items() if not n.startswith("vlm."))
    lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and re.fullmatch(LORA_TARGET, name):
            lora += lora_rank * (module.in_features + module.out_features)

    def row(setting, trainable, frozen, frozen_bytes):
        weights = trainable * 4 + frozen * frozen_bytes  # fp32 masters of the trained ones
        states = trainable * (4 + 8)  # fp32 gradient, two AdamW moments
        return setting, trainable, weights / GIB, states / GIB

    return [
        row("full fine-tuning (token embeddings frozen, as released)", total - embeddings, embeddings, 4),
        row("VLM frozen (fp32), action expert trained", expert, total - expert, 4),
        row("VLM frozen (bf16), action expert trained", expert, total - expert, 2),
        row(
            f"LoRA r={lora_rank} on the language model + action expert, VLM in bf16",
            expert + lora,
            total - expert,
            2,
        ),
    ]


def per_gpu(weights: float, states: float, gpus: int) -> dict:
    """GiB per GPU of each data-parallel strategy, from the weights' and the training states' GiB."""
    return {
        "DDP": weights + states,
        "ZeRO-2 / FSDP": weights + states / gpus,
        "ZeRO-3": (weights + states) / gpus,
    }


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--gpus", type=int, default=8, help="N, the GPUs the per-GPU columns divide over")
    args = parser.parse_args(argv)
    if args.gpus < 1:
        parser.error(f"--gpus must be >= 1, got {args.gpus}")
    for setting, trainable, weights, states in estimate(args.lora_rank):
        strategies = "   ".join(
            f"{name} {gib:5.1f}" for name, gib in per_gpu(weights, states, args.gpus).items()
        )
        print(
            f"{setting:<70} trainable {trainable / 1e9:6.3f} B   weights + gradients + AdamW "
            f"{weights + states:6.1f} GiB   per GPU of {args.gpus}: {strategies}"
        )


if __name__ == "__main__":
    main()
