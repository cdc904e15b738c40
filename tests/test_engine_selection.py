"""`retriever="bm25s"|"tantivy"` and `index=` select the local engine through the env's usual arguments."""

import shutil
from pathlib import Path

import gymnasium as gym
import pytest

import igpo_envs  # noqa: F401
from igpo_envs.search import make_retriever
from igpo_envs.search.index_cli import build_index
from igpo_envs.search.manifest import IndexManifestError

pytest.importorskip("tantivy")
SAMPLE = Path(__file__).resolve().parents[1] / "igpo_envs" / "data" / "wiki18_sample.jsonl"


def test_tantivy_by_name_is_built_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("IGPO_CACHE_DIR", str(tmp_path))
    first = make_retriever(corpus=SAMPLE, retriever="tantivy")
    assert type(first).__name__ == "TantivyRetriever"
    top = first.search(["Evan Morris lobbyist Genentech"], topk=3)[0]
    assert top[0].title == "Evan Morris"
    built = sorted(p.name for p in (tmp_path / "indexes").iterdir())
    again = make_retriever(corpus=SAMPLE, retriever="tantivy")  # second start opens the cached index
    assert sorted(p.name for p in (tmp_path / "indexes").iterdir()) == built
    assert again.search(["Evan Morris lobbyist Genentech"], topk=3)[0][0].id == top[0].id


def test_env_searches_through_a_prebuilt_index(tmp_path):
    build_index(SAMPLE, "bm25s", tmp_path / "idx", progress=False)
    env = gym.make("igpo/NQ-v0", retriever="bm25s", retriever_kwargs={"index": tmp_path / "idx"})
    env.reset(seed=0)
    obs, *_ = env.step("<search> Evan Morris lobbyist Genentech </search>")
    assert "Doc 1 (Title: Evan Morris)" in obs


def test_prebuilt_index_of_another_corpus_is_refused(tmp_path):
    build_index(SAMPLE, "tantivy", tmp_path / "idx", progress=False)
    other = tmp_path / "other.jsonl"
    shutil.copy(SAMPLE, other)
    with other.open("a") as f:
        f.write('{"id": "x", "contents": "\\"Extra\\"\\nOne more passage."}\n')
    with pytest.raises(IndexManifestError, match="sha256"):
        make_retriever(corpus=other, index=tmp_path / "idx")


def test_unknown_engine_and_missing_corpus_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown retriever engine 'faiss'"):
        make_retriever(corpus=SAMPLE, retriever="faiss")
    with pytest.raises(ValueError, match="needs corpus="):
        make_retriever(retriever="tantivy")
