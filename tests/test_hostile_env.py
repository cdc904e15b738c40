"""Hostile input and faults in the envs: what a policy or a user may throw at them gets a format penalty or a clear
error, never a crash, a hang or a silently wrong result. Each test reproduces a failure seen before."""

from __future__ import annotations

import json
import math
import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import ITEMS, PASSAGES, KeywordRetriever
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory

import igpo_envs  # noqa: F401
from igpo_envs.env import NoRetrieverWarning, SearchQAEnv, text_space
from igpo_envs.protocol import MAX_ACTION_CHARS, format_observation, observation_text, parse_action
from igpo_envs.types import Passage
from igpo_envs.vector import SearchQAVectorEnv

IGPO_IDS = sorted(env_id for env_id in gym.registry if env_id.startswith("igpo/"))
DEEP_NESTING = "<tool_call>" + "[" * 1000 + "</tool_call>"
HUGE_INTEGER = '<tool_call>{"name": "search", "arguments": {"query": "x", "n": ' + "9" * 5000 + "}}</tool_call>"


def quiet_make(env_id, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoRetrieverWarning)
        return gym.make(env_id, **kwargs)


# ---------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(("text", "fragment"), [
    (DEEP_NESTING, "nested too deeply"),  # was RecursionError
    (HUGE_INTEGER, "4300 digits"),  # was ValueError: Exceeds the limit (4300 digits)
    ('<tool_call>{"name": "search", "arguments": "' + "[" * 1000 + '"}</tool_call>', "not a JSON object"),
])
def test_tool_call_json_that_python_refuses_is_a_format_error(text, fragment):
    action = parse_action(text, "tool_call")
    assert action.kind == "invalid" and fragment in action.error


@pytest.mark.parametrize("env_id", IGPO_IDS)
def test_hostile_tool_calls_get_the_format_penalty_in_every_env(env_id):
    kwargs = {"questions": ITEMS, "retriever": KeywordRetriever(PASSAGES)} if env_id == "igpo/SearchQA-v0" else {}
    env = quiet_make(env_id, protocol="tool_call", format_penalty=-1.5, **kwargs)
    for text in (DEEP_NESTING, HUGE_INTEGER):
        env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(text)
        assert (obs, reward, terminated, truncated) == ("", -1.5, True, False) and info["error"]


def test_one_hostile_action_does_not_break_the_batch_step():
    retriever = KeywordRetriever(PASSAGES)
    venv = SearchQAVectorEnv(3, questions=ITEMS, retriever=retriever, protocol="tool_call")
    venv.reset(seed=0)
    search = '<tool_call>{"name": "search", "arguments": {"query": "Zorblat"}}</tool_call>'
    obs, rewards, terminated, _, _ = venv.step([search, DEEP_NESTING, HUGE_INTEGER])
    assert terminated.tolist() == [False, True, True] and rewards.tolist() == [0.0, -2.0, -2.0]
    assert "Zorblat" in obs[0] and retriever.calls == [["Zorblat"]]


@pytest.mark.parametrize("text", [
    "</search>" * 120_000 + "<search>" * 120_000,  # ~2 MB; 272 KB of it took 16 s with the old parser
    "<search>" * 250_000 + "</search>" * 250_000,
    "<think>" + "<search>a</search>" * 100_000 + "</think><answer>x</answer>",
    "<answer>" + "<" * 1_000_000,
    "<tool_call>" + "{" * 500_000 + "</tool_call>",
])
def test_parsing_is_linear_on_adversarial_text(text):
    start = time.perf_counter()
    parse_action(text, "tag", max_chars=len(text))
    parse_action(text, "tool_call", max_chars=len(text))
    assert time.perf_counter() - start < 2.0


def test_text_longer_than_the_action_space_is_refused_unread(toy_items, toy_retriever):
    text = "<answer> Quenn </answer>" + " " * MAX_ACTION_CHARS
    action = parse_action(text, "tag")
    assert action.kind == "invalid" and f"limit is {MAX_ACTION_CHARS}" in action.error
    env = SearchQAEnv(toy_items, retriever=toy_retriever)
    assert text not in env.action_space  # the same limit as the space
    env.reset(options={"question_id": "q0"})
    assert env.step(text)[1:3] == (-2.0, True)
    assert parse_action(text[:MAX_ACTION_CHARS], "tag").argument == "Quenn"


@pytest.mark.parametrize(("text", "fragment"), [
    ("<search><search>x</search></search>", "nested tags: <search> inside <search>"),  # was a search for "<search>x"
    ("<answer><search>x</search></answer>", "nested tags: <search> inside <answer>"),
    ("<think><think>a</think></think><answer>b</answer>", "nested tags: <think> inside <think>"),
    ("<think><search>x</think></search>", "unbalanced <search> tags: closed by </think>"),
    ("</answer><answer>a", "</answer> at position 0 closes nothing"),
    ("<think>a</think><search>q", "<search> at position 16 is never closed"),
])
def test_nested_or_crossed_tags_are_malformed(text, fragment):
    action = parse_action(text, "tag")
    assert action.kind == "invalid" and fragment in action.error


def test_actions_inside_think_are_still_reasoning():
    action = parse_action("<think>maybe <search>a</search> or <answer>b</answer></think><search> c </search>")
    think = "maybe <search>a</search> or <answer>b</answer>"
    assert (action.kind, action.argument, action.think) == ("search", "c", think)


# ---------------------------------------------------------------------------------------------- silent coercions
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"topk": 1.9}, TypeError, "topk must be an integer, got 1.9"),
    ({"topk": True}, TypeError, "topk must be an integer, got True"),
    ({"topk": 0}, ValueError, "topk must be >= 1"),
    ({"max_turns": 2.5}, TypeError, "max_turns must be an integer"),
    ({"format_penalty": math.nan}, ValueError, "format_penalty must be a finite number"),
    ({"format_penalty": -math.inf}, ValueError, "format_penalty must be a finite number"),
    ({"format_penalty": True}, ValueError, "format_penalty must be a finite number"),
    ({"no_answer_reward": math.nan}, ValueError, "no_answer_reward must be a finite number"),
    ({"tools": "search"}, ValueError, "tools must be a non-empty sequence"),
    ({"observation_layout": "searchr1"}, ValueError, "observation_layout"),
])
def test_env_arguments_are_not_coerced(toy_items, toy_retriever, kwargs, error, match):
    with pytest.raises(error, match=match):
        SearchQAEnv(toy_items, retriever=toy_retriever, **kwargs)


def test_integer_like_arguments_still_work(toy_items, toy_retriever):
    env = SearchQAEnv(toy_items, retriever=toy_retriever, topk=np.int64(2), max_turns=np.int32(3), format_penalty=-1)
    assert (env.topk, env.max_turns, env.format_penalty) == (2, 3, -1.0) and type(env.topk) is int
    assert env.reset(options={"question_index": np.int64(1)})[1]["question_id"] == "q1"


@pytest.mark.parametrize("index", [1.7, True, "1"])
def test_question_index_is_not_coerced(toy_env, index):
    with pytest.raises(TypeError, match="question_index"):
        toy_env.reset(options={"question_index": index})


def test_paper_env_with_empty_questions_is_an_error():
    with pytest.raises(ValueError, match="questions is empty"):  # was: the shipped 512 NQ questions, silently
        quiet_make("igpo/NQ-v0", questions=[])


def test_vector_num_envs_is_not_coerced(toy_items, toy_retriever):
    with pytest.raises(TypeError, match="num_envs must be an integer"):
        SearchQAVectorEnv(2.5, questions=toy_items, retriever=toy_retriever)


# ---------------------------------------------------------------------------------------------- gymnasium plumbing
def play_vector(mode, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoRetrieverWarning)
        venv = gym.make_vec("igpo/Bamboogle-v0", num_envs=2, vectorization_mode=mode, **kwargs)
    try:
        first, _ = venv.reset(seed=3)
        second, *_ = venv.step(["<search> a </search>", "<answer> b </answer>"])
        third, *_ = venv.step(["<answer> c </answer>", "<answer> d </answer>"])  # sub-env 1 autoresets
        return [tuple(first), tuple(second), tuple(third)]
    finally:
        venv.close()


def test_async_vector_env_returns_what_sync_returns_by_default():
    """Gymnasium 1.4's shared memory for `Text` spaces returned 1,000,000 NULs per observation."""
    expected = play_vector("sync")
    assert "Question:" in expected[0][0] and expected[1][1] == "" and "Question:" in expected[2][1]
    assert play_vector("async") == expected


def test_shared_text_memory_roundtrip():
    space = text_space(20)
    memory = create_shared_memory(space, n=3)
    view = read_from_shared_memory(space, memory, n=3)
    for i, text in enumerate(["héllo Ångström", "", "x" * 20]):
        write_to_shared_memory(space, i, text, memory)
    assert view == ("héllo Ångström", "", "x" * 20) and view[-1] == "x" * 20 and view[:1] == ("héllo Ångström",)
    write_to_shared_memory(space, 0, "new", memory)
    assert view[0] == "new"  # a live view, like Gymnasium's numpy views for Box spaces
    import copy

    snapshot = copy.deepcopy(view)
    assert type(snapshot) is tuple and snapshot == ("new", "", "x" * 20)
    for bad in ("x" * 21, "smile \U0001F600"):
        with pytest.raises(ValueError):
            write_to_shared_memory(space, 1, bad, memory)


@pytest.mark.parametrize("env_id", IGPO_IDS)
def test_specs_serialise_to_json(env_id):
    spec = gym.spec(env_id)
    assert EnvSpec.from_json(spec.to_json()) == spec  # was: "Callable found ... vector_entry_point"
    if env_id != "igpo/SearchQA-v0":  # the others build without arguments
        assert json.loads(quiet_make(env_id).spec.to_json())["id"] == env_id


def test_vector_spec_serialises_and_rebuilds():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoRetrieverWarning)
        venv = gym.make_vec("igpo/PopQA-v0", num_envs=2, split="dev")
        assert isinstance(venv.unwrapped, SearchQAVectorEnv)
        again = gym.make_vec(EnvSpec.from_json(venv.spec.to_json()))
    assert again.num_envs == 2 and again.unwrapped.items == venv.unwrapped.items


# ---------------------------------------------------------------------------------------------- Search-R1 layout
SEARCH_R1_PASSAGES = [Passage("1", "Paris", "Capital of France.\nSecond line."), Passage("2", "Lyon", "A city.")]


def test_search_r1_observation_layout_is_search_r1s_text():
    # Search-R1 appends f'\n\n<information>{docs.strip()}</information>\n\n', each doc
    # f"Doc {i}(Title: {first line of contents}) {rest of contents}\n".
    expected = ('\n\n<information>Doc 1(Title: "Paris") Capital of France.\nSecond line.\n'
                'Doc 2(Title: "Lyon") A city.</information>\n\n')
    assert format_observation(SEARCH_R1_PASSAGES, "tag", "search-r1") == expected
    assert format_observation([], "tag", "search-r1") == "\n\n<information></information>\n\n"
    assert observation_text(expected) == expected  # spliced verbatim into the policy's text
    default = format_observation(SEARCH_R1_PASSAGES, "tag")
    assert default.startswith("<information>\nDoc 1 (Title: Paris) Capital")  # "igpo", the default
    assert observation_text(default) == "\n" + default + "\n"
    with pytest.raises(ValueError, match="unknown observation layout"):
        format_observation(SEARCH_R1_PASSAGES, "tag", "searchr1")


def test_env_observation_layout_option(toy_items):
    env = SearchQAEnv(toy_items, retriever=KeywordRetriever(SEARCH_R1_PASSAGES), observation_layout="search-r1",
                      topk=2)
    env.reset(seed=0)
    obs, *_ = env.step("<search> Paris Lyon </search>")
    assert obs == format_observation(SEARCH_R1_PASSAGES, "tag", "search-r1") and obs in env.observation_space
    assert env.spawn().observation_layout == "search-r1"
    assert SearchQAEnv(toy_items, retriever=KeywordRetriever(SEARCH_R1_PASSAGES)).observation_layout == "igpo"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_docs": 200.5}, "num_docs must be an integer"),  # int() would silently build another world
    ({"num_questions": True}, "num_questions must be an integer"),
    ({"hard_queries": "false"}, "hard_queries must be a bool"),  # bool("false") is True
    ({"hops": 1.5}, "hops must be in"),
    ({"hops": [1, True]}, "hops must be in"),
])
def test_synthetic_task_arguments_are_not_coerced(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        gym.make("igpo/SynthMultiHop-v0", **{"num_docs": 200, **kwargs})


@pytest.mark.parametrize("seed", [1.5, True, "7"])
def test_vector_seed_is_not_coerced(seed):
    venv = SearchQAVectorEnv(2, questions=ITEMS, retriever=KeywordRetriever(PASSAGES))
    with pytest.raises(TypeError, match="seed must be an integer"):
        venv.reset(seed=seed)
    assert list(venv.reset(seed=np.array([3, 4]))[1]["question_id"]) == list(venv.reset(seed=[3, 4])[1]["question_id"])
