"""Question loaders (FlashRAG jsonl, verl parquet), the shipped data files, HotpotQA-Distractor."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from igpo_envs.tasks.datasets import (
    PAPER_DATASETS,
    data_path,
    load_flashrag_jsonl,
    load_paper_split,
    load_questions,
    load_verl_parquet,
)
from igpo_envs.tasks.hotpotqa import load_hotpotqa_distractor
from igpo_envs.types import QAItem


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------- FlashRAG jsonl
def test_flashrag_jsonl_roundtrip(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"id": "a", "question": " who? ", "golden_answers": ["X", "Y "]},
        {"id": "b", "question": "what?", "golden_answers": "Z", "gold_titles": ["T"], "metadata": {"hops": 2}},
    ])
    items = load_flashrag_jsonl(path)
    assert items[0] == QAItem("a", "who?", ("X", "Y"))
    assert items[1].golden_answers == ("Z",) and items[1].gold_titles == ("T",) and items[1].metadata == {"hops": 2}


def test_flashrag_jsonl_gzip(tmp_path):
    path = tmp_path / "q.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"id": "a", "question": "q", "golden_answers": ["x"]}) + "\n")
    assert load_questions(path)[0].id == "a"


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"id": "a", "question": "q", "golden_answers": ["x"]}, "{not json"], r"q\.jsonl: line 2: not valid JSON"),
        ([{"id": "a", "golden_answers": ["x"]}], r"line 1: field 'question': missing"),
        ([{"id": "a", "question": "q"}], r"line 1: field 'golden_answers': missing"),
        ([{"id": "a", "question": "", "golden_answers": ["x"]}], r"line 1: field 'question'"),
        ([{"id": "a", "question": "q", "golden_answers": []}], r"field 'golden_answers': no non-empty"),
        ([{"id": "a", "question": "q", "golden_answers": [1, 2]}], r"field 'golden_answers': expected strings"),
        ([{"id": "a", "question": "q", "golden_answers": 5}], r"field 'golden_answers'"),
        (["[1, 2]"], r"line 1: expected a JSON object"),
        ([], r"no questions found"),
    ],
)
def test_flashrag_jsonl_errors_name_file_line_field(tmp_path, rows, match):
    path = write_jsonl(tmp_path / "q.jsonl", rows)
    with pytest.raises(ValueError, match=match):
        load_flashrag_jsonl(path)


# ---------------------------------------------------------------------------------------------- verl parquet
def verl_row(question="who?", ground_truth="A<|answer_split|>B", **extra):
    row = {"data_source": "nq", "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": question}],
           "ability": "qa", "reward_model": {"ground_truth": ground_truth, "style": "rule"},
           "extra_info": {"index": "nq_1", "split": "test"}}
    row.update(extra)
    return row


def test_verl_parquet_string_and_list_ground_truth(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([verl_row()]), path)
    item = load_verl_parquet(path)[0]
    assert item == QAItem("nq_1", "who?", ("A", "B"), "nq")
    path2 = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist([verl_row(ground_truth=["A", "B"])]), path2)
    assert load_questions(path2)[0].golden_answers == ("A", "B")
    # Search-R1's {"target": [...]} layout and a plain `question` column.
    path3 = tmp_path / "c.parquet"
    rows = [{"question": "q?", "reward_model": {"ground_truth": {"target": ["t1", "t2"]}}, "data_source": "x"}]
    pq.write_table(pa.Table.from_pylist(rows), path3)
    item = load_verl_parquet(path3)[0]
    assert (item.question, item.golden_answers, item.id) == ("q?", ("t1", "t2"), "x-0")


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([verl_row(), verl_row(ground_truth=None)], r"row 1: field 'reward_model.ground_truth': missing"),
        ([verl_row(), verl_row(question="")], r"row 1: field 'prompt\[-1\].content'"),
        ([{**verl_row(), "prompt": [{"role": "system", "content": "s"}]}], r"row 0: field 'prompt': no message"),
        ([{"data_source": "nq", "reward_model": {"ground_truth": "x"}}], r"row 0: field 'question': missing"),
        ([verl_row(ground_truth="  <|answer_split|> ")], r"row 0: field 'reward_model.ground_truth': no non-empty"),
    ],
)
def test_verl_parquet_errors_name_file_row_field(tmp_path, rows, match):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(ValueError, match=rf"bad\.parquet: {match}"):
        load_verl_parquet(path)


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_text("hello")
    with pytest.raises(ValueError, match="x.parquet: not a readable parquet"):
        load_questions(path)


def test_load_questions_dispatch_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_questions(tmp_path / "missing.jsonl")
    (tmp_path / "q.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unknown questions format"):
        load_questions(tmp_path / "q.csv")
    with pytest.raises(TypeError, match=r"questions\[0\]"):
        load_questions([{"question": "q"}])


# ---------------------------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize(("split", "per_source"), [("test", 512), ("dev", 125)])
def test_shipped_paper_splits(split, per_source):
    for source in PAPER_DATASETS.values():
        items = load_paper_split(source, split)
        assert len(items) == (125 if source == "Bamboogle" else per_source)
        assert len({i.id for i in items}) == len(items)
        assert all(i.question and i.golden_answers and all(i.golden_answers) for i in items)
        assert all("<|answer_split|>" not in a for i in items for a in i.golden_answers)


def test_shipped_split_aliases_are_split():
    # The TriviaQA dev question about the Ottoman empire carries many aliases in one string.
    items = [i for i in load_paper_split("tq", "dev") if "Ottoman empire" in i.question]
    assert items and "turkey" in items[0].golden_answers and len(items[0].golden_answers) > 10
    with pytest.raises(ValueError, match="unknown split"):
        load_paper_split("nq", "train")


def test_shipped_sources_file_names_licences():
    text = data_path("SOURCES.md").read_text()
    for needle in ("GuoqingWang1/IGPO", "Apache-2.0", "CC BY-SA 4.0", "CC BY-SA 3.0", "MuSiQue", "MIT",
                   "hotpotqa_distractor_dev400.jsonl.gz"):
        assert needle in text


def test_hotpotqa_distractor_pool():
    items, passages = load_hotpotqa_distractor()
    assert len(items) == 400 and len(passages) == 3902
    assert len({(p.title, p.text) for p in passages}) == 3902
    assert [p.id for p in passages[:3]] == ["hp-0", "hp-1", "hp-2"]
    by_id = {p.id: p for p in passages}
    for item in items:
        assert len(item.gold_passage_ids) == 2 and len(item.gold_titles) == 2
        assert [by_id[g].title for g in item.gold_passage_ids] == list(item.gold_titles)
    assert items[0].golden_answers == ("Chief of Protocol",)


def test_hotpotqa_distractor_malformed(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [{"question_id": "x", "question_text": "q", "contexts": []}])
    with pytest.raises(ValueError, match=r"h\.jsonl: line 1: field 'answers_objects': missing"):
        load_hotpotqa_distractor(path)


def test_shipped_flashrag_sample_with_wiki_corpus(tmp_path):
    """The FlashRAG quick-start pair shipped in the package: questions jsonl + wiki-18 corpus, through gym.make."""
    import gymnasium as gym

    items = load_questions(data_path("flashrag_nq_sample.jsonl"))
    assert len(items) == 17 and items[0].id == "test_0" and items[0].golden_answers == ("Wilhelm Conrad Röntgen",)
    env = gym.make("igpo/SearchQA-v0", questions=data_path("flashrag_nq_sample.jsonl"),
                   corpus=data_path("wiki18_sample.jsonl"), retriever_kwargs={"cache_dir": tmp_path})
    obs, info = env.reset(options={"question_id": "test_0"})
    obs, reward, terminated, truncated, info = env.step("<search> nobel prize in physics </search>")
    assert obs.count("Doc ") == 3 and len(info["retrieved_ids"]) == 3 and len(info["corpus_hash"]) == 64
    assert obs in env.observation_space
