"""One rendering of an episode into token ids, shared by training, the warm start, belief scoring and evaluation.

The layout (Search-R1's, the one ``igpo-train`` rollouts produce) is a sequence of pieces:

* the **prompt**: the messages before the first agent turn, through the tokenizer's chat template with the
  generation prompt (plain text plus the tokenizer's usual special tokens when it has no template), `prompt_ids`;
* each **agent turn**: its text, verbatim, `turn_ids`;
* each **observation**: `igpo_envs.protocol.observation_text` (on lines of its own), `observation_ids`.

Every piece is tokenised on its own and the ids are concatenated. That is what a rollout is made of: the policy's
generated ids stop at a closing tag and the observation's ids are appended after them. Tokenising the running text as
one string instead would merge across the splice (a byte-level BPE writes ``</search>`` + ``\\n<information>`` as
``'>Ċ'``, one token) and show the model, at evaluation, a context it never saw in training. A turn therefore always
starts at a token boundary, and so does an answer written after any belief boundary: the answer probe of belief
scoring is tokenised as a turn (`turn_encoding`), which gives the ids the model emits when it writes that turn.

`render_messages` renders an env's chat history (``info["messages"]``) and `render_turns` a (prompt, turns) pair; both
return a `Transcript` with the ids, which of them the agent wrote, and the belief boundaries. The rollout loop builds
the same ids piece by piece with `prompt_ids` and `observation_ids` around the ids it generates.

This module is torch-free (``igpo_envs`` stays light); it needs only a transformers tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from igpo_envs.protocol import _RESULT_TAGS, observation_text

__all__ = [
    "Transcript",
    "observation_ids",
    "prompt_ids",
    "prompt_text",
    "render_messages",
    "render_turns",
    "split_prompt",
    "tool_message_content",
    "transcript_text",
    "turn_encoding",
    "turn_ids",
]


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _as_messages(prompt: str | Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = [dict(m) for m in prompt]
    if not messages:
        raise ValueError("the prompt has no messages")
    return messages


def prompt_text(tokenizer, prompt: str | Sequence[Mapping[str, str]], **chat_template_kwargs: Any) -> str:
    """The prompt as text: the chat template with the generation prompt, or the contents joined by newlines when
    the tokenizer has no template. ``prompt`` is the task text (one user message) or a list of chat messages."""
    messages = _as_messages(prompt)
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **chat_template_kwargs
        )
    return "\n".join(m["content"] for m in messages)


def prompt_ids(tokenizer, prompt: str | Sequence[Mapping[str, str]], **chat_template_kwargs: Any) -> list[int]:
    """Token ids of `prompt_text`. A chat template writes its own special tokens; plain text gets the tokenizer's
    usual ones (e.g. a BOS)."""
    text = prompt_text(tokenizer, prompt, **chat_template_kwargs)
    ids = list(tokenizer(text, add_special_tokens=not _has_chat_template(tokenizer))["input_ids"])
    if not ids:
        raise ValueError("the prompt renders to no tokens")
    return ids


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise ValueError(
            f"{type(tokenizer).__name__} cannot report character offsets; use a fast (Rust) tokenizer"
        ) from None
    return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]


def turn_encoding(tokenizer, text: str, opening: str = "") -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of one agent turn and the character span of ``text`` each covers (needs a fast tokenizer).

    ``opening``: text the rollout writes at the start of every turn before the policy generates (e.g. a forced
    ``<think>``); when ``text`` starts with it, it is its own piece, as in the rollout, and the rest another.
    """
    if opening and text.startswith(opening):
        head, head_offsets = _encode(tokenizer, opening)
        rest, rest_offsets = _encode(tokenizer, text[len(opening):])
        shift = len(opening)
        return head + rest, head_offsets + [(s + shift, e + shift) for s, e in rest_offsets]
    return _encode(tokenizer, text)


def turn_ids(tokenizer, text: str, opening: str = "") -> list[int]:
    """Token ids of one agent turn: its text on its own (a turn starts at a token boundary, see the module doc);
    a forced ``opening`` it starts with is a piece of its own (see `turn_encoding`)."""
    if opening and text.startswith(opening):
        return turn_ids(tokenizer, opening) + turn_ids(tokenizer, text[len(opening):])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def observation_ids(tokenizer, observation: str) -> list[int]:
    """Token ids of an observation as spliced after a turn: ``observation_text(observation)`` on its own."""
    return list(tokenizer(observation_text(observation), add_special_tokens=False)["input_ids"])


@dataclass
class Transcript:
    """An episode as token ids.

    Attributes:
        ids: the whole transcript.
        agent_mask: 1 on the tokens of agent turns, 0 on the prompt and observations.
        boundaries: belief boundaries, prefix lengths of ``ids``: after the prompt (v_0) and after each run of
            observations that follows an agent turn (v_1..v_K). A trailing agent turn adds tokens, no boundary.
        prompt_length: how many of ``ids`` are the prompt.
    """

    ids: list[int] = field(default_factory=list)
    agent_mask: list[int] = field(default_factory=list)
    boundaries: list[int] = field(default_factory=list)
    prompt_length: int = 0

    def add(self, ids: Sequence[int], *, agent: bool) -> None:
        self.ids += list(ids)
        self.agent_mask += [int(agent)] * len(ids)


def split_prompt(messages: Sequence[Mapping[str, str]]) -> tuple[list[dict], list[dict]]:
    """``messages`` split into the prompt (every message before the first assistant one) and the turns after it."""
    if not messages:
        raise ValueError("messages is empty: the history needs at least the prompt message")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {message!r:.80}")
    first_agent = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    if first_agent == 0:
        raise ValueError("messages starts with an assistant message; the first message must be the prompt")
    return [dict(m) for m in messages[:first_agent]], [dict(m) for m in messages[first_agent:]]


def render_messages(
    tokenizer, messages: Sequence[Mapping[str, str]], *, turn_opening: str = "", **chat_template_kwargs: Any
) -> Transcript:
    """The `Transcript` of a chat history (an env's ``info["messages"]``): the prompt messages, then assistant
    messages as agent turns and every other message (``user`` / ``tool``) as an observation. ``turn_opening``: see
    `turn_encoding`; ``chat_template_kwargs`` go to ``apply_chat_template``."""
    prompt, turns = split_prompt(messages)
    transcript = Transcript()
    transcript.add(prompt_ids(tokenizer, prompt, **chat_template_kwargs), agent=False)
    transcript.prompt_length = len(transcript.ids)
    transcript.boundaries.append(len(transcript.ids))
    for i, message in enumerate(turns):
        agent = message["role"] == "assistant"
        transcript.add(turn_ids(tokenizer, message["content"], turn_opening) if agent
                       else observation_ids(tokenizer, message["content"]), agent=agent)
        next_is_agent = i + 1 == len(turns) or turns[i + 1]["role"] == "assistant"
        if not agent and next_is_agent:  # the end of a run of observations
            transcript.boundaries.append(len(transcript.ids))
    return transcript


def render_turns(
    tokenizer, prompt: str | Sequence[Mapping[str, str]], turns: Sequence[tuple[str, str | None]], *,
    turn_opening: str = "", **chat_template_kwargs: Any,
) -> Transcript:
    """The `Transcript` of a prompt and its turns given as (agent text, observation or None) pairs."""
    messages = _as_messages(prompt)
    for i, turn in enumerate(turns):
        if len(turn) != 2:
            raise ValueError(f"turns[{i}] must be an (agent text, observation) pair")
        messages.append({"role": "assistant", "content": turn[0]})
        if turn[1] is not None:
            messages.append({"role": "user", "content": turn[1]})
    return render_messages(tokenizer, messages, turn_opening=turn_opening, **chat_template_kwargs)


def tool_message_content(observation: str) -> str:
    """An observation as the content of a chat ``tool`` message (the ``chat`` layout of TRL's ``environment_factory``
    rollouts and of ``HFAgent(transcript="chat")`` with tool-calling templates): without the protocol's result tags,
    which such a chat template writes itself (Qwen2.5 wraps tool results in ``<tool_response>``)."""
    text = observation.strip()
    for tag in _RESULT_TAGS.values():
        if text.startswith(f"<{tag}>") and text.endswith(f"</{tag}>"):
            return text[len(tag) + 2 : -(len(tag) + 3)].strip()
    return text


def transcript_text(tokenizer, messages: Sequence[Mapping[str, str]], **chat_template_kwargs: Any) -> str:
    """The text of `render_messages` (for display; the ids are the pieces tokenised apart, not this text's)."""
    prompt, turns = split_prompt(messages)
    return prompt_text(tokenizer, prompt, **chat_template_kwargs) + "".join(
        m["content"] if m["role"] == "assistant" else observation_text(m["content"]) for m in turns
    )
