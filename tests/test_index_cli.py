"""`igpo-index build/info`, the index manifest, and `open_index`'s refusal of a mismatched corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from igpo_envs.search.bm25 import BM25Retriever
from igpo_envs.search.corpus import file_content_hash
from igpo_envs.search.index_cli import main, open_index
from igpo_envs.search.manifest import MANIFEST_NAME, IndexManifestError, read_manifest

pytest.importorskip("tantivy")

SAMPLE = Path(__file__).resolve().parents[1] / "igpo_envs" / "data" / "wiki18_sample.jsonl"
QUERIES = ["Evan Morris lobbyist Genentech", "Horatio Hale ethnologist expedition", "the of a", "who was Horatio Hale?"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Both engines built once through the CLI entry point."""
    root = tmp_path_factory.mktemp("indexes")
    for engine in ("tantivy", "bm25s"):
        assert main(["build", "--corpus", str(SAMPLE), "--engine", engine, "--out", str(root / engine), "--quiet"]) == 0
    return root


@pytest.fixture
def other_corpus(tmp_path):
    """The sample with one passage changed: same size and shape, different content."""
    lines = SAMPLE.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace("lobbyist", "Lobbyist")
    path = tmp_path / "changed.jsonl"
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("engine", ["tantivy", "bm25s"])
def test_build_writes_a_manifest(built, engine):
    manifest = read_manifest(built / engine)
    assert manifest.engine == engine
    assert manifest.corpus_sha256 == file_content_hash(SAMPLE)
    assert manifest.num_docs == 1000
    assert manifest.created.endswith("Z") and manifest.igpo_version
    assert {"k1", "b"} <= set(manifest.parameters)
    raw = json.loads((built / engine / MANIFEST_NAME).read_text())
    assert raw["corpus_path"] == str(SAMPLE)


@pytest.mark.parametrize("engine", ["tantivy", "bm25s"])
def test_open_index_serves_the_matching_corpus(built, engine):
    retriever = open_index(built / engine, corpus=SAMPLE)
    assert retriever.content_hash == file_content_hash(SAMPLE)
    hits = retriever.search(QUERIES, 3)
    assert hits[0][0].id == "0" and hits[1][0].id == "1" and hits[2] == [] and hits[3][0].id == "1"


def test_cli_bm25s_index_answers_like_the_bm25_retriever(built, tmp_path):
    reference = BM25Retriever(SAMPLE, cache_dir=tmp_path)
    assert open_index(built / "bm25s").search(QUERIES, 5) == reference.search(QUERIES, 5)


@pytest.mark.parametrize("engine", ["tantivy", "bm25s"])
def test_open_index_refuses_a_different_corpus(built, engine, other_corpus):
    with pytest.raises(IndexManifestError) as err:
        open_index(built / engine, corpus=other_corpus)
    message = str(err.value)
    assert file_content_hash(SAMPLE) in message and file_content_hash(other_corpus) in message
    assert str(other_corpus) in message


def test_info_checks_the_corpus(built, other_corpus, capsys):
    assert main(["info", str(built / "tantivy"), "--corpus", str(SAMPLE)]) == 0
    assert "ok: the index matches" in capsys.readouterr().out
    assert main(["info", str(built / "tantivy"), "--corpus", str(other_corpus)]) == 2
    err = capsys.readouterr().err
    assert "igpo-index: error:" in err and file_content_hash(other_corpus) in err


def test_build_shows_progress_and_refuses_a_non_empty_out(built, tmp_path, capsys):
    out = tmp_path / "fresh"
    assert main(["build", "--corpus", str(SAMPLE), "--engine", "tantivy", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "1000/1000" in captured.err  # tqdm bar with the line count as total
    assert "built tantivy index of 1,000 passages" in captured.out
    assert main(["build", "--corpus", str(SAMPLE), "--engine", "bm25s", "--out", str(out), "--quiet"]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_bad_corpus_line_is_reported_with_file_and_line(tmp_path, capsys):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"id": "0", "contents": "\\"T\\"\\nfine"}\n{"id": "1", "contents": 5}\n')
    assert main(["build", "--corpus", str(corpus), "--engine", "tantivy", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert f"{corpus}:2" in capsys.readouterr().err


def test_missing_or_corrupt_manifest_is_a_clear_error(built, tmp_path):
    with pytest.raises(IndexManifestError, match="not an index built by `igpo-index build`"):
        open_index(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(built / "tantivy", copy)
    (copy / MANIFEST_NAME).write_text('{"format": 1, "engine": "tantivy"')
    with pytest.raises(IndexManifestError, match=f"{MANIFEST_NAME}: invalid JSON at line 1"):
        open_index(copy)
    (copy / MANIFEST_NAME).write_text('{"format": 1, "engine": "tantivy"}')
    with pytest.raises(IndexManifestError, match="missing field"):
        open_index(copy)


def test_unknown_engine_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        main(["build", "--corpus", str(SAMPLE), "--engine", "lucene", "--out", str(tmp_path / "x")])


def test_igpo_retriever_serves_a_prebuilt_index(built, other_corpus):
    from igpo_envs.search import server

    parser = server.build_parser()
    retriever = server.build_retriever(parser.parse_args(["--corpus", str(SAMPLE), "--index", str(built / "tantivy")]))
    assert type(retriever).__name__ == "TantivyRetriever" and retriever.search(QUERIES[:1], 1)[0][0].id == "0"
    with pytest.raises(IndexManifestError):
        server.build_retriever(parser.parse_args(["--corpus", str(other_corpus), "--index", str(built / "bm25s")]))
    with pytest.raises(SystemExit, match="--ray needs --index"):
        server.main(["--corpus", str(SAMPLE), "--ray", "--replicas", "2"])
