"""Text side of belief scoring: how a history and an answer probe become token ids, and a scorer that holds a model.

The history is rendered by `igpo_envs.transcript` (the one rendering that rollouts, the warm start and evaluation also
use): the prompt through the chat template, then agent turns and observations, each tokenised on its own. The answer
probe is the turn the policy would write to answer now (`igpo_envs.protocol.answer_probe`), tokenised as ONE string
the way the transcript tokenises a turn; the answer's tokens are found by character offsets. Tokenising the probe's
prefix, answer and suffix apart would score tokens the model never writes: a byte-level BPE writes
``"<answer> Paris </answer>"`` with ``'ĠParis'`` (the space belongs to the answer token), not ``'Ġ'`` + ``'Paris'``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from igpo_envs.information_gain.formulas import information_gains
from igpo_envs.information_gain.packed import METHODS, answer_logprobs
from igpo_envs.protocol import answer_probe
from igpo_envs.transcript import render_messages, transcript_text, turn_encoding


def render_history(tokenizer, messages: Sequence[dict]) -> str:
    """The text the policy sees for ``messages``: chat-templated prompt, then its turns and the observations."""
    return transcript_text(tokenizer, messages)


def tokenize_history(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """Token ids of the history (`igpo_envs.transcript.render_messages`) and the belief boundaries in them.

    Boundaries: after the prompt (v_0) and after each observation that follows an agent turn (v_1..v_K): the end of
    every run of non-assistant messages. A trailing agent turn (e.g. the answer) adds tokens but no boundary.
    """
    transcript = render_messages(tokenizer, messages)
    return transcript.ids, transcript.boundaries


def tokenize_probe(
    tokenizer, answer: str, protocol: str = "tag", style: str = "answer", *, turn_opening: str = ""
) -> tuple[list[int], list[bool]]:
    """Probe ids and score mask: the whole probe text (`answer_probe`'s prefix + answer + suffix) tokenised once, as
    the answer turn it is, and every token that covers a character of the answer scored.

    A belief boundary is always where the transcript starts a new piece (after the prompt or an observation), so the
    probe is exactly the ids of an answer turn written there: the model cannot merge its first token into the
    history's already-fixed last one. A token that straddles the answer's edge (the leading space of ``'ĠParis'``,
    or an answer merged with the suffix's first character) is scored: it is how the model writes the answer.
    ``turn_opening``: text the rollout forces at the start of every turn (see `igpo_envs.transcript.turn_encoding`).
    """
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"the gold answer must be a non-empty string, got {answer!r}")
    prefix, gold, suffix = answer_probe(answer, protocol, style)
    ids, offsets = turn_encoding(tokenizer, prefix + gold + suffix, turn_opening)
    start, end = len(prefix), len(prefix) + len(gold)
    mask = [s < end and e > start for s, e in offsets]
    if not any(mask):
        raise ValueError(f"no token of the probe covers the answer {answer!r} (tokenizer offsets {offsets})")
    return ids, mask


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
