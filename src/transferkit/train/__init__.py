"""Training: the head on cached embeddings (`train_head`), the fine-tune (`finetune`) with its recipe, whole blocks,
optimizer, checkpoints and multi-worker loop."""
