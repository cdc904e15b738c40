"""BM25Retriever's memos (query -> token ids, (row, score) -> passage): same answers as without them, bounded."""

from __future__ import annotations

import pickle
from importlib import resources
from pathlib import Path

import pytest
import Stemmer
from bm25s.tokenization import Tokenizer

from igpo_envs.search.bm25 import BM25Retriever, build_index
from igpo_envs.types import Passage

SAMPLE = Path(str(resources.files("igpo_envs") / "data" / "wiki18_sample.jsonl"))

# Plain text: mixed case, punctuation, stopwords only, unknown words, empty, a repeat within the batch.
QUERIES = ["Evan Morris lobbyist", "RIVER in Europe!", "the of and a", "xyzzyqwv", "", "Evan Morris lobbyist",
           "Horatio Hale, ethnologist", "television series", "album released by the band", "rivers of europe"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bm25memo")


def retriever(cache_dir: Path, memo_size: int | None = None) -> BM25Retriever:
    opened = BM25Retriever(SAMPLE, cache_dir=cache_dir)
    if memo_size is not None:
        opened.memo_size = memo_size
    return opened


def test_memo_gives_the_token_ids_of_bm25s_tokenizer(cache_dir):
    memoized = retriever(cache_dir)
    plain = Tokenizer(stopwords="en", stemmer=Stemmer.Stemmer("english"))
    plain.stem_to_sid = {stem: sid for stem, sid in memoized._bm25.vocab_dict.items() if stem}
    expected = [list(ids) for ids in plain.streaming_tokenize(QUERIES, update_vocab=False, allow_empty=False)]
    assert any(expected) and [] in expected  # the queries cover known terms and queries without any
    assert memoized._token_ids(QUERIES) == expected  # cold: every query tokenized
    assert memoized._token_ids(QUERIES[::-1]) == expected[::-1]  # warm: every query remembered
    assert memoized._token_ids(["Evan Morris lobbyist", "Uppsala astronomer"]) == [
        expected[0], list(next(plain.streaming_tokenize(["Uppsala astronomer"], update_vocab=False)))]


def test_searches_match_a_retriever_without_memos(cache_dir):
    memoized, plain = retriever(cache_dir), retriever(cache_dir, memo_size=0)
    batches = [QUERIES, QUERIES[::-1], ["Evan Morris", "Morris"], QUERIES[:3], ["Evan Morris"]]
    for topk in (3, 5, 3):  # a passage comes back under other queries, other scores and other topk
        for batch in batches:
            expected = plain.search(batch, topk)
            got = memoized.search(batch, topk)
            assert got == expected
            assert [[type(p) for p in hits] for hits in got] == [[Passage] * len(hits) for hits in expected]
    assert memoized.search(tuple(QUERIES), 3) == memoized.search(iter(QUERIES), 3) == plain.search(QUERIES, 3)
    assert plain._token_ids_memo == {} and plain._passage_memo == {}
    assert memoized._token_ids_memo and memoized._passage_memo


def test_results_are_fresh_lists(cache_dir):
    memoized = retriever(cache_dir)
    first = memoized.search(["Evan Morris", "Evan Morris", "the of"], 3)
    expected = [list(hits) for hits in first]
    first[0].clear()
    first[2].append("not a passage")
    assert memoized.search(["Evan Morris", "Evan Morris", "the of"], 3) == expected


@pytest.mark.parametrize("memo_size", [1, 3])
def test_memos_stay_within_memo_size(cache_dir, memo_size):
    small, plain = retriever(cache_dir, memo_size=memo_size), retriever(cache_dir, memo_size=0)
    for start in range(0, len(QUERIES), 2):
        batch = QUERIES[start:start + 3]
        assert small.search(batch, 3) == plain.search(batch, 3)
        assert len(small._token_ids_memo) <= memo_size and len(small._passage_memo) <= memo_size
    assert list(small._token_ids_memo)[-1] == QUERIES[-1]  # the newest entries are the ones kept


def test_pickled_retriever_keeps_its_memo_size(cache_dir):
    clone = pickle.loads(pickle.dumps(retriever(cache_dir, memo_size=7)))
    assert clone.memo_size == 7 and clone._passage_memo == {}
    assert pickle.loads(pickle.dumps(retriever(cache_dir))).memo_size == BM25Retriever.memo_size


def test_partly_remembered_rows_read_from_several_arrow_chunks(tmp_path):
    names = ["Zorblat", "Quenn", "Lindqvist", "Uppsala", "Mirelle", "Tavros", "Okonkwo", "Brisk"]
    passages = [Passage(str(i), name, f"{name} orbits star {names[(i + 1) % 8]} in galaxy {('Andra', 'Vel')[i % 2]}")
                for i, name in enumerate(names)]
    build_index(iter(passages), tmp_path / "idx", content_hash="h", batch_rows=3)  # chunks of 3, 3 and 2 rows
    memoized = BM25Retriever.from_index_dir(tmp_path / "idx", n_threads=1)
    plain = BM25Retriever.from_index_dir(tmp_path / "idx", n_threads=1)
    plain.memo_size = 0
    for batch in (["Brisk"], ["Quenn Andra", "Brisk orbits"], ["Lindqvist", "Brisk", "Vel galaxy", "Okonkwo"]):
        assert memoized.search(batch, 4) == plain.search(batch, 4)
    assert {p.id for p in memoized._passage_memo.values()} >= {"7", "2", "6"}


def test_a_remembered_query_skips_the_tokenizer_and_the_arrow_read(cache_dir, monkeypatch):
    """What the memos are for: once a batch was searched, searching it again only retrieves."""
    memoized = retriever(cache_dir)
    expected = memoized.search(QUERIES, 3)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a remembered query was tokenized or read again")

    monkeypatch.setattr(memoized, "_take_rows", must_not_run)
    monkeypatch.setattr(memoized._tokenizer, "streaming_tokenize", must_not_run)
    assert memoized.search(QUERIES[::-1], 3) == expected[::-1]
    with pytest.raises(AssertionError, match="tokenized or read again"):
        memoized.search(["a query never seen before: Zanzibar"], 3)
