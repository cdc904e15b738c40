"""Built-in agents, `evaluate` and the `igpo-eval` CLI."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest
from conftest import ITEMS, PASSAGES, KeywordRetriever

from igpo_envs.agents import OracleAgent, RandomAgent, SearchQuestionAgent, agent_names, make_agent
from igpo_envs.cli import format_table, main
from igpo_envs.env import SearchQAEnv
from igpo_envs.evaluation import NoRetrieverError, episode_order, evaluate
from igpo_envs.protocol import parse_action
from igpo_envs.tasks.datasets import data_path


def toy_kwargs(**extra):
    return {"questions": ITEMS, "retriever": KeywordRetriever(PASSAGES), **extra}


def play(env, agent, index):
    obs, info = env.reset(options={"question_index": index})
    while True:
        obs, reward, terminated, truncated, info = env.step(agent.act(obs, info))
        if terminated or truncated:
            return reward, info


def test_registry_has_builtins():
    assert {"random", "search-question", "oracle"} <= set(agent_names())
    assert isinstance(make_agent("random:5"), RandomAgent)
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent("gpt-9")


def test_random_agent_is_seeded_and_mixes_valid_and_invalid(toy_env):
    def actions(seed):
        agent = make_agent(f"random:{seed}")
        agent.bind(toy_env)
        obs, info = toy_env.reset(seed=0)
        return [agent.act(obs, info) for _ in range(200)]

    first = actions(1)
    assert first == actions(1) and first != actions(2)
    kinds = {parse_action(a, "tag").kind for a in first}
    assert {"search", "answer", "invalid"} <= kinds


def test_search_question_agent(toy_env, toy_retriever):
    agent = SearchQuestionAgent()
    agent.bind(toy_env)
    reward, info = play(toy_env, agent, 0)  # "Which star does Zorblat orbit?" -> top passage "Zorblat"
    assert toy_retriever.calls[0] == ["Which star does Zorblat orbit?"]
    assert info["prediction"] == "Zorblat" and info["turn"] == 2 and reward == 0.0


@pytest.mark.parametrize("protocol", ["tag", "tool_call"])
def test_oracle_follows_gold_queries(protocol):
    env = SearchQAEnv(**toy_kwargs(protocol=protocol))
    agent = OracleAgent()
    agent.bind(env)
    reward, info = play(env, agent, 1)
    assert info["queries"] == ["Quenn star discoverer", "Ada Lindqvist"]
    assert reward == 1.0 and info["gold_recall"] == 1.0 and info["turn"] == 3


def test_oracle_needs_bind():
    with pytest.raises(RuntimeError, match="bind"):
        OracleAgent().act("obs", {"question_id": "q0"})


def test_evaluate_covers_questions_in_seeded_order():
    result = evaluate("igpo/SearchQA-v0", "oracle", episodes=7, seed=3, env_kwargs=toy_kwargs(), batch_size=2,
                      progress=False)
    ids = [r["question_id"] for r in result["per_episode"]]
    assert result["episodes"] == 7 and len(ids) == 7
    # Two full passes over the 3 questions, then one more: no question repeats before every one was asked.
    assert sorted(Counter(ids).values()) == [2, 2, 3]
    assert sorted(ids) == sorted(ITEMS[i].id for i in episode_order(3, 7, 3))
    assert result["em"] == 1.0 and result["f1"] == 1.0
    # q0: 1 search, q1: 2 searches, q2: no gold queries -> answers at once.
    by_id = {r["question_id"]: r["searches"] for r in result["per_episode"]}
    assert by_id == {"q0": 1, "q1": 2, "q2": 0}
    again = evaluate("igpo/SearchQA-v0", "oracle", episodes=7, seed=3, env_kwargs=toy_kwargs(), batch_size=3,
                     progress=False)
    assert sorted(r["question_id"] for r in again["per_episode"]) == sorted(ids)


def test_evaluate_batches_agent_and_retriever_calls():
    calls = []

    class CountingAgent(SearchQuestionAgent):
        def act_batch(self, observations, infos):
            calls.append(len(observations))
            return [self.act(o, i) for o, i in zip(observations, infos)]

    retriever = KeywordRetriever(PASSAGES)
    result = evaluate("igpo/SearchQA-v0", CountingAgent(), episodes=3, seed=0,
                      env_kwargs={"questions": ITEMS, "retriever": retriever}, batch_size=3, progress=False)
    assert calls == [3, 3] and len(retriever.calls) == 1 and len(retriever.calls[0]) == 3
    assert result["searches"] == 1.0 and result["turns"] == 2.0


def test_evaluate_random_agent_reports_format_errors():
    result = evaluate("igpo/SearchQA-v0", make_agent("random:0"), episodes=30, seed=0, env_kwargs=toy_kwargs(),
                      batch_size=8, progress=False)
    assert 0 < result["format_error_rate"] < 1 and result["episodes"] == 30


def test_format_table_has_average_row():
    rows = [{"env_id": "a", "em": 0.5, "f1": 0.75, "turns": 2.0, "searches": 1.0},
            {"env_id": "b", "em": 0.0, "f1": 0.25, "turns": 4.0, "searches": 3.0}]
    table = format_table(rows)
    assert table.splitlines()[0].split() == ["env", "EM", "F1", "turns/ep", "searches/ep"]
    assert table.splitlines()[-1].split() == ["Avg.", "25.0", "50.0", "3.00", "2.00"]


@pytest.mark.skipif(importlib.util.find_spec("igpo_envs.search.bm25") is None, reason="needs the BM25 retriever")
def test_cli_on_hotpotqa_distractor(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["--env", "igpo/HotpotQA-Distractor-v0", "--agent", "oracle", "--episodes", "12", "--seed", "1",
                 "--json", str(out), "--batch-size", "5", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "igpo/HotpotQA-Distractor-v0" in printed and "100.0" in printed
    data = json.loads(out.read_text())
    (result,) = data["results"]
    assert result["episodes"] == 12 and result["em"] == 1.0 and result["searches"] == 2.0
    assert result["gold_recall"] > 0.8 and len(result["corpus_hash"]) == 64


def test_cli_env_kwargs_and_errors(tmp_path, capsys):
    corpus = json.dumps(str(data_path("wiki18_sample.jsonl")))
    code = main(["--env", "igpo/Bamboogle-v0", "--agent", "search-question", "--episodes", "3",
                 "--env-kwargs", f'{{"split": "dev", "max_turns": 1, "corpus": {corpus}}}', "--no-progress"])
    assert code == 0 and "igpo/Bamboogle-v0" in capsys.readouterr().out
    code = main(["--env", "igpo/Bamboogle-v0", "--agent", "search-question", "--env-kwargs", '{"topk": 1.9}'])
    assert code == 2 and "topk must be an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--env", "igpo/NQ-v0", "--agent", "random", "--env-kwargs", "{not json"])
    assert main(["--env", "igpo/NQ-v0", "--agent", "random", "--env-kwargs", "[1]"]) == 2
    # igpo-train's spelling is accepted too
    assert main(["--env", "igpo/NQ-v0", "--agent", "random", "--env_kwargs", '{"topk": 0}']) == 2
    assert "topk must be >= 1" in capsys.readouterr().err


def test_format_table_adds_gold_recall_when_known():
    rows = [{"env_id": "a", "em": 0.5, "f1": 0.5, "turns": 2.0, "searches": 1.0, "gold_recall": 0.685},
            {"env_id": "b", "em": 0.5, "f1": 0.5, "turns": 2.0, "searches": 1.0, "gold_recall": None}]
    lines = format_table(rows).splitlines()
    assert lines[0].split()[-2:] == ["gold", "recall"]
    assert lines[2].split()[-1] == "68.5" and lines[3].split()[-1] == "-" and lines[-1].split()[-1] == "68.5"


def test_evaluate_with_information_gain_scorer(tmp_path):
    pytest.importorskip("torch")
    from igpo_trainer.tiny import build_tiny_model

    texts = [f"{item.question} {' '.join(item.golden_answers)} <search> </search> <answer> </answer>" for item in ITEMS]
    path = build_tiny_model(tmp_path / "tiny", texts * 20, vocab_size=300, hidden_size=32, num_layers=1)
    result = evaluate("igpo/SearchQA-v0", "oracle", episodes=3, seed=0, env_kwargs=toy_kwargs(), batch_size=2,
                      progress=False, ig_scorer=str(path))
    assert result["em"] == 1.0 and result["searches"] == 1.0
    assert isinstance(result["information_gain"], float) and result["information_gain"] == result["information_gain"]
    assert format_table([result]).splitlines()[0].split()[-1] == "IG/search"  # the table reports it too


def test_eval_without_a_retriever_refuses_and_says_how_to_pass_one(capsys):
    """It printed a table of zeros and exited 0 (the no-retriever warning was filtered)."""
    with pytest.raises(NoRetrieverError, match="corpus"):
        evaluate("igpo/NQ-v0", "search-question", episodes=2, progress=False)
    assert main(["--env", "igpo/NQ-v0", "--agent", "search-question", "--episodes", "2", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--env-kwargs '{\"corpus\"" in captured.err and "retriever_url" in captured.err


@pytest.mark.parametrize("layout", ["igpo", "search-r1"])
def test_search_question_agent_reads_the_top_title_in_both_layouts(layout):
    from igpo_envs.types import Passage

    env = SearchQAEnv(ITEMS, retriever=KeywordRetriever([Passage("b", "Quenn (star)", "Quenn star text.")]),
                      observation_layout=layout)
    agent = make_agent("search-question")
    agent.bind(env)
    obs, info = env.reset(options={"question_index": 0})
    obs, *_, info = env.step(agent.act(obs, info))
    assert agent.act(obs, info) == "<answer> Quenn (star) </answer>"
