"""`IGPOConfig`: TRL's `GRPOConfig` plus the information-gain, environment and rollout settings of IGPO."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from igpo_envs.information_gain.formulas import INFO_GAIN_TYPES
from igpo_envs.protocol import OFFICIAL_SYSTEM_PROMPT, PROBE_STYLES, PROTOCOLS
from igpo_trainer.advantages import NORMS as INFO_GAIN_NORMS

#: Env settings that are IGPOConfig fields (the trainer reads them too); env_kwargs may not set them again.
ENV_FIELDS = ("protocol", "topk", "max_turns", "format_penalty", "no_answer_reward")


@dataclass
class IGPOConfig(GRPOConfig):
    r"""
    Configuration for [`IGPOTrainer`]: every [`~trl.GRPOConfig`] parameter plus the IGPO ones below.

    Multi-turn rollouts: the policy writes one turn (a tool call or an answer), the env answers with an observation
    that is appended to the context and masked out of the loss, until the policy answers, writes something malformed,
    or `max_turns` is reached. `max_completion_length` bounds the whole multi-turn completion (policy and observation
    tokens); `max_turn_length` bounds one turn.

    Defaults reproduce the paper and the official code where they are explicit (prob_diff IG, joint normalisation,
    gamma 1, the official `sqrt(var + 1e-8)` group std, format penalty -2 also for an episode that never answers, no
    vLLM importance-sampling correction); the robustness options (`adv_std_floor`, `ig_clip`) are off. The README's
    "Faithfulness" table lists every setting where igpo can differ from the paper or the official code.
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
    force_think: bool = field(
        default=False,
        metadata={
            "help": "Write '<think>' at the start of every policy turn, as the official IGPO rollouts do (the turn "
            "must then close it: '</think>' before its action). The forced tag is context, not trained."
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "System message before the task prompt: 'official' = the official IGPO rollouts' format (think, "
            "then answer or one tool call; needs protocol='tool_call'), any other text is used as is, None = none. "
            "With a system prompt the user message holds only the question unless env_kwargs sets prompt_template."
        },
    )
    # Robustness options (off by default so the paper's method stays the default)
    adv_std_floor: float = field(
        default=0.0,
        metadata={
            "help": "Lower bound on the group std used to scale rewards (0 = off). The default form "
            "sqrt(var + 1e-8) already floors it at 1e-4 (official code), which keeps ~1e-5 IG noise in a group whose "
            "outcomes agree at about +-0.1; a larger floor, e.g. 0.1, shrinks such groups further."
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
            "help": "Extra keyword arguments for gym.make(env_id, ...), as a dict or a JSON string (CLI: "
            "--env-kwargs or --env_kwargs), e.g. '{\"num_docs\": 2000, \"hops\": 2, \"seed\": 0}'. The env settings "
            f"that are fields of this config ({', '.join(ENV_FIELDS)}) are set as fields, not here."
        },
    )
    protocol: str = field(
        default="tag",
        metadata={
            "help": "Action protocol: 'tag' (<search>/<answer>) or 'tool_call' (JSON tool calls).",
            "choices": list(PROTOCOLS),
        },
    )
    topk: int = field(default=3, metadata={"help": "Passages returned per search."})
    max_turns: int = field(default=10, metadata={"help": "Maximum turns (tool calls + answer) per episode."})
    format_penalty: float = field(
        default=-2.0,
        metadata={
            "help": "Outcome reward of a malformed turn (the env's format penalty). A turn cut short by "
            "max_turn_length or by the completion budget is parsed as written, so an unclosed tag gets this too."
        },
    )
    no_answer_reward: float | None = field(
        default=None,
        metadata={
            "help": "Outcome reward of an episode that ends without an answer because it ran out of turns "
            "(max_turns) or of completion tokens. None = format_penalty, as the official code scores a transcript "
            "without <answer>; 0.0 makes 'search until the limit' cheaper than a wrong answer."
        },
    )
    max_turn_length: int | None = field(
        default=None,
        metadata={
            "help": "Maximum new tokens of one policy turn (None = max_completion_length). A turn also ends at its "
            "closing tag (</search>, </answer>, </tool_call>) or EOS."
        },
    )

    # TRL's vLLM importance-sampling correction, off here: the official code recomputes the old log-probs with the
    # training model and applies no rollout correction, and the default sequence mask (cap 3) drops long multi-turn
    # sequences whole. Turned on, the trainer logs the share of sequences it drops (igpo/vllm_is_dropped_frac).
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={
            "help": "Correct for the vLLM-vs-training-model mismatch with TRL's importance sampling (see "
            "vllm_importance_sampling_mode). Off by default in IGPO (the official code has no such correction); "
            "when on, igpo/vllm_is_dropped_frac logs the share of sequences its masking drops."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.env_kwargs, str):
            try:
                self.env_kwargs = json.loads(self.env_kwargs)
            except json.JSONDecodeError as exc:
                raise ValueError(f"env_kwargs is not valid JSON: {exc.msg} at position {exc.pos}") from exc
        if self.env_kwargs is None:
            self.env_kwargs = {}
        if not isinstance(self.env_kwargs, dict):
            raise ValueError(f"env_kwargs must be a JSON object, got {type(self.env_kwargs).__name__}")
        self.env_kwargs = dict(self.env_kwargs)
        duplicated = [name for name in ENV_FIELDS if name in self.env_kwargs]
        if duplicated:
            raise ValueError(
                f"env_kwargs sets {duplicated}, which are IGPOConfig fields read by the trainer as well as the env: "
                f"set them as fields ({', '.join(f'--{name}' for name in duplicated)}), not in env_kwargs"
            )
        _check_choice("info_gain_type", self.info_gain_type, INFO_GAIN_TYPES)
        _check_choice("info_gain_norm", self.info_gain_norm, INFO_GAIN_NORMS)
        _check_choice("probe_style", self.probe_style, PROBE_STYLES)
        _check_choice("protocol", self.protocol, PROTOCOLS)
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
        if self.no_answer_reward is not None and not math.isfinite(self.no_answer_reward):
            raise ValueError(f"no_answer_reward must be a finite number or None, got {self.no_answer_reward}")
        if self.system_prompt == "official" and self.protocol != "tool_call":
            raise ValueError("system_prompt='official' describes the tool_call protocol; set protocol='tool_call'")
        if self.use_information_gain and self.scale_rewards == "batch":
            raise ValueError(
                "scale_rewards='batch' is not defined for IGPO's turn rewards, which are normalised per group; use "
                "'group' (default) or 'none' (centre only), or use_information_gain=false for TRL's GRPO"
            )
        if self.use_information_gain and self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={self.multi_objective_aggregation!r} is not supported with "
                "use_information_gain=true (IGPO has one outcome reward); leave it 'sum_then_normalize'"
            )
        if not self.env_id.startswith("igpo/"):
            raise ValueError(f"env_id must be an igpo env id ('igpo/...'), got {self.env_id!r}")

    @property
    def turn_length(self) -> int:
        """Maximum new tokens of one policy turn."""
        return self.max_turn_length or self.max_completion_length

    @property
    def system_prompt_text(self) -> str | None:
        """The system message of every rollout (`system_prompt` with 'official' resolved), or None."""
        return OFFICIAL_SYSTEM_PROMPT if self.system_prompt == "official" else self.system_prompt

    def env_make_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for gym.make(env_id, ...): the env settings of this config plus `env_kwargs`."""
        base = {
            "protocol": self.protocol,
            "topk": self.topk,
            "max_turns": self.max_turns,
            "format_penalty": self.format_penalty,
            "no_answer_reward": self.no_answer_reward,
        }
        if self.system_prompt is not None:  # the instructions are in the system message: the user asks only
            base["prompt_template"] = "{question}"
        return {**base, **self.env_kwargs}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
