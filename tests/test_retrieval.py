"""Corpus reading, real bm25s retrieval on the shipped wiki-18 sample, the on-disk index cache, make_retriever."""

from __future__ import annotations

import gzip
import hashlib
import json
from importlib import resources
from pathlib import Path

import bm25s
import pytest
from file_damage import DAMAGES, damage

from igpo_envs.search import make_retriever
from igpo_envs.search.base import Retriever
from igpo_envs.search.bm25 import BM25Retriever
from igpo_envs.search.corpus import (
    file_content_hash,
    iter_passages,
    load_passages,
    passages_content_hash,
    split_contents,
)
from igpo_envs.types import Passage

SAMPLE = Path(str(resources.files("igpo_envs") / "data" / "wiki18_sample.jsonl"))

SMALL = [
    Passage("a", "Zorblat", "Zorblat is a fictional planet orbiting the star Quenn."),
    Passage("b", "Quenn", "Quenn is a star whose discoverer was Ada Lindqvist."),
    Passage("c", "Ada Lindqvist", "Ada Lindqvist was an astronomer born in Uppsala, Sweden."),
    Passage("d", "Uppsala", "Uppsala is a city in Sweden with an old university."),
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wiki(tmp_path_factory) -> BM25Retriever:
    return BM25Retriever(SAMPLE, cache_dir=tmp_path_factory.mktemp("bm25cache"))


@pytest.fixture(scope="module")
def wiki_passages() -> list[Passage]:
    return load_passages(SAMPLE)


# -- corpus reading -------------------------------------------------------------------------------------------------


def test_shipped_sample_is_the_real_wiki18_sample(wiki_passages):
    assert len(wiki_passages) == 1000
    first = wiki_passages[0]
    assert (first.id, first.title) == ("0", "Evan Morris")  # quotes stripped from the title line
    assert first.text.startswith("Evan Morris Evan L. Morris (January 26, 1977")
    assert len({p.id for p in wiki_passages}) == 1000
    assert all(p.title and p.text for p in wiki_passages)


def test_contents_format_and_title_text_format(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "1", "contents": '"Ada Lindqvist"\nAda was an astronomer.\nSecond line.'},
        {"id": 2, "title": "Uppsala", "text": "Uppsala is a city."},
        "",  # blank lines are skipped
        {"id": "3", "text": "No title here."},
        {"id": "4", "contents": "no title line at all"},
    ])
    got = load_passages(path)
    assert got == [
        Passage("1", "Ada Lindqvist", "Ada was an astronomer.\nSecond line."),
        Passage("2", "Uppsala", "Uppsala is a city."),
        Passage("3", "", "No title here."),
        Passage("4", "", "no title line at all"),
    ]
    assert got[0].contents == '"Ada Lindqvist"\nAda was an astronomer.\nSecond line.'
    assert split_contents(got[0].contents) == (got[0].title, got[0].text)


def test_gzip_corpus(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"id": "7", "contents": '"T"\nbody'}) + "\n")
    assert load_passages(path) == [Passage("7", "T", "body")]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "invalid JSON"),
        ('["id", "contents"]', "expected a JSON object"),
        ('{"contents": "\\"T\\"\\nx"}', "missing field 'id'"),
        ('{"id": "1", "contents": 5}', "field 'contents' must be a string"),
        ('{"id": "1", "title": "T"}', "missing field 'contents'"),
        ('{"id": "1", "title": 3, "text": "x"}', "field 'title' must be a string"),
        ('{"id": null, "text": "x"}', "field 'id' must be"),
    ],
)
def test_malformed_line_names_file_line_and_field(tmp_path, line, needle):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "0", "contents": '"T"\nok'}, line])
    with pytest.raises(ValueError, match=needle) as err:
        load_passages(path)
    assert f"{path}:2" in str(err.value)


def test_missing_corpus_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        next(iter_passages(tmp_path / "nope.jsonl"))


def test_content_hashes():
    assert file_content_hash(SAMPLE) == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    h = passages_content_hash(SMALL)
    assert h == passages_content_hash(list(SMALL))
    assert h != passages_content_hash(SMALL[:3])
    assert h != passages_content_hash([Passage("a", "Zorblat", SMALL[0].text + " ")] + SMALL[1:])
    # length prefixes: moving characters between fields changes the hash
    assert passages_content_hash([Passage("ab", "c", "")]) != passages_content_hash([Passage("a", "bc", "")])


# -- real BM25 on the wiki-18 sample ----------------------------------------------------------------------------------


def test_is_a_retriever_with_the_corpus_hash(wiki):
    assert isinstance(wiki, Retriever)
    assert wiki.content_hash == file_content_hash(SAMPLE)
    assert wiki.num_passages == len(wiki) == 1000


def test_title_query_finds_the_passage_at_rank_1(wiki, wiki_passages):
    titles = sorted({p.title for p in wiki_passages})
    results = wiki.search(titles, 1)
    hits = sum(bool(r) and r[0].title == t for t, r in zip(titles, results))
    assert hits / len(titles) >= 0.95, f"only {hits}/{len(titles)} titles retrieve their passage at rank 1"
    top = wiki.search(["Evan Morris lobbyist Genentech"], 3)[0]
    assert top[0] == Passage("0", "Evan Morris", wiki_passages[0].text, top[0].score)


def test_passage_opening_retrieves_that_exact_passage(wiki, wiki_passages):
    sample = wiki_passages[::50]
    queries = [" ".join(p.text.split()[5:25]) for p in sample]  # a 20-word span of the passage
    results = wiki.search(queries, 3)
    assert all(p.id in [hit.id for hit in r] for p, r in zip(sample, results))
    at_rank_1 = [r[0] for p, r in zip(sample, results) if r[0].id == p.id]
    assert len(at_rank_1) >= 0.9 * len(sample)
    by_id = {p.id: p for p in sample}
    assert all((hit.title, hit.text) == (by_id[hit.id].title, by_id[hit.id].text) for hit in at_rank_1)


def test_topk_scores_and_batch_equals_single(wiki):
    queries = ["American football player", "river in Europe", "album released by the band", "television series"]
    batch = wiki.search(queries, 5)
    assert [len(r) for r in batch] == [5, 5, 5, 5]
    for r in batch:
        scores = [p.score for p in r]
        assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    assert batch == [wiki.search([q], 5)[0] for q in queries]
    assert [p.id for p in wiki.search(queries[:1], 2)[0]] == [p.id for p in batch[0][:2]]


def test_same_ranking_and_scores_as_a_plain_bm25s_pipeline(wiki, wiki_passages):
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    texts = [f"{p.title}\n{p.text}" for p in wiki_passages]
    plain = bm25s.BM25(backend="numba")
    plain.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    queries = [" ".join(p.text.split()[10:16]) for p in wiki_passages[::25]] + ["Genentech lobbyist", "Roche"]
    docs, scores = plain.retrieve(bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False),
                                  k=5, show_progress=False)
    ours = wiki.search(queries, 5)
    for q, row_docs, row_scores, hits in zip(queries, docs, scores, ours):
        expected = [(wiki_passages[d].id, float(s)) for d, s in zip(row_docs, row_scores) if s > 0]
        assert [h.id for h in hits] == [d for d, _ in expected], q
        assert [h.score for h in hits] == pytest.approx([s for _, s in expected], rel=1e-6), q


def test_concurrent_searches_from_threads(wiki):
    from concurrent.futures import ThreadPoolExecutor

    queries = [["Evan Morris", "river in Europe", "the of"], ["television series"], ["album band", "Roche"]] * 8
    expected = [wiki.search(q, 3) for q in queries]
    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(lambda q: wiki.search(q, 3), queries)) == expected


def _search_in_child(retriever, queue):
    queue.put([[p.id for p in hits] for hits in retriever.search(["Evan Morris", "Roche", "river"], 2)])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_usable_in_worker_processes(wiki, method):
    # fork after the parent ran the parallel kernel (GNU OpenMP aborts such a child unless it searches serially);
    # spawn pickles the retriever by reference to its on-disk index.
    import multiprocessing as mp

    expected = [[p.id for p in hits] for hits in wiki.search(["Evan Morris", "Roche", "river"], 2)]
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    proc = ctx.Process(target=_search_in_child, args=(wiki, queue))
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.kill()
    assert proc.exitcode == 0
    assert queue.get(timeout=5) == expected


def test_pickle_round_trip(wiki):
    import pickle

    data = pickle.dumps(wiki)
    assert len(data) < 10_000  # a reference to the index directory, not the index
    clone = pickle.loads(data)
    assert clone.content_hash == wiki.content_hash
    assert clone.search(["Evan Morris"], 3) == wiki.search(["Evan Morris"], 3)


def test_stopword_only_and_unknown_queries_return_empty(wiki):
    results = wiki.search(["the of and a", "", "xyzzyqwv", "Evan Morris", "   "], 3)
    assert results[0] == [] and results[1] == [] and results[2] == [] and results[4] == []
    assert results[3][0].title == "Evan Morris"
    assert wiki.search(["the", "is it"], 3) == [[], []]
    assert wiki.search([], 3) == []


def test_bad_arguments(wiki):
    with pytest.raises(TypeError, match="sequence of queries"):
        wiki.search("Evan Morris", 3)
    with pytest.raises(ValueError, match="topk"):
        wiki.search(["Evan Morris"], 0)


def test_small_corpus_returns_at_most_its_size(tmp_path):
    r = BM25Retriever.from_passages(SMALL, cache_dir=tmp_path)
    assert r.content_hash == passages_content_hash(SMALL)
    assert len(r) == 4
    hits = r.search(["Quenn star Zorblat Uppsala Sweden Ada"], 10)[0]
    assert 2 <= len(hits) <= 4 and len({p.id for p in hits}) == len(hits)
    assert r.search(["Lindqvist astronomer"], 10)[0][0].id == "c"
    # only passages sharing a term are returned, never zero-score padding
    assert [p.id for p in r.search(["astronomer"], 3)[0]] == ["c"]


def test_empty_corpus_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Retriever.from_passages([], cache_dir=tmp_path)


# -- the on-disk index cache ------------------------------------------------------------------------------------------


def test_second_construction_loads_the_cached_index(tmp_path, monkeypatch):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": p.id, "title": p.title, "text": p.text} for p in SMALL])
    first = BM25Retriever(corpus, cache_dir=tmp_path / "cache")
    assert not first.loaded_from_cache and first.index_dir.is_dir()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the index was rebuilt instead of loaded from the cache")

    monkeypatch.setattr(bm25s.BM25, "index", no_rebuild)
    second = BM25Retriever(corpus, cache_dir=tmp_path / "cache")
    assert second.loaded_from_cache and second.index_dir == first.index_dir
    assert second.content_hash == first.content_hash
    q = ["Where was Ada Lindqvist born", "Zorblat orbit"]
    assert second.search(q, 2) == first.search(q, 2)
    monkeypatch.undo()

    # changed content → a different index, rebuilt; different BM25 parameters → a different index too
    corpus.write_text(corpus.read_text() + json.dumps({"id": "e", "title": "Quenn II", "text": "Another star."}) + "\n")
    third = BM25Retriever(corpus, cache_dir=tmp_path / "cache")
    assert not third.loaded_from_cache and third.index_dir != first.index_dir and len(third) == 5
    fourth = BM25Retriever(corpus, cache_dir=tmp_path / "cache", k1=1.2)
    assert not fourth.loaded_from_cache and fourth.index_dir != third.index_dir


def test_from_passages_is_cached_and_cache_dir_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("IGPO_CACHE_DIR", str(tmp_path / "envcache"))
    first = BM25Retriever.from_passages(SMALL)
    assert first.index_dir.parent == tmp_path / "envcache" / "indexes" and not first.loaded_from_cache
    second = BM25Retriever.from_passages(list(SMALL))
    assert second.loaded_from_cache and second.content_hash == first.content_hash


def test_broken_cache_directory_is_rebuilt(tmp_path):
    first = BM25Retriever.from_passages(SMALL, cache_dir=tmp_path)
    (first.index_dir / "igpo_index.json").unlink()  # e.g. an interrupted or foreign directory
    with pytest.warns(RuntimeWarning, match="no igpo_index.json"):
        second = BM25Retriever.from_passages(SMALL, cache_dir=tmp_path)
    assert not second.loaded_from_cache
    assert second.search(["Uppsala city"], 1)[0][0].id == "d"
    assert BM25Retriever.from_passages(SMALL, cache_dir=tmp_path).loaded_from_cache


def test_build_index_and_open_a_prebuilt_directory(tmp_path):
    from igpo_envs.search.bm25 import build_index
    from igpo_envs.search.manifest import IndexManifestError

    manifest = build_index(iter(SMALL), tmp_path / "idx", content_hash="abc123", source="small", batch_rows=3)
    assert (manifest.engine, manifest.num_docs, manifest.corpus_sha256) == ("bm25s", 4, "abc123")
    opened = BM25Retriever.from_index_dir(tmp_path / "idx", content_hash="abc123")
    assert opened.content_hash == "abc123" and len(opened) == 4
    # passages written in several Arrow batches come back in index order
    assert [p.id for p in opened.search(["Uppsala Sweden", "Zorblat"], 1)[0]] == ["d"]
    assert opened.search(["Zorblat planet"], 1)[0][0] == Passage("a", "Zorblat", SMALL[0].text,
                                                                 opened.search(["Zorblat planet"], 1)[0][0].score)
    with pytest.raises(IndexManifestError, match="abc123"):
        BM25Retriever.from_index_dir(tmp_path / "idx", content_hash="other")
    with pytest.raises(IndexManifestError, match="not found"):
        BM25Retriever.from_index_dir(tmp_path)


CACHE_FILES = ["data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json",
               "params.index.json", "passages.arrow"]
CACHE_QUERIES = ["Evan Morris lobbyist", "Horatio Hale ethnologist", "Absalon Valdemar", "television series",
                 "Twycross Zoo chimpanzees", "American football coach"]


@pytest.fixture(scope="module")
def sample_200(tmp_path_factory):
    corpus = write_jsonl(tmp_path_factory.mktemp("c") / "c.jsonl",
                         [{"id": p.id, "contents": p.contents} for p in list(iter_passages(SAMPLE))[:200]])
    reference = BM25Retriever(corpus, cache_dir=tmp_path_factory.mktemp("ref"))
    return corpus, reference.search(CACHE_QUERIES, 5)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", CACHE_FILES)
def test_damaged_cache_file_is_rebuilt_with_a_warning(tmp_path, sample_200, name, how):
    """Any damaged file crashed every later start with raw library errors, or (edited) gave silently wrong results."""
    corpus, expected = sample_200
    first = BM25Retriever(corpus, cache_dir=tmp_path)
    damage(first.index_dir / name, how)
    with pytest.warns(RuntimeWarning, match=f"{first.index_dir}.*unusable.*{name}.*rebuilding"):
        again = BM25Retriever(corpus, cache_dir=tmp_path)
    assert not again.loaded_from_cache and again.search(CACHE_QUERIES, 5) == expected
    assert BM25Retriever(corpus, cache_dir=tmp_path).loaded_from_cache  # healed


@pytest.mark.parametrize("content", [b"\xff\xfe{not utf-8", b"{", b"[]", b'{"format": 1, "engine": "bm25s", '
                                     b'"corpus_sha256": 7, "num_docs": 4}', b"\x00" * 100])
def test_garbled_manifest_counts_as_corrupt(tmp_path, content):
    first = BM25Retriever.from_passages(SMALL, cache_dir=tmp_path)
    (first.index_dir / "igpo_index.json").write_bytes(content)
    with pytest.warns(RuntimeWarning, match="igpo_index.json"):
        again = BM25Retriever.from_passages(SMALL, cache_dir=tmp_path)
    assert again.search(["Uppsala city"], 1)[0][0].id == "d"


def test_out_of_range_doc_id_in_a_prebuilt_index_is_an_error_not_a_crash(tmp_path):
    import numpy as np

    from igpo_envs.search.bm25 import build_index
    from igpo_envs.search.manifest import IndexManifestError

    build_index(iter(SMALL), tmp_path / "idx", content_hash="abc", source="small")
    indices = np.load(tmp_path / "idx" / "indices.csc.index.npy")
    indices[0] = 10**6  # same size: only the content check or the structure check can see it
    np.save(tmp_path / "idx" / "indices.csc.index.npy", indices)
    with pytest.raises(IndexManifestError, match="documents outside 0..3"):
        BM25Retriever.from_index_dir(tmp_path / "idx")
    (tmp_path / "idx" / "passages.arrow").write_bytes(b"short")
    with pytest.raises(IndexManifestError, match="passages.arrow: 5 bytes"):
        BM25Retriever.from_index_dir(tmp_path / "idx")


# -- make_retriever ---------------------------------------------------------------------------------------------------


def test_make_retriever_sources(tmp_path, toy_retriever):
    assert make_retriever() is None
    assert make_retriever(retriever=toy_retriever) is toy_retriever
    from_path = make_retriever(corpus=SAMPLE, cache_dir=tmp_path)
    assert isinstance(from_path, BM25Retriever) and from_path.content_hash == file_content_hash(SAMPLE)
    assert isinstance(make_retriever(corpus=str(SAMPLE), cache_dir=tmp_path), BM25Retriever)
    from_list = make_retriever(corpus=SMALL, cache_dir=tmp_path)
    assert isinstance(from_list, BM25Retriever) and len(from_list) == 4

    from igpo_envs.search.http import HTTPRetriever

    http = make_retriever(retriever_url="http://127.0.0.1:9/retrieve", timeout=1.0)
    assert isinstance(http, HTTPRetriever) and http.url == "http://127.0.0.1:9/retrieve"


def test_make_retriever_errors(tmp_path, toy_retriever):
    with pytest.raises(ValueError, match="at most one.*corpus and retriever_url"):
        make_retriever(corpus=SAMPLE, retriever_url="http://127.0.0.1:9/retrieve")
    with pytest.raises(ValueError, match="retriever_url and retriever"):
        make_retriever(retriever_url="http://127.0.0.1:9/retrieve", retriever=toy_retriever)
    with pytest.raises(ValueError, match="corpus file not found.*missing.jsonl"):
        make_retriever(corpus=tmp_path / "missing.jsonl")
    with pytest.raises(TypeError, match="Retriever protocol|must implement"):
        make_retriever(retriever=object())
    with pytest.raises(ValueError, match="item 1"):
        make_retriever(corpus=[SMALL[0], "not a passage"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="without a corpus"):
        make_retriever(cache_dir=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_corpus_rows_are_the_stored_rows(tmp_path, gz):
    from igpo_envs.search.corpus import CorpusRows

    rows = [{"id": "1", "contents": "Untitled text"}, {"id": 2, "title": "T", "text": "y", "extra": [1]},
            {"id": "1", "contents": '"Again"\nsame id'}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    if gz:
        gz_path = tmp_path / "c.jsonl.gz"
        gz_path.write_bytes(gzip.compress(path.read_bytes()))
        path = gz_path
    with pytest.warns(RuntimeWarning, match="1 rows repeat an earlier row's id"):
        stored = CorpusRows(path)
    assert stored.get("1") == rows[0] and stored.get("2") == rows[1] and stored.get(2) == rows[1]
    assert stored.get("3") is None and len(stored) == 3
