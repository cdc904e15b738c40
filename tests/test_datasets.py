"""Question loaders (FlashRAG jsonl, verl parquet), the shipped data files, HotpotQA-Distractor."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import KeywordRetriever

from igpo_envs.tasks.datasets import (
    data_path,
    load_flashrag_jsonl,
    load_questions,
    load_verl_parquet,
)
from igpo_envs.tasks.hotpotqa import load_hotpotqa_distractor
from igpo_envs.tasks.paper import PAPER_DATASETS, load_paper_split
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


# ---------------------------------------------------------------------------------------------- hostile data
SEARCH_R1_INSTRUCTIONS = (  # the shape of Search-R1's make_prefix: instructions naming the tags, then the question
    "Answer the given question. Reason inside <think> and </think>. Search with <search> query </search>; results "
    "come back between <information> and </information>. Give the answer inside <answer> and </answer>, for "
    "example <answer> Beijing </answer>. Question: {question}\n"
)


def search_r1_row(question, source, index, targets):
    """A row with only Search-R1's columns (scripts/data_process/nq_search.py)."""
    return {"data_source": source, "prompt": [{"role": "user", "content": SEARCH_R1_INSTRUCTIONS.format(
        question=question)}], "ability": "fact-reasoning", "reward_model": {"style": "rule", "ground_truth": {
            "target": targets}}, "extra_info": {"split": "test", "index": index}}


def test_search_r1_parquet_gives_the_question_and_consistent_ids(tmp_path):
    path = tmp_path / "test.parquet"
    rows = [search_r1_row(f"who wrote book {i}?", "nq", i, [f"author {i}"]) for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    items = load_questions(path)
    # Was: the whole instruction prompt as the question; ids "nq-0" (index 0 is falsy), then "1", "2".
    assert [item.question for item in items] == ["who wrote book 0?", "who wrote book 1?", "who wrote book 2?"]
    assert [item.id for item in items] == ["nq-0", "nq-1", "nq-2"]
    assert items[2].golden_answers == ("author 2",)


def test_whole_task_prompt_without_a_question_line_is_refused(tmp_path):
    path = tmp_path / "p.parquet"
    row = search_r1_row("x", "nq", 0, ["y"])
    row["prompt"][0]["content"] = "Answer inside <answer> and </answer>. Who wrote Dune?"
    pq.write_table(pa.Table.from_pylist([row]), path)
    with pytest.raises(ValueError, match=r"p\.parquet: row 0: field 'prompt\[-1\].content': is a whole task prompt"):
        load_questions(path)


def test_merged_multi_source_parquet_and_the_data_source_filter(tmp_path):
    import gymnasium as gym

    path = tmp_path / "merged.parquet"
    rows = [search_r1_row(f"{source} question {i}?", source, i, ["a"]) for source in ("nq", "triviaqa")
            for i in range(2)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert [item.id for item in load_questions(path)] == ["nq-0", "nq-1", "triviaqa-0", "triviaqa-1"]
    env = gym.make("igpo/SearchQA-v0", questions=str(path), data_source="triviaqa", retriever=KeywordRetriever([]))
    assert [item.question for item in env.unwrapped.items] == ["triviaqa question 0?", "triviaqa question 1?"]
    expected = r"no questions found with data_source='hotpotqa' \(sources present: \['nq', 'triviaqa'\]\)"
    with pytest.raises(ValueError, match=expected):
        load_questions(path, data_source="hotpotqa")
    # explicit ids that repeat across sources: the error says how to pick one source
    same_ids = tmp_path / "same.parquet"
    pq.write_table(pa.Table.from_pylist([{**row, "id": "0"} for row in rows[:1] + rows[2:3]]), same_ids)
    with pytest.raises(ValueError, match=r"'0' repeats \(in data sources \['nq', 'triviaqa'\]: pass data_source="):
        gym.make("igpo/SearchQA-v0", questions=str(same_ids), retriever=KeywordRetriever([]))
    assert len(gym.make("igpo/SearchQA-v0", questions=str(same_ids), data_source="nq",
                        retriever=KeywordRetriever([])).unwrapped.items) == 1


def test_data_source_filter_on_jsonl_and_items(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"id": "a", "question": "q", "golden_answers": ["x"], "data_source": "nq"},
        {"id": "b", "question": "q", "golden_answers": ["x"], "data_source": "tq"},
        {"id": "c", "question": "q", "golden_answers": ["x"]},  # unlabelled: taken to be of the requested source
        {"id": "d", "question": "q", "golden_answers": ["x"], "data_source": None},
    ])
    assert [item.id for item in load_questions(path, data_source="tq")] == ["b", "c", "d"]
    items = [QAItem("a", "q", ("x",), "nq"), QAItem("b", "q", ("x",), "tq")]
    assert load_questions(items, data_source="nq") == items[:1]
    with pytest.raises(ValueError, match="no questions found with data_source='popqa'"):
        load_questions(items, data_source="popqa")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_non_utf8_questions_file_names_file_and_line(tmp_path, suffix):
    good = json.dumps({"id": "a", "question": "q", "golden_answers": ["x"]}).encode()
    bad = json.dumps({"id": "b", "question": "Québec?", "golden_answers": ["x"]}, ensure_ascii=False).encode().replace(
        "é".encode(), "é".encode("latin-1"))
    data = good + b"\n" + bad + b"\n"
    path = tmp_path / f"q{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    with pytest.raises(ValueError, match=rf"q{suffix.replace('.', '[.]')}: line 2: not valid UTF-8"):
        load_questions(path)  # was a bare UnicodeDecodeError


def test_truncated_gzip_questions_file_is_a_clear_error(tmp_path):
    path = tmp_path / "q.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"id": "a", "question": "q", "golden_answers": ["x"]}\n' * 50)[:-20])
    with pytest.raises(ValueError, match=r"q\.jsonl\.gz: line \d+: cannot be read"):
        load_questions(path)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a", "question": "q", "golden_answers": ["x"]}).encode())
    assert load_questions(path)[0].id == "a"


@pytest.mark.parametrize(("row", "match"), [
    ({"gold_titles": "Paris"}, r"line 1: field 'gold_titles': expected a list of strings, got str"),  # was P,a,r,i,s
    ({"gold_titles": [["Paris"]]}, r"field 'gold_titles': expected strings"),
    ({"gold_passage_ids": "p1"}, r"field 'gold_passage_ids': expected a list"),
    ({"id": ["a", "b"]}, r"line 1: field 'id': expected a string or an integer, got list"),  # was "['a', 'b']"
    ({"id": True}, r"field 'id': expected a string or an integer, got bool"),
    ({"id": 1.5}, r"field 'id': expected a string or an integer, got float"),
    ({"data_source": 3}, r"field 'data_source': expected a string"),
])
def test_jsonl_field_types_are_validated(tmp_path, row, match):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "golden_answers": ["x"], **row}])
    with pytest.raises(ValueError, match=match):
        load_questions(path)


def test_null_or_integer_ids(tmp_path):
    rows = [{"id": None, "question": "q", "golden_answers": ["x"]},
            {"id": 7, "question": "q", "golden_answers": ["x"], "gold_passage_ids": [3]}]
    path = write_jsonl(tmp_path / "q.jsonl", rows)
    items = load_questions(path)
    assert [item.id for item in items] == ["q-1", "7"] and items[1].gold_passage_ids == ("3",)  # was "None"


def test_parquet_id_types_are_validated(tmp_path):
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.Table.from_pylist([verl_row(id=None), verl_row(id="x1")]), path)
    assert [item.id for item in load_questions(path)] == ["nq_1", "x1"]  # null id: extra_info.index
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([verl_row(id=["a"])]), bad)
    with pytest.raises(ValueError, match=r"bad\.parquet: row 0: field 'id': expected a string or an integer"):
        load_questions(bad)


@pytest.mark.parametrize(("line", "match"), [
    (b'{"question_id": "x", "question_text": "q", "answers_objects": [{"spans": ["a"]}], "contexts": [1]}',
     r"field 'contexts': expected objects"),
    (b'{"question_id": "x", "question_text": "q", "answers_objects": "a", "contexts": []}',
     r"field 'answers_objects': unexpected str"),
    (b'[1]', r"line 1: expected a JSON object"),
    (b'{"question_id": "x", "question_text": "Qu\xe9bec"}', r"line 1: not valid UTF-8"),
])
def test_hotpotqa_loader_validates_types(tmp_path, line, match):
    path = tmp_path / "h.jsonl"
    path.write_bytes(line + b"\n")
    with pytest.raises(ValueError, match=rf"h\.jsonl: {match}" if "line 1" in match else match):
        load_hotpotqa_distractor(path)
