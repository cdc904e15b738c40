"""IGPO training on the igpo envs: `IGPOConfig` and `IGPOTrainer` (subclasses of TRL's GRPO classes)."""

from igpo_trainer.advantages import turn_advantages
from igpo_trainer.config import IGPOConfig
from igpo_trainer.trainer import IGPOTrainer, make_env, question_dataset
from igpo_trainer.trl_env import IGPOToolEnv, tool_env_dataset

__all__ = [
    "IGPOConfig",
    "IGPOToolEnv",
    "IGPOTrainer",
    "make_env",
    "question_dataset",
    "tool_env_dataset",
    "turn_advantages",
]
