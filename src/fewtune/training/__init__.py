"""Training: the loop, LoRA and full fine-tuning recipes, checkpoints, processes, memory."""
