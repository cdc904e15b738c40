"""The tantivy BM25 backend: same results as bm25s on the real wiki-18 sample, safe query handling, read-only index."""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest
from file_damage import DAMAGES, damage

pytest.importorskip("tantivy")

from igpo_envs.search.base import Retriever
from igpo_envs.search.bm25 import BM25Retriever
from igpo_envs.search.corpus import file_content_hash, iter_passages
from igpo_envs.search.manifest import IndexManifestError, read_manifest
from igpo_envs.search.tantivy_index import TantivyRetriever, build_tantivy_index

SAMPLE = Path(__file__).resolve().parents[1] / "igpo_envs" / "data" / "wiki18_sample.jsonl"


@pytest.fixture(scope="module")
def passages():
    return list(iter_passages(SAMPLE))


@pytest.fixture(scope="module")
def tantivy_dir(tmp_path_factory, passages):
    out = tmp_path_factory.mktemp("tantivy")
    build_tantivy_index(iter(passages), out, corpus_sha256=file_content_hash(SAMPLE), corpus_path=str(SAMPLE))
    return out


@pytest.fixture(scope="module")
def tantivy(tantivy_dir):
    return TantivyRetriever(tantivy_dir)


@pytest.fixture(scope="module")
def bm25(tmp_path_factory):
    return BM25Retriever(SAMPLE, cache_dir=tmp_path_factory.mktemp("bm25s"))


@pytest.fixture(scope="module")
def window_queries(passages):
    """200 six-word windows of real passages: realistic keyword queries with a known source passage."""
    rng = random.Random(0)
    chosen = rng.sample(passages, 200)
    queries = []
    for p in chosen:
        words = p.text.split()
        start = rng.randrange(max(1, len(words) - 6))
        queries.append(" ".join(words[start : start + 6]))
    return chosen, queries


def test_is_a_retriever_with_the_corpus_hash(tantivy, bm25):
    assert isinstance(tantivy, Retriever)
    assert len(tantivy) == 1000
    assert tantivy.content_hash == file_content_hash(SAMPLE) == bm25.content_hash


def test_returns_the_corpus_passages_best_first(tantivy, passages):
    by_id = {p.id: p for p in passages}
    [hits] = tantivy.search(["Evan Morris lobbyist Genentech Roche"], 5)
    assert hits[0].id == "0" and hits[0].title == "Evan Morris"
    for hit in hits:  # stored fields round-trip exactly to the corpus passage
        src = by_id[hit.id]
        assert (hit.title, hit.text) == (src.title, src.text)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0


def test_same_top_results_as_bm25s_on_the_wiki18_sample(tantivy, bm25, window_queries):
    chosen, queries = window_queries
    t_hits, b_hits = tantivy.search(queries, 10), bm25.search(queries, 10)
    top1 = sum(t[0].id == b[0].id for t, b in zip(t_hits, b_hits)) / len(queries)
    overlap = sum(len({p.id for p in t} & {p.id for p in b}) / 10 for t, b in zip(t_hits, b_hits)) / len(queries)
    # Measured 0.99 / 0.96 (tantivy's k1=1.2 vs bm25s's 1.5, one-byte length norms); see tantivy_index's docstring.
    assert top1 >= 0.97, top1
    assert overlap >= 0.90, overlap
    # Both find the passage a query was cut from for nearly every query.
    assert sum(t[0].id == p.id for t, p in zip(t_hits, chosen)) / len(chosen) >= 0.9


@pytest.mark.parametrize(
    "query",
    [
        'title:"Evan Morris" AND (lobbyist OR Genentech)',
        'Evan Morris" lobbyist (Genentech',  # unbalanced quote and parenthesis
        "Evan Morris lobbyist Genentech ^2 ~1 [a TO z] {x} * ? \\ / + - ! &&",
        "Evan: Morris: lobbyist: Genentech:",
    ],
)
def test_query_syntax_is_plain_text(tantivy, query):
    [hits] = tantivy.search([query], 3)
    assert hits and hits[0].id == "0"


def test_query_terms_are_bm25s_terms(tantivy):
    # bm25s's splitter (2+ word chars), lowercase, its English stopwords, Snowball stemming.
    assert tantivy.query_terms("The Lobbyists were running: a B") == ["lobbyist", "were", "run"]


def test_queries_without_searchable_terms_get_no_passages(tantivy, bm25):
    queries = ["", "the a of", "???", "Evan Morris"]
    t_hits = tantivy.search(queries, 3)
    assert t_hits[:3] == [[], [], []] == bm25.search(queries[:3], 3)
    assert t_hits[3][0].id == "0"


def test_threads_give_the_same_answers(tantivy_dir, tantivy, window_queries):
    _, queries = window_queries
    threaded = TantivyRetriever(tantivy_dir, num_threads=2)
    assert threaded.search(queries, 5) == tantivy.search(queries, 5)


def test_rejects_a_single_string(tantivy):
    with pytest.raises(TypeError, match="list of queries"):
        tantivy.search("Evan Morris", 3)


def test_opening_and_searching_does_not_write_to_the_index(tantivy_dir):
    def snapshot():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(tantivy_dir).rglob("*") if p.is_file()}

    before = snapshot()
    TantivyRetriever(tantivy_dir).search(["Evan Morris", "Horatio Hale ethnologist"], 10)
    assert snapshot() == before


def test_manifest_records_the_tantivy_parameters(tantivy_dir):
    manifest = read_manifest(tantivy_dir)
    assert manifest.engine == "tantivy" and manifest.num_docs == 1000
    assert (manifest.parameters["k1"], manifest.parameters["b"]) == (1.2, 0.75)
    assert manifest.corpus_sha256 == file_content_hash(SAMPLE)


def test_refuses_a_corpus_hash_it_was_not_built_from(tantivy_dir):
    with pytest.raises(IndexManifestError) as err:
        TantivyRetriever(tantivy_dir, corpus_sha256="0" * 64)
    assert "0" * 64 in str(err.value) and file_content_hash(SAMPLE) in str(err.value)


def test_refuses_to_build_over_an_existing_index(tantivy_dir, passages):
    with pytest.raises(FileExistsError, match="already holds an index"):
        build_tantivy_index(iter(passages[:3]), tantivy_dir, corpus_sha256="x")


# -- the auto-cache (retriever="tantivy", corpus=...) heals itself; envs over it pickle --------------------------------


def _tantivy_cache(tmp_path, monkeypatch):
    from igpo_envs.search import make_retriever

    monkeypatch.setenv("IGPO_CACHE_DIR", str(tmp_path))
    return make_retriever(corpus=SAMPLE, retriever="tantivy")


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_auto_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, how):
    first = _tantivy_cache(tmp_path, monkeypatch)
    expected = first.search(["Evan Morris lobbyist", "Horatio Hale ethnologist"], 5)
    index_dir = first.index_dir
    del first
    gc.collect()  # unmapped (cycles too) before its files change under it: a live map of a rewritten file faults
    files = sorted(read_manifest(index_dir).files)
    segment = next(name for name in files if name.endswith(".store"))  # stored passages: a corrupt store crashed
    path = index_dir / segment
    damage(path, how)
    with pytest.warns(RuntimeWarning, match=f"index cache .*tantivy-.* is unusable .*{segment}"):
        again = _tantivy_cache(tmp_path, monkeypatch)
    got = again.search(["Evan Morris lobbyist", "Horatio Hale ethnologist"], 5)
    # tantivy's indexing threads split documents over segments differently per build: compare up to tied ranks
    assert [sorted((p.id, round(p.score, 4)) for p in hits) for hits in got] == \
        [sorted((p.id, round(p.score, 4)) for p in hits) for hits in expected]


def test_auto_cache_with_a_non_utf8_manifest_is_rebuilt(tmp_path, monkeypatch):
    first = _tantivy_cache(tmp_path, monkeypatch)
    (first.index_dir / "igpo_index.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.warns(RuntimeWarning, match="UnicodeDecodeError"):
        again = _tantivy_cache(tmp_path, monkeypatch)
    assert again.search(["Evan Morris"], 1)[0][0].id == "0"


def test_prebuilt_index_with_a_truncated_file_is_a_clear_error(tmp_path, passages):
    out = tmp_path / "idx"
    build_tantivy_index(iter(passages[:50]), out, corpus_sha256="x")
    victim = out / sorted(read_manifest(out).files)[-1]
    victim.write_bytes(victim.read_bytes()[:3])
    with pytest.raises(IndexManifestError, match=f"{victim.name}: 3 bytes"):
        TantivyRetriever(out)


def test_env_over_tantivy_pickles_and_deep_copies(tmp_path, monkeypatch):
    import copy
    import pickle

    import gymnasium as gym

    monkeypatch.setenv("IGPO_CACHE_DIR", str(tmp_path))
    env = gym.make("igpo/NQ-v0", corpus=str(SAMPLE), retriever="tantivy")
    for clone in (pickle.loads(pickle.dumps(env)), copy.deepcopy(env)):
        retriever = clone.unwrapped.retriever
        assert isinstance(retriever, TantivyRetriever) and retriever.content_hash == file_content_hash(SAMPLE)
        assert retriever.search(["Evan Morris"], 1) == env.unwrapped.retriever.search(["Evan Morris"], 1)
