"""IGPO training on the igpo envs: `IGPOConfig` and `IGPOTrainer` (subclasses of TRL's GRPO classes)."""
