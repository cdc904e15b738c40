"""SearchQAEnv logic, the registered ids, seeding, pinning, no-leak, check_env, vector envs."""

from __future__ import annotations

import importlib.util
import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import igpo_envs
import igpo_envs.env as env_module
from igpo_envs.env import NoRetrieverWarning, SearchQAEnv, step_batch
from igpo_envs.vector import SearchQAVectorEnv

PAPER_IDS = [f"igpo/{n}-v0" for n in ("NQ", "TriviaQA", "PopQA", "HotpotQA", "2Wiki", "Musique", "Bamboogle")]
HAS_BM25 = importlib.util.find_spec("igpo_envs.search.bm25") is not None
HAS_SYNTH = importlib.util.find_spec("igpo_envs.tasks.synthetic") is not None


def registered_ids():
    ids = ["igpo/SearchQA-v0", *PAPER_IDS]
    if HAS_BM25:
        ids.append("igpo/HotpotQA-Distractor-v0")
    if HAS_SYNTH:
        ids.append("igpo/SynthMultiHop-v0")
    return ids


def make_registered(env_id, **kwargs):
    if env_id == "igpo/SearchQA-v0":
        from conftest import ITEMS, PASSAGES, KeywordRetriever

        kwargs.setdefault("questions", ITEMS)
        kwargs.setdefault("retriever", KeywordRetriever(PASSAGES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoRetrieverWarning)
        return gym.make(env_id, **kwargs)


# ---------------------------------------------------------------------------------------------- episode logic
def test_search_then_answer(toy_env, toy_retriever):
    obs, info = toy_env.reset(options={"question_id": "q1"})
    assert "Where was the discoverer of the star Quenn born?" in obs
    assert info["messages"] == [{"role": "user", "content": obs}] and info["turn"] == 0
    obs, reward, terminated, truncated, info = toy_env.step("<think>find it</think><search> Quenn star </search>")
    assert obs.startswith("<information>") and "Doc 1 (Title: Quenn)" in obs
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["num_searches"] == 1 and info["queries"] == ["Quenn star"] and info["action"]["kind"] == "search"
    assert info["retrieved_ids"][0] == "p1" and info["gold_recall"] == 0.5
    assert info["corpus_hash"] == "keyword-test-corpus"
    assert [m["role"] for m in info["messages"]] == ["user", "assistant", "user"]
    obs, reward, terminated, truncated, info = toy_env.step("<answer> uppsala sweden </answer>")
    assert obs == "" and reward == 1.0 and terminated and not truncated
    assert info["em"] == 1.0 and info["f1"] == 1.0 and info["prediction"] == "uppsala sweden"
    assert info["golden_answers"] == ["Uppsala", "Uppsala, Sweden"] and info["turn"] == 2


def test_partial_answer_gets_f1_and_em_metric(toy_items, toy_retriever):
    env = SearchQAEnv(toy_items, retriever=toy_retriever)
    env.reset(options={"question_id": "q1"})
    _, reward, *_ , info = env.step("<answer> in Uppsala </answer>")  # F1 vs "Uppsala": p=1/2, r=1
    assert reward == pytest.approx(2 / 3) and info["em"] == 0.0
    env = SearchQAEnv(toy_items, retriever=toy_retriever, reward_metric="em")
    env.reset(options={"question_id": "q1"})
    assert env.step("<answer> in Uppsala </answer>")[1] == 0.0


def test_tool_call_protocol_uses_tool_role(toy_items, toy_retriever):
    env = SearchQAEnv(toy_items, retriever=toy_retriever, protocol="tool_call")
    obs, _ = env.reset(options={"question_index": 0})
    assert "<tool_call>" in obs
    call = json.dumps({"name": "search", "arguments": {"query": "Zorblat"}})
    obs, reward, terminated, _, info = env.step(f"<tool_call>{call}</tool_call>")
    assert obs.startswith("<tool_response>") and "Zorblat" in obs and not terminated
    assert info["messages"][-1]["role"] == "tool"


@pytest.mark.parametrize(
    ("protocol", "text", "fragment"),
    [
        ("tag", "<search> Quenn", "unbalanced"),
        ("tag", "<answer> a </answer><search> b </search>", "both"),
        ("tag", "<search>   </search>", "empty"),
        ("tag", "<browse> http://example.org </browse>", "unknown tool"),
        ("tag", "just some words", "no action"),
        ("tag", "<search>a</search><search>b</search>", "more than one"),
        ("tool_call", "<tool_call>{not json}</tool_call>", "not valid JSON"),
        ("tool_call", '<tool_call>{"name": "calc", "arguments": {"query": "x"}}</tool_call>', "unknown tool"),
        ("tool_call", '<tool_call>{"name": "search", "arguments": {"query": ""}}</tool_call>', "empty"),
        ("tool_call", '<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call><answer>y</answer>',
         "both"),
    ],
)
def test_format_errors_terminate_with_penalty(toy_items, toy_retriever, protocol, text, fragment):
    env = SearchQAEnv(toy_items, retriever=toy_retriever, protocol=protocol, format_penalty=-1.5)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(text)
    assert (obs, reward, terminated, truncated) == ("", -1.5, True, False)
    assert fragment in info["error"] and info["action"]["kind"] == "invalid"
    assert info["em"] == 0.0 and info["f1"] == 0.0 and info["prediction"] is None


def test_zero_format_penalty_allowed(toy_items, toy_retriever):
    env = SearchQAEnv(toy_items, retriever=toy_retriever, format_penalty=0)
    env.reset(seed=0)
    assert env.step("garbage")[1:3] == (0.0, True)


def test_truncation_at_max_turns(toy_items, toy_retriever):
    env = SearchQAEnv(toy_items, retriever=toy_retriever, max_turns=3)
    env.reset(seed=0)
    for turn in range(1, 4):
        obs, reward, terminated, truncated, info = env.step("<search> Zorblat </search>")
        # the turn limit without an answer: no_answer_reward, by default the format penalty (official IGPO)
        assert reward == (-2.0 if turn == 3 else 0.0) and not terminated and truncated == (turn == 3)
    assert info["repeated_queries"] == 2 and info["num_searches"] == 3 and info["f1"] == 0.0
    with pytest.raises(ResetNeeded):
        env.step("<answer> Quenn </answer>")


def test_step_before_reset_raises(toy_env):
    with pytest.raises(ResetNeeded):
        toy_env.step("<answer> x </answer>")


def test_answer_on_last_turn_still_counts(toy_items, toy_retriever):
    env = SearchQAEnv(toy_items, retriever=toy_retriever, max_turns=2)
    env.reset(options={"question_id": "q0"})
    env.step("<search> Zorblat </search>")
    _, reward, terminated, truncated, _ = env.step("<answer> Quenn </answer>")
    assert (reward, terminated, truncated) == (1.0, True, False)


def test_browse_routes_to_browser_and_errors_become_observations(toy_items, toy_retriever):
    def browser(url):
        if "bad" in url:
            raise ConnectionError("refused")
        return f"page of {url}"

    env = SearchQAEnv(toy_items, retriever=toy_retriever, tools=("search", "browse"), browser=browser)
    env.reset(seed=0)
    obs, reward, terminated, *_ = env.step("<browse> https://example.org/a </browse>")
    assert "page of https://example.org/a" in obs and reward == 0.0 and not terminated
    obs, *_ = env.step("<browse> https://bad.example </browse>")
    assert "ConnectionError: refused" in obs
    env2 = SearchQAEnv(toy_items, retriever=toy_retriever, tools=("search", "browse"))
    env2.reset(seed=0)
    assert "no browser configured" in env2.step("<browse> https://example.org </browse>")[0]


def test_no_retriever_warns_once_and_explains(toy_items, monkeypatch):
    monkeypatch.setattr(env_module, "_warned_no_retriever", False)
    with pytest.warns(NoRetrieverWarning, match="corpus="):
        env = SearchQAEnv(toy_items)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SearchQAEnv(toy_items)  # second construction: silent
    env.reset(seed=0)
    obs, reward, terminated, _, info = env.step("<search> anything </search>")
    assert "retriever_url=" in obs and "corpus=" in obs and reward == 0.0 and not terminated
    assert info["retrieved_ids"] == [] and info["corpus_hash"] is None


def test_non_ascii_observations_stay_in_space(toy_env):
    toy_env.reset(seed=0)
    obs, *_ = toy_env.step("<search> Uppsala university </search>")
    assert "Ångström" in obs and obs in toy_env.observation_space
    assert env_module.sanitize_text("a\U0001F600b") == "a\ufffdb"
    bmp = "Zürich 中文 Ångström"
    assert env_module.sanitize_text(bmp) is bmp
    assert env_module.sanitize_text("é\ud800x\U0001F600") == "é\ufffdx\ufffd"  # lone surrogate and astral


def test_constructor_validation(toy_items):
    with pytest.raises(ValueError, match="protocol"):
        SearchQAEnv(toy_items, retriever=object.__new__(type("R", (), {"search": lambda s, q, k: []})),
                    protocol="xml")
    with pytest.raises(ValueError, match="reward_metric"):
        SearchQAEnv(toy_items, reward_metric="bleu")
    with pytest.raises(ValueError, match="question"):
        SearchQAEnv(toy_items, prompt_template="no placeholder")
    with pytest.raises(ValueError, match="empty"):
        SearchQAEnv([])
    with pytest.raises(TypeError, match="Retriever"):
        SearchQAEnv(toy_items, retriever=42)


# ---------------------------------------------------------------------------------------------- seeding, pinning
def episode_questions(env, seed, n):
    questions = [env.reset(seed=seed)[1]["question_id"]]
    questions += [env.reset()[1]["question_id"] for _ in range(n - 1)]
    return questions


def test_same_seed_same_episodes():
    env = make_registered("igpo/NQ-v0")
    first, second = episode_questions(env, 7, 20), episode_questions(env, 7, 20)
    assert first == second and len(set(first)) == 20  # a permutation: no repeats within a pass
    assert episode_questions(env, 8, 20) != first


def test_order_covers_every_question_each_pass(toy_env):
    seen = episode_questions(toy_env, 3, 6)
    assert sorted(seen[:3]) == sorted(seen[3:]) == ["q0", "q1", "q2"]


def test_question_pinning(toy_env):
    assert toy_env.reset(options={"question_index": 2})[1]["question_id"] == "q2"
    assert toy_env.unwrapped.item.id == "q2"
    assert toy_env.reset(options={"question_id": "q1"})[1]["question_id"] == "q1"
    with pytest.raises(KeyError):
        toy_env.reset(options={"question_id": "nope"})
    with pytest.raises(ValueError, match="out of range"):
        toy_env.reset(options={"question_index": 3})


def test_ground_truth_never_in_observations(toy_items):
    """Play every question with searches, bad turns, truncation and answers over passages that do not mention the
    answers: no observation and no env-written message may contain a gold alias."""
    from conftest import KeywordRetriever

    from igpo_envs.types import Passage

    distractors = [Passage(f"d{i}", f"Star catalogue {i}", f"Entry {i} of a star and planet catalogue.")
                   for i in range(5)]
    for protocol in ("tag", "tool_call"):
        env = SearchQAEnv(toy_items, retriever=KeywordRetriever(distractors), protocol=protocol, max_turns=3)
        search = ("<search> star planet </search>" if protocol == "tag" else
                  '<tool_call>{"name": "search", "arguments": {"query": "star planet"}}</tool_call>')
        scripts = [[search, "<answer> Mars </answer>"], ["nonsense"], [search] * 3]
        for index, item in enumerate(toy_items):
            for script in scripts:
                obs, info = env.reset(options={"question_index": index})
                observations = [obs]
                for action in script:
                    obs, _, terminated, truncated, info = env.step(action)
                    observations.append(obs)
                assert terminated or truncated
                written = observations + [m["content"] for m in info["messages"] if m["role"] != "assistant"]
                assert not any(gold.lower() in text.lower() for gold in item.golden_answers for text in written)


def test_reset_observation_is_exactly_the_prompt():
    from igpo_envs.protocol import render_prompt

    env = make_registered("igpo/HotpotQA-v0", split="dev")
    for i, item in enumerate(env.unwrapped.items):
        obs, info = env.reset(options={"question_index": i})
        assert obs == render_prompt(item.question, "tag") and "golden_answers" not in info


# ---------------------------------------------------------------------------------------------- registration
def test_all_ids_registered():
    ids = {k for k in gym.registry if k.startswith("igpo/")}
    assert {"igpo/SearchQA-v0", "igpo/HotpotQA-Distractor-v0", "igpo/SynthMultiHop-v0", *PAPER_IDS} <= ids
    for env_id in ids:
        spec = gym.spec(env_id)
        assert spec.max_episode_steps is None and spec.vector_entry_point is not None


@pytest.mark.parametrize("env_id", registered_ids())
def test_check_env_without_warnings(env_id):
    env = make_registered(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", NoRetrieverWarning)
        check_env(env.unwrapped, skip_render_check=False)


@pytest.mark.parametrize("split", ["test", "dev"])
def test_paper_ids_load_their_split(split):
    sizes = {"test": 512, "dev": 125}
    for env_id, source in zip(PAPER_IDS, ("nq", "tq", "popqa", "hotpotqa", "2wiki", "musique", "Bamboogle")):
        items = make_registered(env_id, split=split).unwrapped.items
        assert {i.data_source for i in items} == {source}
        assert len(items) == (125 if source == "Bamboogle" else sizes[split])


@pytest.mark.parametrize("env_id", registered_ids())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.one_of(st.text(max_size=200), st.sampled_from(
    ["<search>x</search>", "<answer>y</answer>", "<tool_call>{}</tool_call>", "<think>", "<search></search>",
     '<tool_call>{"name": "search", "arguments": {"query": "q"}}</tool_call>', "<browse>http://a</browse>"])),
    min_size=1, max_size=6))
def test_step_never_raises_on_arbitrary_text(env_id, texts):
    env = ENV_CACHE.get(env_id) or ENV_CACHE.setdefault(env_id, make_registered(env_id))
    obs, _ = env.reset(seed=0)
    for text in texts:
        obs, reward, terminated, truncated, info = env.step(text)
        assert obs in env.observation_space and isinstance(reward, float)
        if terminated or truncated:
            obs, _ = env.reset()


ENV_CACHE: dict[str, gym.Env] = {}


# ---------------------------------------------------------------------------------------------- batching, vector
def test_step_batch_issues_one_retriever_call(toy_items, toy_retriever):
    envs = [SearchQAEnv(toy_items, retriever=toy_retriever) for _ in range(4)]
    for env in envs:
        env.reset(seed=0)
    results = step_batch(envs, ["<search> Zorblat </search>", "<answer> x </answer>", "<search> Quenn </search>",
                                "oops"])
    assert toy_retriever.calls == [["Zorblat", "Quenn"]]
    assert [r[2] for r in results] == [False, True, False, True]
    assert "Zorblat" in results[0][0] and "Quenn" in results[2][0]


def test_native_vector_env_batches_and_groups(toy_items, toy_retriever):
    venv = SearchQAVectorEnv(4, env_fn=SearchQAEnv, questions=toy_items, retriever=toy_retriever)
    obs, info = venv.reset(seed=0, options={"question_index": [1, 1, 0, 0]})
    assert list(info["question_id"]) == ["q1", "q1", "q0", "q0"] and len(obs) == 4
    obs, rewards, terminated, truncated, info = venv.step(["<search> Quenn </search>"] * 3 + ["<answer>Quenn</answer>"])
    assert toy_retriever.calls == [["Quenn"] * 3]
    assert rewards.tolist() == [0, 0, 0, 1.0] and terminated.tolist() == [False, False, False, True]
    # NEXT_STEP autoreset: the finished sub-env resets on the next step, its action ignored.
    obs, rewards, terminated, truncated, info = venv.step(["<answer>x</answer>"] * 4)
    assert rewards[3] == 0.0 and not terminated[3] and info["turn"][3] == 0 and "Question:" in obs[3]
    assert terminated[:3].all()


def test_vector_same_step_autoreset(toy_items, toy_retriever):
    venv = SearchQAVectorEnv(2, questions=toy_items, retriever=toy_retriever, autoreset_mode=AutoresetMode.SAME_STEP)
    venv.reset(seed=1)
    obs, rewards, terminated, _, info = venv.step(["<answer>Quenn</answer>", "<search>Zorblat</search>"])
    assert terminated.tolist() == [True, False] and info["_final_obs"].tolist() == [True, False]
    assert info["final_obs"][0] == "" and info["final_info"]["_golden_answers"].tolist() == [True, False]
    assert "Question:" in obs[0] and info["turn"][0] == 0


def test_vector_disabled_autoreset_skips_finished(toy_items, toy_retriever):
    venv = SearchQAVectorEnv(2, questions=toy_items, retriever=toy_retriever, autoreset_mode="Disabled")
    venv.reset(seed=1)
    venv.step(["<answer>a</answer>", "<search>Zorblat</search>"])
    obs, rewards, terminated, _, info = venv.step(["<answer>a</answer>", "<answer>Quenn</answer>"])
    assert obs[0] == "" and terminated.tolist() == [True, True] and info["_turn"].tolist() == [False, True]
    obs, info = venv.reset(options={"reset_mask": np.array([True, False]), "question_index": [2, 0]})
    assert info["question_id"][0] == "q2" and not info["_question_id"][1]


@pytest.mark.parametrize("mode", ["sync", "async", "vector_entry_point"])
def test_make_vec_modes(mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoRetrieverWarning)
        venv = gym.make_vec("igpo/Bamboogle-v0", num_envs=2, vectorization_mode=mode)
    try:
        obs, info = venv.reset(seed=3)
        assert len(obs) == 2 and all("Question:" in o for o in obs)
        obs, rewards, terminated, truncated, info = venv.step(["<search> a </search>", "<answer> b </answer>"])
        assert terminated.tolist() == [False, True] and "no retriever configured" in obs[0]
        _, first = venv.reset(seed=3)
        _, second = venv.reset(seed=3)
        assert list(first["question_id"]) == list(second["question_id"])
    finally:
        venv.close()


def test_make_vec_native_reaches_hotpot_distractor_retriever():
    if not HAS_BM25:
        pytest.skip("igpo_envs.search.bm25 not available")
    venv = gym.make_vec("igpo/HotpotQA-Distractor-v0", num_envs=3, vectorization_mode="vector_entry_point")
    assert isinstance(venv.unwrapped, SearchQAVectorEnv)
    retrievers = {id(env.retriever) for env in venv.unwrapped.envs}
    assert len(retrievers) == 1
    obs, info = venv.reset(seed=0, options={"question_index": 0})
    question = info["question"][0]
    obs, *_ , info = venv.step([f"<search> {question} </search>"] * 3)
    assert all("Doc 1" in o for o in obs) and info["gold_recall"][0] > 0


def test_sync_and_native_vector_agree_on_seeded_questions(toy_items, toy_retriever):
    native = SearchQAVectorEnv(3, questions=toy_items, retriever=toy_retriever)
    sync = gym.vector.SyncVectorEnv([lambda: SearchQAEnv(toy_items, retriever=toy_retriever)] * 3)
    _, native_info = native.reset(seed=5)
    _, sync_info = sync.reset(seed=5)
    assert list(native_info["question_id"]) == list(sync_info["question_id"])


def test_package_import_is_light():
    import subprocess
    import sys

    code = "import igpo_envs, sys; print('torch' in sys.modules, 'bm25s' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    assert igpo_envs.__doc__


def test_step_batch_refuses_wrapped_envs(toy_items, toy_retriever):
    env = gym.wrappers.RecordEpisodeStatistics(SearchQAEnv(toy_items, retriever=toy_retriever))
    env.reset(seed=0)
    with pytest.raises(TypeError, match="env.unwrapped"):
        step_batch([env], ["<answer> x </answer>"])


def test_astral_characters_are_replaced_in_observations(toy_items):
    from conftest import KeywordRetriever

    from igpo_envs.types import Passage

    env = SearchQAEnv(toy_items, retriever=KeywordRetriever([Passage("e", "Emoji", "smile \U0001F600 here")]))
    env.reset(seed=0)
    obs, *_ = env.step("<search> smile </search>")
    assert "smile \ufffd here" in obs and obs in env.observation_space


def test_spaces_are_cheap_independent_copies(toy_env, toy_items, toy_retriever):
    other = SearchQAEnv(toy_items, retriever=toy_retriever)
    assert toy_env.action_space == other.action_space and toy_env.action_space is not other.action_space
    toy_env.action_space.seed(0)
    other.action_space.seed(0)
    assert toy_env.action_space.sample() == other.action_space.sample()
    assert "é" in toy_env.observation_space.character_set and len(toy_env.observation_space.character_set) == 63488


def test_duplicate_question_ids_are_refused(toy_items):
    with pytest.raises(ValueError, match="'q0' repeats"):
        SearchQAEnv([*toy_items, toy_items[0]])


def test_seeded_pinned_reset_fixes_the_following_order(toy_env):
    def run():
        ids = [toy_env.reset(seed=11, options={"question_index": 0})[1]["question_id"]]
        return ids + [toy_env.reset()[1]["question_id"] for _ in range(5)]

    toy_env.reset(seed=99)
    toy_env.reset()  # history before the seeded reset must not matter
    first = run()
    assert first == run() and first[0] == "q0"
    assert toy_env.unwrapped.item.id == first[-1]
    assert SearchQAEnv([ITEM for ITEM in toy_env.items]).item is None


def test_vector_from_envs_steps_existing_envs_together(toy_items, toy_retriever):
    envs = [SearchQAEnv(toy_items, retriever=toy_retriever)]
    envs += [envs[0].spawn() for _ in range(2)]
    venv = SearchQAVectorEnv.from_envs(envs, autoreset_mode="Disabled")
    assert venv.envs == envs and venv.num_envs == 3
    venv.reset(options={"question_index": [0, 1, 0]})
    obs, rewards, terminated, _, _ = venv.step(["<search> Zorblat </search>", "<answer> Uppsala </answer>",
                                                "<search> Quenn </search>"])
    assert toy_retriever.calls == [["Zorblat", "Quenn"]]  # one batched search for both searching sub-envs
    assert terminated.tolist() == [False, True, False] and rewards[1] == 1.0 and "Zorblat" in obs[0]
    assert envs[1].item.id == "q1" and venv.last_infos[1]["prediction"] == "Uppsala"
    with pytest.raises(TypeError, match="SearchQAEnv"):
        SearchQAVectorEnv.from_envs([])
    with pytest.raises(TypeError, match="SearchQAEnv"):
        SearchQAVectorEnv.from_envs([gym.make("CartPole-v1")])


def test_vector_infos_match_gymnasiums_layout(toy_items, toy_retriever):
    """The column-wise batching gives what Gymnasium's own `VectorEnv._add_info` gives, sub-env by sub-env, also when
    only some sub-envs report (a NEXT_STEP reset returns a reset info without the step keys)."""
    from gymnasium.vector import VectorEnv

    venv = SearchQAVectorEnv(3, questions=toy_items[:2], retriever=toy_retriever)
    venv.reset(options={"question_index": [0, 1, 0]})
    venv.step(["<answer> x </answer>", "<search> Quenn </search>", "<search> Zorblat </search>"])
    _, _, _, _, info = venv.step(["<search> a </search>", "<search> Quenn </search>", "<answer> Zorblat </answer>"])
    expected: dict = {}
    for i, sub_info in enumerate(venv.last_infos):
        expected = VectorEnv._add_info(venv, expected, sub_info, i)
    assert info.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            for inner, column in value.items():
                assert info[key][inner].tolist() == column.tolist(), (key, inner)
        else:
            assert info[key].tolist() == value.tolist(), key
    assert info["_action"].tolist() == [False, True, True]  # sub-env 0 was reset: no action


def test_batched_info_is_built_when_read_and_acts_as_a_dict(toy_items, toy_retriever):
    import copy
    import pickle

    from gymnasium.wrappers.vector import RecordEpisodeStatistics

    from igpo_envs.vector import BatchedInfo

    venv = SearchQAVectorEnv(2, questions=toy_items, retriever=toy_retriever)
    venv.reset(options={"question_index": [0, 1]})
    _, _, _, _, first = venv.step(["<search> Zorblat </search>", "<search> Quenn </search>"])
    assert isinstance(first, BatchedInfo) and first._build is not None  # nothing built yet
    venv.step(["<answer> Quenn </answer>", "<search> Uppsala </search>"])
    assert first["turn"].tolist() == [1, 1] and first["_action"].all()
    assert first["queries"].tolist() == [["Zorblat"], ["Quenn"]]  # its own step's values, read after the next step
    plain = dict(first)
    assert plain == first and first == plain and {**first}.keys() == plain.keys() == first.keys()
    assert list(first) == list(plain) and len(first) == len(plain) and "_turn" in first
    assert first.get("missing", 7) == 7 and first.copy().keys() == plain.keys()
    restored = pickle.loads(pickle.dumps(first))
    assert type(restored) is dict and restored.keys() == plain.keys()
    assert copy.deepcopy(first)["turn"].tolist() == [1, 1]
    _, _, _, _, unread = venv.step(["<answer> x </answer>", "<answer> x </answer>"])
    unread["extra"] = 1  # a write before any read keeps the batched keys
    assert unread["extra"] == 1 and "turn" in unread
    stats = RecordEpisodeStatistics(SearchQAVectorEnv(2, questions=toy_items, retriever=toy_retriever))
    stats.reset(seed=0)
    *_, info = stats.step(["<answer> x </answer>", "<answer> y </answer>"])
    assert "episode" in info and info["_episode"].all() and "em" in info


def test_step_infos_are_snapshots(toy_env):
    _, info0 = toy_env.reset(options={"question_index": 0})
    _, _, _, _, info1 = toy_env.step("<search> Zorblat </search>")
    toy_env.step("<search> Quenn </search>")
    assert len(info0["messages"]) == 1 and len(info1["messages"]) == 3 and info1["queries"] == ["Zorblat"]
    assert info1["retrieved_ids"] == info1["retrieved_ids"][:3]


def test_vector_infos_mix_known_and_unknown_gold(toy_items, toy_retriever):
    """q0 has gold passages, q2 has none: gold_recall is a float for one sub-env and None for the other."""
    venv = SearchQAVectorEnv(2, questions=toy_items, retriever=toy_retriever)
    _, info = venv.reset(options={"question_id": ["q0", "q2"]})
    obs, _, _, _, info = venv.step(["<search> Zorblat </search>", "<search> Uppsala </search>"])
    assert info["gold_recall"].tolist() == [1.0, None] and info["_gold_recall"].all()
    assert info["turn"].dtype == np.int_ and info["turn"].tolist() == [1, 1]
    assert venv.last_infos[1]["question_id"] == "q2"
