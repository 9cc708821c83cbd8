"""Fine-tuning XR0 with transformers' Trainer: datasets (`data`) and the `xr0-finetune` entry point (`finetune`)."""
