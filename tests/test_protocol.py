"""Contract tests of igpo_envs.protocol: parsing never raises, every error path, rendering."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from igpo_envs.protocol import answer_probe, format_observation, parse_action, render_prompt, wrap_result
from igpo_envs.types import Passage


@pytest.mark.parametrize(
    ("text", "kind", "argument"),
    [
        ("<search> capital of France </search>", "search", "capital of France"),
        ("<think>hmm <search>x</search></think><answer> Paris </answer>", "answer", "Paris"),
        ("<think>plan</think>\n<search>q</search>", "search", "q"),
    ],
)
def test_tag_protocol_valid(text, kind, argument):
    action = parse_action(text, "tag")
    assert (action.kind, action.argument, action.error) == (kind, argument, None)


def test_tool_call_protocol_valid():
    call = {"name": "search", "arguments": {"query": "capital of France"}}
    assert parse_action(f"<tool_call>{json.dumps(call)}</tool_call>", "tool_call").argument == "capital of France"
    as_string = {"name": "search", "arguments": json.dumps({"query": "q"})}
    assert parse_action(f"<tool_call>{json.dumps(as_string)}</tool_call>", "tool_call").kind == "search"
    browse = {"name": "browse", "arguments": {"url": "https://x.org"}}
    call = f"<tool_call>{json.dumps(browse)}</tool_call>"
    assert parse_action(call, "tool_call", ("search", "browse")).kind == "browse"


@pytest.mark.parametrize(
    ("protocol", "text", "fragment"),
    [
        ("tag", "<search> open", "unbalanced <search>"),
        ("tag", "<answer>a</answer></answer>", "unbalanced <answer>"),
        ("tag", "<search>q</search><answer>a</answer>", "both a tool call and an answer"),
        ("tag", "<search> </search>", "empty <search>"),
        ("tag", "<answer> </answer>", "empty <answer>"),
        ("tag", "<browse>http://a</browse>", "unknown tool <browse>"),
        ("tag", "<information>x</information><answer>a</answer>", "only the environment"),
        ("tag", "", "no action"),
        ("tool_call", "<tool_call>{bad</tool_call>", "not valid JSON"),
        ("tool_call", "<tool_call>[1]</tool_call>", "JSON object"),
        ("tool_call", '<tool_call>{"name": "calc", "arguments": {}}</tool_call>', "unknown tool"),
        ("tool_call", '<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>', "needs arguments"),
        ("tool_call", '<tool_call>{"name": "search", "arguments": {"query": " "}}</tool_call>', "empty query"),
        ("tool_call", '<tool_call>{"name": "search", "arguments": "not json"}</tool_call>', "string that is not"),
    ],
)
def test_error_paths(protocol, text, fragment):
    action = parse_action(text, protocol)
    assert action.kind == "invalid" and fragment in action.error


def test_non_string_action():
    assert parse_action(None, "tag").kind == "invalid"
    with pytest.raises(ValueError, match="unknown protocol"):
        parse_action("x", "xml")


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from(list("<>/{}\":, abc") + ["<search>", "</search>", "<answer>", "</answer>",
                                                              "<tool_call>", "</tool_call>", "<think>", "</think>"])
                    | st.text(max_size=5), max_size=40).map("".join),
       protocol=st.sampled_from(["tag", "tool_call"]))
def test_parse_never_raises(text, protocol):
    action = parse_action(text, protocol)
    assert action.kind in ("search", "answer", "invalid", "browse")
    assert (action.kind == "invalid") == (action.error is not None)


def test_rendering():
    passages = [Passage("1", "Paris", "Capital of France."), Passage("2", "Lyon", "A city.")]
    obs = format_observation(passages, "tag")
    assert obs == "<information>\nDoc 1 (Title: Paris) Capital of France.\nDoc 2 (Title: Lyon) A city.\n</information>"
    assert format_observation([], "tool_call") == "<tool_response>\nNo results found.\n</tool_response>"
    assert wrap_result(" x ", "tool_call") == "<tool_response>\nx\n</tool_response>"
    assert render_prompt("Q?", "tag", "Ask: {question}") == "Ask: Q?"
    assert "Question: Q?" in render_prompt("Q?", "tool_call")
    assert answer_probe("Paris", "tag") == ("<answer> ", "Paris", " </answer>")
