"""Text side of belief scoring: how a history and an answer probe become token ids, and a scorer that holds a model.

History rendering (shared with the trainer, so both score the same tokens): the prompt, i.e. the messages before the
first assistant message, goes through the tokenizer's chat template as a user turn with the generation prompt
(plain text when the tokenizer has no template); every later message is appended as one growing assistant turn, the
Search-R1 layout: agent turns verbatim, observations as `igpo_envs.protocol.observation_text` (on their own lines). Each piece is tokenised on its own and the ids
concatenated, so turn boundaries are exact token boundaries (this is what a rollout's token stream looks like: the
generated ids followed by the observation's ids).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from igpo_envs.information_gain.formulas import information_gains
from igpo_envs.information_gain.packed import METHODS, answer_logprobs
from igpo_envs.protocol import answer_probe, observation_text


def _split_prompt(messages: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    if not messages:
        raise ValueError("messages is empty: the history needs at least the prompt message")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {message!r:.80}")
    first_agent = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    if first_agent == 0:
        raise ValueError("messages starts with an assistant message; the first message must be the prompt")
    return list(messages[:first_agent]), list(messages[first_agent:])


def _render_prompt(tokenizer, prompt_messages: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    return "".join(m["content"] for m in prompt_messages)


def _turn_text(message: dict) -> str:
    return message["content"] if message["role"] == "assistant" else observation_text(message["content"])


def render_history(tokenizer, messages: Sequence[dict]) -> str:
    """The text the policy sees for ``messages``: chat-templated prompt, then its turns and the observations."""
    prompt, turns = _split_prompt(messages)
    return _render_prompt(tokenizer, prompt) + "".join(_turn_text(m) for m in turns)


def tokenize_history(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """Token ids of `render_history` and the belief boundaries in them.

    Boundaries: after the prompt (v_0) and after each observation that follows an agent turn (v_1..v_K): the end of
    every run of non-assistant messages. A trailing agent turn (e.g. the answer) adds tokens but no boundary.
    """
    prompt, turns = _split_prompt(messages)
    templated = bool(getattr(tokenizer, "chat_template", None))
    # A chat template writes its own special tokens; plain text gets the tokenizer's usual ones (e.g. BOS).
    ids = list(tokenizer(_render_prompt(tokenizer, prompt), add_special_tokens=not templated)["input_ids"])
    if not ids:
        raise ValueError("the prompt renders to no tokens")
    boundaries = [len(ids)]
    for i, message in enumerate(turns):
        ids += tokenizer(_turn_text(message), add_special_tokens=False)["input_ids"]
        next_is_agent = i + 1 == len(turns) or turns[i + 1]["role"] == "assistant"
        if message["role"] != "assistant" and next_is_agent:  # the end of a run of observations
            boundaries.append(len(ids))
    return ids, boundaries


def tokenize_probe(
    tokenizer, answer: str, protocol: str = "tag", style: str = "answer"
) -> tuple[list[int], list[bool]]:
    """Probe ids and score mask: `answer_probe`'s prefix, answer and suffix tokenised separately and concatenated."""
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"the gold answer must be a non-empty string, got {answer!r}")
    parts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in answer_probe(answer, protocol, style)]
    prefix, gold, suffix = parts
    return prefix + gold + suffix, [False] * len(prefix) + [True] * len(gold) + [False] * len(suffix)


def first_alias(answer) -> str:
    """The gold answer used for scoring: the first alias when there are several, as the paper does."""
    if isinstance(answer, str):
        return answer
    answer = list(answer)
    if not answer:
        raise ValueError("no gold answer to score: the list of aliases is empty")
    return answer[0]


def history_messages(prompt: str, turns: Sequence[tuple[str, str]]) -> list[dict]:
    """Chat messages for a prompt and completed tool turns given as (agent text, observation text) pairs."""
    messages = [{"role": "user", "content": prompt}]
    for i, turn in enumerate(turns):
        if len(turn) != 2:
            raise ValueError(f"turns[{i}] must be an (agent text, observation text) pair")
        messages += [{"role": "assistant", "content": turn[0]}, {"role": "user", "content": turn[1]}]
    return messages


class InformationGainScorer:
    """A reference model that scores beliefs v_0..v_K and information gains of a search history.

    Args:
        model: a transformers causal LM (used as is; `from_pretrained` puts it in eval mode).
        tokenizer: its tokenizer.
        protocol: the env protocol, which decides the answer probe (``"tag"`` or ``"tool_call"``).
        probe_style: ``"answer"`` (the bare answer turn) or ``"official"`` (the official IGPO probe).
        device: where to run the model.
        info_gain_type: ``"prob_diff"`` (paper) or ``"log_prob_diff"`` (released script).
        method: ``"auto"``, ``"packed"`` or ``"cached"`` (see `answer_logprobs`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        protocol: str = "tag",
        probe_style: str = "answer",
        device: str = "cpu",
        info_gain_type: str = "prob_diff",
        method: str = "auto",
    ):
        answer_probe("x", protocol, probe_style)  # validates both now, not at the first episode
        information_gains([0.0], info_gain_type)
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.protocol, self.probe_style = protocol, probe_style
        self.info_gain_type, self.method = info_gain_type, method
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path, *, dtype=torch.float32, **kwargs) -> InformationGainScorer:
        """Load a local (or hub) causal LM and its tokenizer from ``path``; the model is put in eval mode."""
        from transformers import AutoModelForCausalLM

        from igpo_envs.hf_tokenizer import load_tokenizer

        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        return cls(model, tokenizer, **kwargs)

    def message_beliefs(self, messages: Sequence[dict], answer) -> list[float]:
        """v_0..v_K for a chat history (see `tokenize_history`) and the gold answer (first alias)."""
        ids, boundaries = tokenize_history(self.tokenizer, messages)
        probe, mask = tokenize_probe(self.tokenizer, first_alias(answer), self.protocol, self.probe_style)
        values = answer_logprobs(self.model, ids, boundaries, probe, mask, method=self.method)
        return values.tolist()

    def current_belief(self, messages: Sequence[dict], answer) -> float:
        """The belief after the whole history (its last boundary): one forward pass."""
        ids, boundaries = tokenize_history(self.tokenizer, messages)
        probe, mask = tokenize_probe(self.tokenizer, first_alias(answer), self.protocol, self.probe_style)
        return answer_logprobs(self.model, ids, boundaries[-1:], probe, mask, method=self.method).item()

    def beliefs(self, prompt: str, turns: Sequence[tuple[str, str]], answer) -> list[float]:
        """v_0..v_K: the belief after the prompt and after each completed tool turn (agent text + observation)."""
        return self.message_beliefs(history_messages(prompt, turns), answer)

    def gains(self, prompt: str, turns: Sequence[tuple[str, str]], answer) -> list[float]:
        """IG_1..IG_K of the tool turns, with this scorer's ``info_gain_type``."""
        return information_gains(self.beliefs(prompt, turns, answer), self.info_gain_type)
