"""The exact observations and infos a scripted episode gets, and the lean step path's shortcuts giving exactly that:
infos built when read (`InfoSnapshot`, `SubEnvInfos`), the flat layout of passages."""

from __future__ import annotations

import random

import pytest
from conftest import ITEMS, PASSAGES, KeywordRetriever

from igpo_envs.env import InfoSnapshot, SearchQAEnv, step_batch
from igpo_envs.protocol import format_observation, format_passages, render_prompt
from igpo_envs.types import Passage
from igpo_envs.vector import SearchQAVectorEnv, SubEnvInfos

QUESTION = "Where was the discoverer of the star Quenn born?"
RESULTS = ("<information>\nDoc 1 (Title: Quenn) Quenn is a star whose discoverer was Ada Lindqvist.\n"
           "Doc 2 (Title: Zorblat) Zorblat is a fictional planet orbiting the star Quenn.\n</information>")
TURNS = ["<search> Quenn star </search>", "<think>again</think><search>quenn   STAR</search>",
         "<answer> Uppsala </answer>"]


def expected_infos() -> list[dict]:
    """Every info of the scripted episode, written out: the info contract, key order included."""
    prompt = {"role": "user", "content": render_prompt(QUESTION)}
    messages = [prompt, {"role": "assistant", "content": TURNS[0]}, {"role": "user", "content": RESULTS},
                {"role": "assistant", "content": TURNS[1]}, {"role": "user", "content": RESULTS},
                {"role": "assistant", "content": TURNS[2]}]
    common = {"question": QUESTION, "question_id": "q1", "data_source": "toy"}
    return [
        {"messages": messages[:1], **common, "turn": 0, "num_searches": 0, "queries": [], "repeated_queries": 0,
         "retrieved_ids": [], "gold_recall": 0.0, "corpus_hash": "keyword-test-corpus"},
        {"messages": messages[:3], **common, "turn": 1, "num_searches": 1, "queries": ["Quenn star"],
         "repeated_queries": 0, "retrieved_ids": ["p1", "p0"], "gold_recall": 0.5, "corpus_hash": "keyword-test-corpus",
         "action": {"kind": "search", "argument": "Quenn star", "error": None}, "error": None},
        {"messages": messages[:5], **common, "turn": 2, "num_searches": 2, "queries": ["Quenn star", "quenn   STAR"],
         "repeated_queries": 1, "retrieved_ids": ["p1", "p0"], "gold_recall": 0.5, "corpus_hash": "keyword-test-corpus",
         "action": {"kind": "search", "argument": "quenn   STAR", "error": None}, "error": None},
        {"messages": messages, **common, "turn": 3, "num_searches": 2, "queries": ["Quenn star", "quenn   STAR"],
         "repeated_queries": 1, "retrieved_ids": ["p1", "p0"], "gold_recall": 0.5, "corpus_hash": "keyword-test-corpus",
         "action": {"kind": "answer", "argument": "Uppsala", "error": None}, "error": None,
         "golden_answers": ["Uppsala", "Uppsala, Sweden"], "prediction": "Uppsala", "em": 1.0, "f1": 1.0},
    ]


def row(batched: dict, i: int) -> dict:
    """Sub-env ``i``'s info from a batched info (Gymnasium's layout: columns, nested dicts batched alike)."""
    return {key: row(column, i) if isinstance(column, dict) else column.tolist()[i]
            for key, column in batched.items() if not key.startswith("_")}


def columns(batched: dict) -> dict:
    """A batched info as plain lists (masks included), to compare two of them whole."""
    return {key: columns(column) if isinstance(column, dict) else column.tolist() for key, column in batched.items()}


def assert_same_info(got: dict, want: dict) -> None:
    assert type(got) is dict and list(got) == list(want)  # same keys in the same order
    for key, value in want.items():
        assert got[key] == value and type(got[key]) is type(value), key


def test_scripted_episode_observations_rewards_and_infos_exactly():
    env = SearchQAEnv(ITEMS, retriever=KeywordRetriever(PASSAGES), topk=2, max_turns=4)
    obs, info = env.reset(options={"question_id": "q1"})
    want = expected_infos()
    assert obs == render_prompt(QUESTION)
    assert_same_info(info, want[0])
    steps = [env.step(turn) for turn in TURNS]
    assert [step[:4] for step in steps] == [(RESULTS, 0.0, False, False), (RESULTS, 0.0, False, False),
                                            ("", 1.0, True, False)]
    for (*_, info), expected in zip(steps, want[1:]):
        assert_same_info(info, expected)


def test_vector_infos_read_late_are_those_of_their_step():
    """Batched and per-sub-env infos are built when read, from snapshots: read after the episode went on (and a
    sub-env was reset onto another question), each is still its own step's, as the single env gives them."""
    venv = SearchQAVectorEnv(2, questions=ITEMS, retriever=KeywordRetriever(PASSAGES), topk=2, max_turns=4)
    _, first = venv.reset(options={"question_id": ["q1", "q0"]})
    batched, held = [first], []
    for turn in TURNS:
        batched.append(venv.step([turn, "<search> Zorblat planet </search>"])[4])
        held.append(venv.last_infos.held(0))  # sub-env 0's snapshot, not read yet
    assert all(isinstance(snapshot, InfoSnapshot) for snapshot in held) and not any(s.info for s in held)
    venv.step(["<search> ignored: sub-env 0 is reset now </search>", "<answer> Quenn </answer>"])
    for info, expected in zip(batched, expected_infos()):
        assert_same_info(row(info, 0), expected)
    for snapshot, expected in zip(held, expected_infos()[1:]):
        assert_same_info(snapshot.build(), expected)


def test_late_reads_match_eager_reads_over_random_episodes():
    """Two identical vector envs under random turns (searches, repeats, answers, malformed text, the turn limit),
    one read at every step, the other only at the end: the same infos, for every autoreset mode."""
    words = "Zorblat planet Quenn star discoverer Ada Lindqvist Uppsala Sweden the".split()
    for mode in ("NextStep", "SameStep", "Disabled"):
        rng = random.Random(len(mode))
        eager, lazy = (SearchQAVectorEnv(3, questions=ITEMS, retriever=KeywordRetriever(PASSAGES), max_turns=3,
                                         autoreset_mode=mode) for _ in range(2))
        read_now, read_later = [eager.reset(seed=1)[1].copy()], [lazy.reset(seed=1)[1]]
        now_last, later_last = [], []
        for _ in range(25):
            turns = [rng.choice([f"<search> {' '.join(rng.sample(words, 2))} </search>", "<answer> Quenn </answer>",
                                 "<search> Quenn star </search>", "no tags"]) for _ in range(3)]
            read_now.append(eager.step(turns)[4].copy())
            now_last.append(list(eager.last_infos))
            read_later.append(lazy.step(turns)[4])
            later_last.append([lazy.last_infos.held(i) for i in range(3)])
        later_last = [[info.build() if isinstance(info, InfoSnapshot) else info for info in infos]
                      for infos in later_last]
        assert later_last == now_last
        assert [columns(info) for info in read_later] == [columns(info) for info in read_now], mode


def test_last_infos_acts_as_a_list_of_dicts():
    venv = SearchQAVectorEnv(3, questions=ITEMS, retriever=KeywordRetriever(PASSAGES))
    _, batched = venv.reset(options={"question_index": [0, 1, 2]})
    _, _, _, _, batched = venv.step(["<search> Zorblat </search>", "<answer> x </answer>", "bad"])
    infos = venv.last_infos
    assert isinstance(infos, SubEnvInfos) and len(infos) == 3 and isinstance(infos[0], dict)
    assert infos[1] is infos[1] and infos[-1] is infos[2] and infos[1:] == [infos[1], infos[2]]
    assert [info["question_id"] for info in infos] == ["q0", "q1", "q2"] and infos == list(infos)
    infos[0]["note"] = "kept"  # the dict a reader got is the one it gets again, edits included
    assert venv.last_infos[0]["note"] == "kept"
    assert batched["messages"][0] is infos[0]["messages"]  # the batched info holds the same dicts' values
    assert "SubEnvInfos([{" in repr(infos)


def test_step_batch_builds_infos_or_hands_back_snapshots():
    envs = [SearchQAEnv(ITEMS, retriever=KeywordRetriever(PASSAGES)) for _ in range(2)]
    for env in envs:
        env.reset(options={"question_id": "q1"})
    (*_, built), (*_, snapshot) = step_batch(envs, ["<search> Quenn </search>", "<search> Quenn </search>"]), \
        step_batch(envs, ["<answer> Uppsala </answer>"] * 2, build_infos=False)
    assert type(built[4]) is dict and isinstance(snapshot[4], InfoSnapshot)
    assert snapshot[4].build() is snapshot[4].build() and snapshot[4].build()["em"] == 1.0


@pytest.mark.parametrize("count", [1, 3, 32, 33, 40])
def test_igpo_layout_is_one_line_per_passage_at_any_rank(count):
    passages = [Passage(f"p{i}", f"T{i}", f"text {i}") for i in range(count)]
    passages[-1] = Passage("last", "Last", "ends in spaces  \n")  # stripped as the whole result is
    lines = format_passages(passages).split("\n")
    assert lines[:count - 1] == [f"Doc {i + 1} (Title: T{i}) text {i}" for i in range(count - 1)]
    assert lines[count - 1] == f"Doc {count} (Title: Last) ends in spaces  "
    assert format_observation(passages, "tag").endswith(f"Doc {count} (Title: Last) ends in spaces\n</information>")
