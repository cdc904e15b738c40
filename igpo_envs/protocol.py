"""Action protocols: how an agent's turn text is parsed and how tool results are shown to it.

Two protocols are supported:

* ``"tag"`` (Search-R1): ``<search>query</search>`` / ``<answer>text</answer>``, results in ``<information>``.
* ``"tool_call"`` (official IGPO / Qwen): ``<tool_call>{"name": "search", "arguments": {"query": ...}}</tool_call>``,
  results in ``<tool_response>``; the answer is still ``<answer>text</answer>``.

`parse_action` is pure, linear-time and never raises: anything it cannot accept (unbalanced, crossed or nested
tags, bad JSON, text longer than the action space, ...) becomes an ``Action(kind="invalid")`` whose ``error`` says
why, which the env turns into a format penalty.

Search results are laid out in one of `OBSERVATION_LAYOUTS`: ``"igpo"`` (default) or ``"search-r1"`` (Search-R1's
exact text, see `format_passages`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from typing import NamedTuple

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

#: How search results are laid out in an observation: igpo's own (the default) or Search-R1's exact text.
OBSERVATION_LAYOUTS = ("igpo", "search-r1")

#: Longest turn text the parser reads (the env's action space admits no more); longer text is invalid unparsed.
MAX_ACTION_CHARS = 32_768

# Tags an agent may not leave unbalanced; result tags are written by the env, never by the agent.
_AGENT_TAGS = ("think", "search", "browse", "answer", "tool_call")
_RESULT_TAGS = {"tag": "information", "tool_call": "tool_response"}
# One pass over every protocol tag: parsing is linear in the text length whatever the text holds.
_TAG_PATTERN = re.compile(rf"<(/?)({'|'.join(_AGENT_TAGS + tuple(_RESULT_TAGS.values()))})>")
_AGENT_TAG_SET = frozenset(_AGENT_TAGS)
# The blocks that call a tool in each protocol (the other protocol's call blocks are plain text).
_CALL_TAGS = {"tag": frozenset(TOOLS), "tool_call": frozenset({"tool_call"})}
# The usual tag-protocol turn, one block and no other "<" anywhere: `parse_action` reads it in one match (linear: no
# two parts of the pattern can match the same characters) and gives what the full scan would.
_SINGLE_BLOCK = re.compile(r"[^<]*<(search|browse|answer)>([^<]*)</\1>[^<]*")


class Action(NamedTuple):
    """A parsed turn. ``kind`` is "search", "browse", "answer" or "invalid"; ``argument`` is the query, URL or answer.

    A named tuple: the parser builds one per turn, and a tuple is several times cheaper to make than a frozen
    dataclass."""

    kind: str
    argument: str = ""
    error: str | None = None
    think: str | None = None

    def as_dict(self) -> dict:
        return {"kind": self.kind, "argument": self.argument, "error": self.error}


_new_tuple = tuple.__new__  # builds a named tuple from all its fields at C speed


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def _scan_blocks(text: str) -> list[tuple[str, str]] | str:
    """The ``(tag, body)`` blocks of a turn in order, leaving out those inside a ``<think>`` (reasoning, no action);
    or why its tags are malformed: unbalanced, crossed, nested (a tag inside any block but ``<think>``, or a
    ``<think>`` inside a ``<think>``), or a result tag only the env may write."""
    # One regex split: [text, "/" or "", tag, text, "/" or "", tag, ..., text]; positions are summed piece lengths.
    pieces = _TAG_PATTERN.split(text)
    blocks: list[tuple[str, str]] = []
    open_tags: list[tuple[str, int]] = []  # (tag, where its body starts)
    position = len(pieces[0])
    for k in range(1, len(pieces), 3):
        closing, tag = pieces[k], pieces[k + 1]
        start = position
        position += len(closing) + len(tag) + 2
        if tag not in _AGENT_TAG_SET:
            if not closing:  # a stray closing result tag is plain text
                return f"the agent wrote a <{tag}> block; only the environment may"
        elif not closing:
            if open_tags and (open_tags[-1][0] != "think" or tag == "think"):
                return f"nested tags: <{tag}> inside <{open_tags[-1][0]}> at position {start}"
            open_tags.append((tag, position))
        elif not open_tags:
            return f"unbalanced <{tag}> tags: </{tag}> at position {start} closes nothing"
        elif open_tags[-1][0] != tag:
            return f"unbalanced <{open_tags[-1][0]}> tags: closed by </{tag}> at position {start}"
        else:
            _, body_start = open_tags.pop()
            if not open_tags:
                blocks.append((tag, text[body_start:start]))
        position += len(pieces[k + 2])
    if open_tags:
        tag, body_start = open_tags[-1]
        return f"unbalanced <{tag}> tags: <{tag}> at position {body_start - len(tag) - 2} is never closed"
    return blocks


def _load_json(text: str) -> tuple[object, str | None]:
    """``json.loads`` that reports instead of raising: deep nesting (RecursionError) and integers beyond Python's
    digit limit (ValueError) are malformed output like any other."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at position {exc.pos}"
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        return None, str(exc)


def _parse_tool_call(body: str, tools: Collection[str]) -> Action:
    call, problem = _load_json(body)
    if problem is not None:
        return Action("invalid", error=f"tool call is not valid JSON: {problem}")
    if not isinstance(call, dict):
        return Action("invalid", error="tool call must be a JSON object with 'name' and 'arguments'")
    name, arguments = call.get("name"), call.get("arguments")
    if name not in tools:
        return Action("invalid", error=f"unknown tool {name!r}; available: {sorted(tools)}")
    if isinstance(arguments, str):  # some models emit the arguments object as a JSON string
        arguments, problem = _load_json(arguments)
        if problem is not None:
            return Action("invalid", error="tool call 'arguments' is a string that is not a JSON object")
    key = _TOOL_ARGUMENT[name]
    if not isinstance(arguments, dict) or not isinstance(arguments.get(key), str):
        return Action("invalid", error=f"tool {name!r} needs arguments {{{key!r}: <string>}}")
    value = arguments[key].strip()
    if not value:
        return Action("invalid", error=f"empty {key} in {name!r} call")
    return Action(name, value)


def parse_action(
    text: str, protocol: str = "tag", tools: Collection[str] = ("search",), max_chars: int = MAX_ACTION_CHARS
) -> Action:
    """Parse one turn of agent text into an `Action`. Never raises on any input text, and runs in time linear in its
    length; text longer than ``max_chars`` is invalid without being read."""
    if protocol not in _CALL_TAGS:
        _check_protocol(protocol)
    if not isinstance(text, str):
        return Action("invalid", error=f"action must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        return Action("invalid", error=f"action is {len(text)} characters long; the limit is {max_chars}")
    if protocol == "tag":
        single = _SINGLE_BLOCK.fullmatch(text)
        if single is not None:
            tag, body = single.groups()
            argument = body.strip()
            if argument and (tag == "answer" or tag in tools):
                return _new_tuple(Action, (tag, argument, None, None))  # = Action(tag, argument), without its frame
    blocks = _scan_blocks(text)
    if isinstance(blocks, str):
        return Action("invalid", error=blocks)
    thoughts, answers, calls = [], [], []
    call_tags = _CALL_TAGS[protocol]
    for tag, body in blocks:
        if tag == "think":
            thoughts.append(body.strip())
        elif tag == "answer":
            answers.append(body)
        elif tag in call_tags:
            calls.append((tag, body))
    think = "\n".join(thoughts) or None
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
        return _parse_tool_call(body.strip(), tools)._replace(think=think)
    if tool not in tools:
        return Action("invalid", error=f"unknown tool <{tool}>; available: {sorted(tools)}", think=think)
    query = body.strip()
    if not query:
        return Action("invalid", error=f"empty <{tool}> query", think=think)
    return Action(tool, query, think=think)


def _check_layout(layout: str) -> None:
    if layout not in OBSERVATION_LAYOUTS:
        raise ValueError(f"unknown observation layout {layout!r}; expected one of {OBSERVATION_LAYOUTS}")


def wrap_result(text: str, protocol: str, layout: str = "igpo") -> str:
    """Wrap a tool result (passages, a page, or a notice) in the protocol's result tags: on lines of their own
    (``"igpo"``), or as Search-R1 appends it, tight inside the tags with a blank line either side (``"search-r1"``)."""
    tag = _RESULT_TAGS.get(protocol)
    if tag is None:
        _check_protocol(protocol)
    if layout == "igpo":
        return f"<{tag}>\n{text.strip()}\n</{tag}>"
    _check_layout(layout)
    return f"\n\n<{tag}>{text.strip()}</{tag}>\n\n"


def observation_text(observation: str) -> str:
    """How an observation is spliced into the policy's running text after its turn. The trainer's rollouts, the SFT
    warm start and belief scoring all use this one rendering. An ``"igpo"``-layout observation goes on lines of its
    own; a ``"search-r1"``-layout one already carries Search-R1's surrounding blank lines and is spliced verbatim."""
    if observation.startswith("\n"):
        return observation
    return "\n" + observation.strip() + "\n"


def _doc_opening(rank: int) -> str:
    """What comes before the rank-th passage's title in the ``"igpo"`` layout (a newline ends the one before)."""
    return "Doc 1 (Title: " if rank == 1 else f"\nDoc {rank} (Title: "


_DOC_OPENINGS = tuple(_doc_opening(rank) for rank in range(1, 33))  # ranks 1..32


def format_passages(passages: Sequence[Passage], layout: str = "igpo") -> str:
    """The passages of one search as text.

    ``"igpo"`` (default): one ``Doc i (Title: t) text`` line per passage, the title unquoted, ``No results found.``
    for none. ``"search-r1"``: Search-R1's own rendering, ``Doc i(Title: <first line of contents>) <rest>``, which for
    wiki-18 rows shows the quoted title, ``Doc 1(Title: "Paris") ...``, and nothing at all for no results.
    """
    if layout == "igpo":
        if not passages:
            return "No results found."
        # One join over flat pieces costs half of one f-string per passage joined by newlines (a search's hot path).
        pieces = []
        for i, p in enumerate(passages):
            pieces += (_DOC_OPENINGS[i] if i < 32 else _doc_opening(i + 1), p.title, ") ", p.text)
        return "".join(pieces)
    _check_layout(layout)  # "search-r1"
    rendered = []
    for i, passage in enumerate(passages, start=1):
        title, _, text = passage.contents.partition("\n")
        rendered.append(f"Doc {i}(Title: {title}) {text}\n")
    return "".join(rendered)


def format_observation(passages: Sequence[Passage], protocol: str, layout: str = "igpo") -> str:
    """The observation an agent sees after a search (see `format_passages` and `wrap_result` for the layouts)."""
    return wrap_result(format_passages(passages, layout), protocol, layout)


#: The probe styles of `answer_probe`.
PROBE_STYLES = ("answer", "official")

#: What the official IGPO rollouts write at the start of every assistant turn (`IGPOConfig.force_think`).
THINK_OPEN = "<think>"

#: A system prompt in the format of the official IGPO rollouts (`IGPOConfig.system_prompt="official"`, tool_call
#: protocol): every turn is a <think> block followed by either an <answer> or one <tool_call>, with the tool described
#: by its JSON function signature. It describes igpo's `search` tool (a string query), where the official prompt
#: describes a `web_search` tool taking a list of queries; the user message then holds only the question.
OFFICIAL_SYSTEM_PROMPT = (
    "## Background information\n"
    "* You are a research assistant.\n\n"
    "The question you receive is a complex one that needs research before it can be answered. You have this tool:\n"
    "- search: searches a knowledge corpus and returns the most relevant passages.\n\n"
    "You need not answer at once: first think about your research plan or what to search next.\n"
    "Write every reply in exactly one of these two formats:\n\n"
    "<think>\nYOUR REASONING\n</think>\n<answer>\nYOUR ANSWER, ONCE YOU HAVE ENOUGH INFORMATION\n</answer>\n\n"
    "or\n\n"
    "<think>\nYOUR REASONING\n</think>\n<tool_call>\nONE TOOL CALL IN THE FORMAT BELOW\n</tool_call>\n\n"
    "Keep to these formats strictly. Inside <answer></answer> write only the final answer (words, a number or a "
    "short phrase), with no explanation; answer a yes-or-no question with yes or no only.\n\n"
    "# Tools\n\n"
    "The function signature of the tool is inside <tools></tools>:\n<tools>\n"
    '{"type": "function", "function": {"name": "search", "description": "Search the knowledge corpus.", '
    '"parameters": {"type": "object", "properties": {"query": {"type": "string", "description": '
    '"The search query."}}, "required": ["query"]}}}\n'
    "</tools>\n\n"
    "To call it, write a JSON object with the function name and its arguments inside <tool_call></tool_call>:\n"
    '<tool_call>\n{"name": "search", "arguments": {"query": "your query"}}\n</tool_call>'
)


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
    ``style="official"`` is the official IGPO code's probe, a turn that opens ``<think>``, says it can answer now,
    closes it and answers (the official rollouts write the ``<think>`` into the context, which is the same text:
    beliefs are scored before any forced ``<think>``).
    """
    _check_protocol(protocol)
    if style == "answer":
        return "<answer> ", answer, " </answer>"
    if style == "official":
        return THINK_OPEN + "\nNow there's enough information to answer\n</think>\n<answer>\n", answer, "\n</answer>"
    raise ValueError(f"unknown probe style {style!r}; expected one of {PROBE_STYLES}")
