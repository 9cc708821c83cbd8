"""Repository tools: checkpoint conversion (`xr0-convert`), the demo (`xr0-demo`), publishing, and the writers of
the root files, the tiny checkpoint, the tokenizer and the variant cards."""
