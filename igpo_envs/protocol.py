"""Action protocols: how an agent's turn text is parsed and how tool results are shown to it.

Two protocols are supported:

* ``"tag"`` (Search-R1): ``<search>query</search>`` / ``<answer>text</answer>``, results in ``<information>``.
* ``"tool_call"`` (official IGPO / Qwen): ``<tool_call>{"name": "search", "arguments": {"query": ...}}</tool_call>``,
  results in ``<tool_response>``; the answer is still ``<answer>text</answer>``.

`parse_action` is pure and never raises: anything it cannot accept becomes an ``Action(kind="invalid")`` whose
``error`` says why, which the env turns into a format penalty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from igpo_envs.types import Passage

PROTOCOLS = ("tag", "tool_call")
TOOLS = ("search", "browse")

# Which argument each tool takes in the tool_call protocol.
_TOOL_ARGUMENT = {"search": "query", "browse": "url"}

_TAG_PROMPT = (
    "Answer the question below. Think step by step inside <think> </think> whenever you receive new information. "
    "When you are missing knowledge, search by writing <search> your query </search>; the top results come back "
    "inside <information> </information>. Search as often as you need. When you know the answer, write only the "
    "answer inside <answer> </answer>, for example <answer> Paris </answer>.\nQuestion: {question}\n"
)
_TOOL_CALL_PROMPT = (
    "Answer the question below. You can call a search tool by writing\n"
    '<tool_call>{"name": "search", "arguments": {"query": "your query"}}</tool_call>\n'
    "and the results come back inside <tool_response> </tool_response>. Call it as often as you need, one call per "
    "turn. When you know the answer, write only the answer inside <answer> </answer>, for example "
    "<answer> Paris </answer>.\nQuestion: {question}\n"
)
PROMPT_TEMPLATES = {"tag": _TAG_PROMPT, "tool_call": _TOOL_CALL_PROMPT}

# Tags an agent may not leave unbalanced; result tags are written by the env, never by the agent.
_AGENT_TAGS = ("think", "search", "browse", "answer", "tool_call")
_RESULT_TAGS = {"tag": "information", "tool_call": "tool_response"}


@dataclass(frozen=True)
class Action:
    """A parsed turn. ``kind`` is "search", "browse", "answer" or "invalid"; ``argument`` is the query, URL or answer."""

    kind: str
    argument: str = ""
    error: str | None = None
    think: str | None = None

    @property
    def is_tool(self) -> bool:
        return self.kind in TOOLS

    def as_dict(self) -> dict:
        return {"kind": self.kind, "argument": self.argument, "error": self.error}


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def _blocks(tag: str, text: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)


def _unbalanced(text: str, tags: Sequence[str]) -> str | None:
    for tag in tags:
        opened, closed = text.count(f"<{tag}>"), text.count(f"</{tag}>")
        if opened != closed:
            return f"unbalanced <{tag}> tags ({opened} opening, {closed} closing)"
    return None


def _parse_tool_call(body: str, tools: Collection[str]) -> Action:
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        return Action("invalid", error=f"tool call is not valid JSON: {exc.msg} at position {exc.pos}")
    if not isinstance(call, dict):
        return Action("invalid", error="tool call must be a JSON object with 'name' and 'arguments'")
    name, arguments = call.get("name"), call.get("arguments")
    if name not in tools:
        return Action("invalid", error=f"unknown tool {name!r}; available: {sorted(tools)}")
    if isinstance(arguments, str):  # some models emit the arguments object as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return Action("invalid", error="tool call 'arguments' is a string that is not a JSON object")
    key = _TOOL_ARGUMENT[name]
    if not isinstance(arguments, dict) or not isinstance(arguments.get(key), str):
        return Action("invalid", error=f"tool {name!r} needs arguments {{{key!r}: <string>}}")
    value = arguments[key].strip()
    if not value:
        return Action("invalid", error=f"empty {key} in {name!r} call")
    return Action(name, value)


def parse_action(text: str, protocol: str = "tag", tools: Collection[str] = ("search",)) -> Action:
    """Parse one turn of agent text into an `Action`. Never raises on any input text."""
    _check_protocol(protocol)
    if not isinstance(text, str):
        return Action("invalid", error=f"action must be a string, got {type(text).__name__}")
    if error := _unbalanced(text, _AGENT_TAGS):
        return Action("invalid", error=error)
    for result_tag in _RESULT_TAGS.values():
        if f"<{result_tag}>" in text:
            return Action("invalid", error=f"the agent wrote a <{result_tag}> block; only the environment may")
    thoughts = _blocks("think", text)
    think = "\n".join(t.strip() for t in thoughts) or None
    # Tool and answer tags inside <think> are reasoning, not actions.
    outside = re.sub(r"<think>.*?</think>", " ", text, flags=re.DOTALL)

    answers = _blocks("answer", outside)
    if protocol == "tag":
        calls = [(tool, body) for tool in TOOLS for body in _blocks(tool, outside)]
    else:
        calls = [("tool_call", body) for body in _blocks("tool_call", outside)]
    if answers and calls:
        return Action("invalid", error="the turn contains both a tool call and an answer", think=think)
    if len(answers) + len(calls) > 1:
        return Action("invalid", error="the turn contains more than one action; use one per turn", think=think)
    if answers:
        answer = answers[0].strip()
        if not answer:
            return Action("invalid", error="empty <answer>", think=think)
        return Action("answer", answer, think=think)
    if not calls:
        return Action("invalid", error="no action found: expected a tool call or an <answer>", think=think)
    tool, body = calls[0]
    if protocol == "tool_call":
        action = _parse_tool_call(body.strip(), tools)
        return Action(action.kind, action.argument, action.error, think)
    if tool not in tools:
        return Action("invalid", error=f"unknown tool <{tool}>; available: {sorted(tools)}", think=think)
    if not body.strip():
        return Action("invalid", error=f"empty <{tool}> query", think=think)
    return Action(tool, body.strip(), think=think)


def wrap_result(text: str, protocol: str) -> str:
    """Wrap a tool result (passages, a page, or a notice) in the protocol's result tags."""
    _check_protocol(protocol)
    tag = _RESULT_TAGS[protocol]
    return f"<{tag}>\n{text.strip()}\n</{tag}>"


def observation_text(observation: str) -> str:
    """How an observation is spliced into the policy's running text after its turn (Search-R1 layout: inline, on
    its own lines). The trainer's rollouts, the SFT warm start and belief scoring all use this one rendering."""
    return "\n" + observation.strip() + "\n"


def format_passages(passages: Sequence[Passage]) -> str:
    """Search-R1's passage layout: one ``Doc i (Title: t) text`` line per passage."""
    if not passages:
        return "No results found."
    return "\n".join(f"Doc {i} (Title: {p.title}) {p.text}" for i, p in enumerate(passages, start=1))


def format_observation(passages: Sequence[Passage], protocol: str) -> str:
    """The observation an agent sees after a search."""
    return wrap_result(format_passages(passages), protocol)


def render_prompt(question: str, protocol: str = "tag", template: str | None = None) -> str:
    """The task prompt shown at reset: instructions plus the question. ``template`` must contain ``{question}``."""
    _check_protocol(protocol)
    template = template if template is not None else PROMPT_TEMPLATES[protocol]
    if "{question}" not in template:
        raise ValueError("prompt template must contain the placeholder '{question}'")
    return template.replace("{question}", question)


def answer_probe(answer: str, protocol: str = "tag", style: str = "answer") -> tuple[str, str, str]:
    """The text the policy would write to answer now, split as (prefix, answer, suffix).

    Information gain scores only the ``answer`` part. ``style="answer"`` is the bare answer turn of the protocol;
    ``style="official"`` is the probe of the official IGPO code (it closes an open ``<think>`` first).
    """
    _check_protocol(protocol)
    if style == "answer":
        return "<answer> ", answer, " </answer>"
    if style == "official":
        return "\nNow there's enough information to answer\n</think>\n<answer>\n", answer, "\n</answer>"
    raise ValueError(f"unknown probe style {style!r}; expected 'answer' or 'official'")
