"""Fine-tune XR0 on a robot dataset with Hugging Face `Trainer`.

    xr0-finetune --model <checkpoint dir> --dataset <LeRobot v3 or JSONL dir> \
        --robot_type my_arm --output_dir out/my_arm --max_steps 30000 --recipe async \
        --per_device_train_batch_size 8 --learning_rate 1e-4 --bf16 true

`--model` is a directory of this repository (converted or fine-tuned) or of the published layout. The recipe
follows the technical report (arXiv 2602.12684) and the released post-training code: flow matching with
t = (1 - u)·0.999, u ~ Beta(1.5, 1), loss 0.5·MSE + frequency term; `--recipe async` (the default, as released)
trains with the Λ-shaped band (window 4), the +10 position offset of noisy actions, clean prefixes on half the
samples and loss reweighting; `sync` keeps band and offset without prefixes; `async-causal` is `async` with the
causal mask instead of the band (training-time RTC, the report's baseline); `published` trains with the causal
mask and no offset of the published checkpoints. The saved config records the layout, so inference uses it.
Token embeddings are frozen by default, as in the paper; the VLM and
its vision tower train unless frozen. `--lora_rank N` trains LoRA adapters on the VLM's language model instead
of its full weights (the action expert trains fully) and merges them before saving. `--vl_dataset` mixes in
vision-language samples (1 per `--robot_per_vl` robot samples) whose next-token loss keeps the VLM's
language ability. The output directory holds
code, config, processor (with the robot type's statistics) and weights, and loads with AutoModel/AutoProcessor.

Multi-GPU: `accelerate launch --config_file training/accelerate/deepspeed_zero2.yaml -m xr0.training.finetune ...`
(or fsdp.yaml).
"""

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from xr0_common.cli import configure_logging

from .. import REPO_ROOT
from ..checkpoint_layout import REMOTE_CODE_FILES
from ..modeling_xr0 import ACTION_EXPERT_MODULES, XR0ForActionGeneration
from ..processing_xr0 import XR0Processor
from ..recipe_xr0 import LAMBDA_WINDOW, RECIPES
from .data import (
    MixedDataset,
    SeededSamples,
    VisionLanguageDataset,
    XR0Collator,
    open_dataset,
    register_dataset_robot,
)
from .report import write_fine_tune_card

logger = logging.getLogger("xr0.finetune")

LORA_TARGET = r"vlm\.model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


@dataclass
class ModelArguments:
    model: str = field(
        metadata={"help": "checkpoint directory (this repository's layout or the published one)"}
    )
    robot_type: str = field(metadata={"help": "robot type to train; registered in the saved processor"})
    recipe: str = field(
        default="async",
        metadata={
            "help": "'async' (released post-training: band, offset, clean prefixes), 'sync' (band and offset, "
            "no prefix), 'async-causal' (clean prefixes with a causal mask: training-time RTC) or 'published' "
            "(causal, offset 0)"
        },
    )
    training_repeat: Optional[int] = field(default=None, metadata={"help": "copies per sample (report: 4)"})
    action_attention_window: Optional[int] = field(
        default=None,
        metadata={
            "help": f"width w of the Λ band of the 'async' and 'sync' recipes (released: {LAMBDA_WINDOW}); saved in "
            "the config, so inference uses it"
        },
    )
    max_action_prefix_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "longest clean prefix trained (recipe: 6); cover the latency you deploy with, in ticks"
        },
    )
    frequency_loss_weight: Optional[float] = field(default=None, metadata={"help": "c in 0.5·mse + c·freq"})
    language_loss_weight: Optional[float] = field(
        default=None, metadata={"help": "weight of the VL co-training loss"}
    )
    freeze_vlm: bool = field(default=False, metadata={"help": "freeze the whole VLM (vision + language)"})
    freeze_vision: bool = field(default=False, metadata={"help": "freeze the vision tower"})
    freeze_embeddings: bool = field(
        default=True, metadata={"help": "freeze the token embeddings (paper: frozen)"}
    )
    lora_rank: int = field(
        default=0, metadata={"help": "LoRA rank on the VLM's language model; 0 = full fine-tuning"}
    )
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.0)
    attn_implementation: Optional[str] = field(
        default=None, metadata={"help": "eager, sdpa or flash_attention_2"}
    )


@dataclass
class DataArguments:
    dataset: str = field(
        metadata={
            "help": "LeRobot v3.0 dataset directory, a Hugging Face dataset repo id, or a JSONL dataset directory"
        }
    )
    state_key: str = field(
        default="observation.state", metadata={"help": "LeRobot feature holding the state"}
    )
    action_key: str = field(default="action", metadata={"help": "LeRobot feature holding the action"})
    dataset_format: str = field(default="auto", metadata={"help": "auto, lerobot or jsonl"})
    camera_map: Optional[str] = field(
        default=None,
        metadata={"help": "view=camera pairs, e.g. 'base=top,wrist_left=wrist' (default: in order)"},
    )
    normalize_state: bool = field(
        default=False, metadata={"help": "normalize the state with dataset statistics"}
    )
    chunk_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "T, actions per training chunk (default: the robot type's own, e.g. 10 for libero_all; "
            "the model config's action_length for a new robot type)"
        },
    )
    vl_dataset: Optional[str] = field(
        default=None, metadata={"help": "directory with conversations.jsonl for vision-language co-training"}
    )
    robot_per_vl: int = field(default=6, metadata={"help": "robot samples per VL sample (report: 6)"})


def parse_camera_map(text: Optional[str]) -> Optional[dict]:
    if not text:
        return None
    pairs = [item.split("=", 1) for item in text.split(",")]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise ValueError(f"--camera_map must look like 'view=camera,view=camera', got {text!r}")
    return dict(pairs)


def load_model_and_processor(args: ModelArguments):
    kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    # fp32 master weights on every transformers line, whatever the checkpoint stores: `--bf16 true` is autocast
    # mixed precision (and ZeRO-2 / FSDP keep fp32 masters), so AdamW's state is fp32 too.
    model = XR0ForActionGeneration.from_pretrained(args.model, dtype=torch.float32, **kwargs)
    return model, load_processor(args.model, model.config)


def load_processor(checkpoint, config) -> XR0Processor:
    """The processor of `checkpoint` sized for its model `config`. A published-layout directory has the tokenizer
    and image processor; a bare weights directory may not: it gets this repository's (the backbone's)."""
    has_processor = (Path(checkpoint) / "tokenizer_config.json").is_file()
    return XR0Processor.from_pretrained(
        checkpoint if has_processor else REPO_ROOT,
        action_length=config.action_length,
        action_dim=config.action_dim,
        state_dim=config.state_dim,
    )


def apply_recipe(model, args: ModelArguments) -> None:
    if args.recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {sorted(RECIPES)}, got {args.recipe!r}")
    changes = dict(RECIPES[args.recipe])
    if args.action_attention_window is not None:
        if changes["action_attention_window"] is None:
            raise ValueError(
                f"--action_attention_window: the {args.recipe!r} recipe trains with a causal mask, not a band"
            )
        changes["action_attention_window"] = args.action_attention_window
    if args.training_repeat is not None:
        changes["training_repeat"] = args.training_repeat
    for name in ("frequency_loss_weight", "language_loss_weight", "max_action_prefix_length"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    for name, value in changes.items():
        setattr(model.config, name, value)
    model.config.validate_fields()


def freeze(model, args: ModelArguments) -> None:
    if args.freeze_vlm:
        model.vlm.requires_grad_(False)
    if args.freeze_vision:
        model.vlm.model.visual.requires_grad_(False)
    if args.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)


def add_lora(model, args: ModelArguments):
    """LoRA adapters on the VLM's language model; the action expert trains fully as PEFT `modules_to_save`, so a
    `checkpoint-N` (adapter_model.safetensors) holds the adapters and the whole trained expert: load it with
    `peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base, trust_remote_code=True), checkpoint)`, or
    resume from it. The final output is merged into a plain directory of this repository."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=LORA_TARGET,
        modules_to_save=list(ACTION_EXPERT_MODULES),  # trained fully, saved in every checkpoint
    )
    return get_peft_model(model, lora)


def finetune(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> Trainer:
    training_args.remove_unused_columns = False
    training_args.label_names = ["actions"]
    model, processor = load_model_and_processor(model_args)
    apply_recipe(model, model_args)
    known = model_args.robot_type in processor.robot_types
    chunk_length = data_args.chunk_length or (
        processor.chunk_length(model_args.robot_type) if known else processor.action_length
    )
    dataset = open_dataset(
        data_args.dataset,
        chunk_length,
        data_args.dataset_format,
        state_key=data_args.state_key,
        action_key=data_args.action_key,
    )
    camera_map = register_dataset_robot(
        processor,
        model_args.robot_type,
        dataset,
        parse_camera_map(data_args.camera_map),
        data_args.normalize_state,
    )
    # Each frame's draws come from its own seed (run seed, index, epoch): the same whatever rank it lands on.
    seeded = SeededSamples(dataset, training_args.seed)
    train_dataset = seeded
    if data_args.vl_dataset:
        train_dataset = MixedDataset(
            seeded, VisionLanguageDataset(data_args.vl_dataset), data_args.robot_per_vl
        )
    freeze(model, model_args)
    trained = add_lora(model, model_args) if model_args.lora_rank > 0 else model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    logger.info(
        f"training {trainable / 1e6:.2f} M of {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters "
        f"on {len(dataset)} frames{' + vision-language samples' if data_args.vl_dataset else ''} "
        f"({model_args.recipe} recipe, robot type {model_args.robot_type!r})"
    )

    trainer = XR0Trainer(
        model=trained,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=XR0Collator(processor, model_args.robot_type, camera_map),
        callbacks=[CompleteCheckpoints(processor, model), SampleEpochs(seeded)],
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    output = Path(training_args.output_dir)
    final = trained.merge_and_unload() if model_args.lora_rank > 0 else model
    # One writer per directory: under torchrun every rank gets here, and two ranks rewriting the same
    # tokenizer_config.json let one read the other's half-written file.
    if training_args.should_save:
        final.save_pretrained(output)
        processor.save_pretrained(output)
        write_fine_tune_card(output, model_args, data_args, training_args, trainer, processor, dataset)
        logger.info(
            "saved %s (load with AutoModel/AutoProcessor.from_pretrained(..., trust_remote_code=True))",
            output,
        )
    return trainer


class XR0Trainer(Trainer):
    """The Trainer, logging the loss's parts too: `flow_loss`, `frequency_loss` and `language_loss` (when present),
    each averaged over the training steps since the last log as `loss` is (this process's batches)."""

    LOSS_PARTS = ("flow_loss", "frequency_loss", "language_loss")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_parts = {}  # name -> (sum tensor, count): no device sync until a log

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if model.training:
            for name in self.LOSS_PARTS:
                value = getattr(outputs, name, None)
                if value is not None:
                    total, count = self._loss_parts.get(name, (0.0, 0))
                    self._loss_parts[name] = (total + value.detach().float(), count + 1)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:
            for name, (total, count) in self._loss_parts.items():
                logs[name] = round(float(total) / count, 4)
            self._loss_parts = {}
        super().log(logs, *args, **kwargs)


class SampleEpochs(TrainerCallback):
    """Tells the seeded dataset which epoch starts (the epoch is part of each sample's seed). At an epoch's
    start `state.epoch` is that epoch, also when a run resumes inside it (then a fraction above it)."""

    def __init__(self, dataset: SeededSamples):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch + 1e-9))
        return control


class CompleteCheckpoints(TrainerCallback):
    """Makes every `checkpoint-N` a complete directory of this repository: beside the Trainer's weights and
    optimizer state it gets the config with its auto_map, the remote code and the processor with the robot type's
    statistics, so AutoModel/AutoProcessor load it (and `--resume_from_checkpoint` continues from it)."""

    def __init__(self, processor, model):
        self.processor, self.model = processor, model

    def on_save(self, args, state, control, **kwargs):
        # The Trainer's own rule for who writes checkpoint-N (rank 0, or each node's first).
        if args.should_save:
            directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.processor.save_pretrained(directory)
            self.model.config.save_pretrained(directory)
            for name in REMOTE_CODE_FILES:
                shutil.copy(REPO_ROOT / name, directory / name)
        return control


def has_accelerator() -> bool:
    """Whether torch sees a device other than the CPU (CUDA, or another backend torch's accelerator API knows)."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available()


def cpu_launch_arguments(argv: list) -> list:
    """The command line of a process started by a multi-process launcher (torchrun, accelerate launch: WORLD_SIZE
    > 1) on a machine without an accelerator. Without `--use_cpu true` the Trainer there does not run
    data-parallel: every process would train its own replica on the whole dataset, and only one would be saved.
    So such a launch trains on the CPU over the process group, said once; an explicit `--use_cpu false` is an
    error. Other launches are returned unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or has_accelerator():
        return argv
    given = [value for flag, value in zip(argv, argv[1:], strict=False) if flag == "--use_cpu"]
    given += [a.split("=", 1)[1] for a in argv if a.startswith("--use_cpu=")]
    if "--use_cpu" in argv[-1:]:  # a bare flag at the end means true
        given.append("true")
    if any(value.lower() in ("false", "0", "no") for value in given):
        raise SystemExit(
            f"xr0-finetune: {os.environ['WORLD_SIZE']} processes were launched on a machine without a GPU, with "
            "--use_cpu false: they would each train a separate copy of the model. Pass --use_cpu true (with "
            "--ddp_backend gloo) to train one model data-parallel on the CPU, or launch one process."
        )
    if given:
        return argv
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"xr0-finetune: {os.environ['WORLD_SIZE']} processes on a machine without a GPU: training "
            "data-parallel on the CPU (--use_cpu true).",
            file=sys.stderr,
        )
    return [*argv, "--use_cpu", "true"]


def run(argv=None) -> Trainer:
    """xr0-finetune's work for a command line; returns the Trainer (its state holds the log history)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    argv = cpu_launch_arguments(list(sys.argv[1:] if argv is None else argv))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    # TrainingArguments' own --log_level sets this package's messages too; its default ("passive") means info here.
    passive = training_args.log_level == "passive" and training_args.should_log
    configure_logging(logging.INFO if passive else training_args.get_process_log_level())
    torch.manual_seed(training_args.seed)
    return finetune(model_args, data_args, training_args)


def main(argv=None) -> None:
    """The console script: returns None, so that a finished run exits with status 0 (a console-script wrapper
    passes what `main` returns to `sys.exit`, which would turn the Trainer into status 1)."""
    run(argv)


if __name__ == "__main__":
    main()
