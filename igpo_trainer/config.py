"""`IGPOConfig`: TRL's `GRPOConfig` plus the information-gain, environment and rollout settings of IGPO."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

INFO_GAIN_TYPES = ("prob_diff", "log_prob_diff")
INFO_GAIN_NORMS = ("joint", "separate")
PROBE_STYLES = ("answer", "official")


@dataclass
class IGPOConfig(GRPOConfig):
    r"""
    Configuration for [`IGPOTrainer`]: every [`~trl.GRPOConfig`] parameter plus the IGPO ones below.

    Multi-turn rollouts: the policy writes one turn (a tool call or an answer), the env answers with an observation
    that is appended to the context and masked out of the loss, until the policy answers, writes something malformed,
    or `max_turns` is reached. `max_completion_length` bounds the whole multi-turn completion (policy and observation
    tokens); `max_turn_length` bounds one turn.

    Defaults reproduce the paper (prob_diff IG, joint normalisation, gamma 1, format penalty -2); the robustness
    options (`adv_std_floor`, `ig_clip`) are off by default.
    """

    # Information gain
    use_information_gain: bool = field(
        default=True,
        metadata={
            "help": "Reward each tool turn with the information gain of its observation (IGPO). False gives plain "
            "multi-turn GRPO on the same code path: only the outcome reward, broadcast to every turn."
        },
    )
    info_gain_type: str = field(
        default="prob_diff",
        metadata={
            "help": "IG of tool turn k: 'prob_diff' = exp(v_k) - exp(v_{k-1}) (the paper), 'log_prob_diff' = "
            "v_k - v_{k-1} (the released script), with v_k the mean log-prob of the gold answer after k observations.",
            "choices": list(INFO_GAIN_TYPES),
        },
    )
    info_gain_norm: str = field(
        default="joint",
        metadata={
            "help": "Group normalisation: 'joint' (paper) = one mean/std over all turn rewards of the group; "
            "'separate' = IG rewards and outcome rewards normalised among themselves.",
            "choices": list(INFO_GAIN_NORMS),
        },
    )
    gamma: float = field(default=1.0, metadata={"help": "Turn discount: A_t = r~_t + gamma * A_{t+1}."})
    probe_style: str = field(
        default="answer",
        metadata={
            "help": "Probe appended after each history to score the gold answer: 'answer' = the protocol's answer "
            "turn ('<answer> {gt} </answer>'); 'official' = the official IGPO code's probe (closes a <think> first).",
            "choices": list(PROBE_STYLES),
        },
    )
    # Robustness options (off by default so the paper's method stays the default)
    adv_std_floor: float = field(
        default=0.0,
        metadata={
            "help": "Lower bound on the group std used to scale rewards (0 = off). Guards near-zero-variance groups, "
            "where joint normalisation turns ~1e-5 IG noise into +-1 advantages; e.g. 0.1."
        },
    )
    ig_clip: float | None = field(
        default=None,
        metadata={"help": "If set, clip each IG reward to [-ig_clip, ig_clip] before normalisation (None = off)."},
    )
    # Environment
    env_id: str = field(
        default="igpo/SynthMultiHop-v0",
        metadata={"help": "Gymnasium id of the igpo env to train on (created with gym.make)."},
    )
    env_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Extra keyword arguments for gym.make(env_id, ...), as a dict or a JSON string (CLI), e.g. "
            '\'{"num_docs": 2000, "hops": 2, "seed": 0}\'.'
        },
    )
    protocol: str = field(
        default="tag",
        metadata={
            "help": "Action protocol: 'tag' (<search>/<answer>) or 'tool_call' (JSON tool calls).",
            "choices": ["tag", "tool_call"],
        },
    )
    topk: int = field(default=3, metadata={"help": "Passages returned per search."})
    max_turns: int = field(default=10, metadata={"help": "Maximum turns (tool calls + answer) per episode."})
    format_penalty: float = field(
        default=-2.0,
        metadata={
            "help": "Outcome reward of a malformed turn (the env's format penalty). An episode that runs out of turns "
            "or tokens without answering gets 0, as the env gives at its turn limit."
        },
    )
    max_turn_length: int | None = field(
        default=None,
        metadata={
            "help": "Maximum new tokens of one policy turn (None = max_completion_length). A turn also ends at its "
            "closing tag (</search>, </answer>, </tool_call>) or EOS."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.env_kwargs, str):
            try:
                self.env_kwargs = json.loads(self.env_kwargs)
            except json.JSONDecodeError as exc:
                raise ValueError(f"env_kwargs is not valid JSON: {exc.msg} at position {exc.pos}") from exc
        self.env_kwargs = dict(self.env_kwargs or {})
        if not isinstance(self.env_kwargs, dict):
            raise ValueError(f"env_kwargs must be a JSON object, got {type(self.env_kwargs).__name__}")
        _check_choice("info_gain_type", self.info_gain_type, INFO_GAIN_TYPES)
        _check_choice("info_gain_norm", self.info_gain_norm, INFO_GAIN_NORMS)
        _check_choice("probe_style", self.probe_style, PROBE_STYLES)
        _check_choice("protocol", self.protocol, ("tag", "tool_call"))
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.adv_std_floor < 0.0:
            raise ValueError(f"adv_std_floor must be >= 0 (0 = off), got {self.adv_std_floor}")
        if self.ig_clip is not None and self.ig_clip <= 0.0:
            raise ValueError(f"ig_clip must be > 0 or None (off), got {self.ig_clip}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
        if self.max_turn_length is not None and self.max_turn_length < 1:
            raise ValueError(f"max_turn_length must be >= 1 or None, got {self.max_turn_length}")
        if not self.env_id.startswith("igpo/"):
            raise ValueError(f"env_id must be an igpo env id ('igpo/...'), got {self.env_id!r}")

    @property
    def turn_length(self) -> int:
        """Maximum new tokens of one policy turn."""
        return self.max_turn_length or self.max_completion_length

    def env_make_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for gym.make(env_id, ...): the env settings of this config plus `env_kwargs`."""
        base = {
            "protocol": self.protocol,
            "topk": self.topk,
            "max_turns": self.max_turns,
            "format_penalty": self.format_penalty,
        }
        return {**base, **self.env_kwargs}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
