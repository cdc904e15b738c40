"""Belief scoring for IGPO at the contract path; the implementation lives once in `igpo_envs.information_gain`."""

from igpo_envs.information_gain import (
    INFO_GAIN_TYPES,
    answer_logprobs,
    batch_answer_logprobs,
    information_gains,
    log_prob_diff,
    per_prefix_answer_logprobs,
    prob_diff,
    render_history,
    tokenize_history,
    tokenize_probe,
)

__all__ = [
    "INFO_GAIN_TYPES",
    "answer_logprobs",
    "batch_answer_logprobs",
    "information_gains",
    "log_prob_diff",
    "per_prefix_answer_logprobs",
    "prob_diff",
    "render_history",
    "tokenize_history",
    "tokenize_probe",
]
