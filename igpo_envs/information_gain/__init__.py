"""Information-gain rewards (IGPO): beliefs of the gold answer scored in one packed forward pass.

This is the only part of `igpo_envs` that imports torch; the envs alone stay light.
"""

from igpo_envs.information_gain.formulas import (
    INFO_GAIN_TYPES,
    information_gain,
    information_gains,
    log_prob_diff,
    prob_diff,
)
from igpo_envs.information_gain.packed import (
    METHODS,
    answer_logprobs,
    batch_answer_logprobs,
    masked_attention,
    per_prefix_answer_logprobs,
)
from igpo_envs.information_gain.scorer import (
    InformationGainScorer,
    first_alias,
    history_messages,
    render_history,
    tokenize_history,
    tokenize_probe,
)
from igpo_envs.information_gain.wrapper import InformationGainWrapper, wrap_with_information_gain

__all__ = [
    "INFO_GAIN_TYPES",
    "METHODS",
    "InformationGainScorer",
    "InformationGainWrapper",
    "answer_logprobs",
    "batch_answer_logprobs",
    "first_alias",
    "history_messages",
    "information_gain",
    "information_gains",
    "log_prob_diff",
    "masked_attention",
    "per_prefix_answer_logprobs",
    "prob_diff",
    "render_history",
    "tokenize_history",
    "tokenize_probe",
    "wrap_with_information_gain",
]
