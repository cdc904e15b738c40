"""The dense engine (an encoder + FAISS), Search-R1's prebuilt index format, and hybrid BM25 + dense retrieval.

A tiny randomly initialised BERT with a WordPiece tokenizer trained on the corpus stands in for e5/MiniLM: random
weights still map equal texts to equal vectors, which is all these tests need to check the plumbing exactly.
"""

from __future__ import annotations

import gc
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

import faiss
import gymnasium as gym

import igpo_envs  # noqa: F401
from igpo_envs.search import make_retriever
from igpo_envs.search.corpus import file_content_hash, load_passages
from igpo_envs.search.dense import DenseEncoder, DenseRetriever, weights_sha256
from igpo_envs.search.hybrid import HybridRetriever, reciprocal_rank_fusion
from igpo_envs.search.index_cli import main as index_main
from igpo_envs.search.index_cli import open_index
from igpo_envs.search.manifest import IndexManifestError, read_manifest
from igpo_envs.types import Passage

SAMPLE = Path(__file__).resolve().parents[1] / "igpo_envs" / "data" / "wiki18_sample.jsonl"
N_PASSAGES = 240


def make_tiny_encoder(out: Path, corpus: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-d BERT (random weights) with a WordPiece tokenizer trained on ``corpus``, saved as a plain
    transformers folder (sentence-transformers gives it mean pooling)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = [json.loads(line)["contents"] for line in corpus.read_text().splitlines() if line.strip()]
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=1500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=128).save_pretrained(out)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "wiki.jsonl"
    path.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:N_PASSAGES]))
    return path


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, corpus) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"), corpus)


@pytest.fixture(scope="module")
def encoder(tiny_encoder) -> DenseEncoder:
    return DenseEncoder(str(tiny_encoder))


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus, tiny_encoder) -> Path:
    """A flat index in 3 shards (100 + 100 + 40 vectors), built through the CLI."""
    out = tmp_path_factory.mktemp("dense") / "flat"
    assert index_main(["build", "--corpus", str(corpus), "--engine", "dense", "--model", str(tiny_encoder),
                       "--out", str(out), "--shard-size", "100", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def retriever(built, encoder) -> DenseRetriever:
    return DenseRetriever(built, encoder=encoder)


def brute_force_top(encoder: DenseEncoder, passages: list[Passage], queries: list[str], k: int) -> list[list[str]]:
    scores = encoder.encode_queries(queries) @ encoder.encode_passages(passages).T
    return [[passages[i].id for i in np.argsort(-row, kind="stable")[:k]] for row in scores]


def test_build_records_encoder_corpus_and_index_type(built, corpus, tiny_encoder):
    manifest = read_manifest(built)
    assert manifest.engine == "dense" and manifest.num_docs == N_PASSAGES
    assert manifest.corpus_sha256 == file_content_hash(corpus)
    enc = manifest.encoder
    assert enc["name"] == str(tiny_encoder.resolve()) and enc["dim"] == 32 and enc["pooling"] == "mean"
    assert enc["query_prefix"] == enc["passage_prefix"] == "" and enc["normalize"] is True
    assert enc["weights_sha256"] == weights_sha256(tiny_encoder)
    assert manifest.parameters["index_type"] == "flat" and len(manifest.parameters["shards"]) == 3


def test_search_equals_brute_force_inner_product_across_shards(retriever, encoder, corpus):
    passages = load_passages(corpus)
    queries = [passages[i].contents for i in (0, 99, 100, 150, 239)] + ["who founded the company", ""]
    hits = retriever.search(queries, 5)
    assert [[p.id for p in h] for h in hits] == brute_force_top(encoder, passages, queries, 5)
    for i, h in zip((0, 99, 100, 150, 239), hits):  # a passage's own text finds it, with cosine 1
        assert h[0].id == passages[i].id and h[0].title == passages[i].title and h[0].text == passages[i].text
        assert h[0].score == pytest.approx(1.0, abs=1e-4)
    assert all(h[i].score >= h[i + 1].score for h in hits for i in range(4))
    assert retriever.search([], 3) == [] and len(retriever.search(["x"], 10_000)[0]) == N_PASSAGES


def test_bad_queries_are_clear_errors(retriever):
    with pytest.raises(TypeError, match="wrap a single query"):
        retriever.search("one query", 3)
    with pytest.raises(ValueError, match="topk must be >= 1"):
        retriever.search(["q"], 0)
    with pytest.raises(TypeError, match="query 1 must be a str"):
        retriever.search(["q", None], 3)


def test_mmap_and_read_give_the_same_answers(built, encoder, retriever):
    loaded = DenseRetriever(built, encoder=encoder, mmap=False)
    queries = ["Evan Morris lobbyist", "a history of the expedition"]
    assert loaded.search(queries, 4) == retriever.search(queries, 4)


def test_mismatched_encoder_or_corpus_is_refused(built, tiny_encoder, tmp_path, corpus):
    with pytest.raises(IndexManifestError, match="pooling: index 'mean', asked 'cls'"):
        open_index(built, model=str(tiny_encoder), pooling="cls")
    with pytest.raises(IndexManifestError, match="query_prefix: index '', asked 'query: '"):
        open_index(built, query_prefix="query: ")
    other = make_tiny_encoder(tmp_path / "other", corpus, seed=1)  # same architecture, other weights
    with pytest.raises(IndexManifestError, match="weights_sha256"):
        open_index(built, model=str(other))
    changed = tmp_path / "changed.jsonl"
    changed.write_text(corpus.read_text().replace("lobbyist", "Lobbyist", 1))
    with pytest.raises(IndexManifestError, match="sha256"):
        open_index(built, corpus=changed)


def test_env_searches_with_the_dense_engine_and_caches_the_index(tmp_path, monkeypatch, corpus, tiny_encoder):
    monkeypatch.setenv("IGPO_CACHE_DIR", str(tmp_path))
    env = gym.make("igpo/NQ-v0", corpus=corpus, retriever="dense", retriever_kwargs={"model": str(tiny_encoder)})
    env.reset(seed=0)
    first = load_passages(corpus)[3]
    obs, *_ = env.step(f"<search> {first.contents} </search>")
    assert f"Doc 1 (Title: {first.title})" in obs
    built = sorted(p.name for p in (tmp_path / "indexes").iterdir())
    assert len(built) == 1 and built[0].startswith("dense-")
    again = make_retriever(corpus=corpus, retriever="dense", model=str(tiny_encoder))
    assert sorted(p.name for p in (tmp_path / "indexes").iterdir()) == built  # opened, not rebuilt
    assert again.search([first.contents], 1)[0][0].id == first.id
    hnsw = make_retriever(corpus=corpus, retriever="dense", model=str(tiny_encoder), index_type="hnsw")
    assert len(list((tmp_path / "indexes").iterdir())) == 2  # other index options: another cache entry
    assert hnsw.manifest.parameters["index_type"] == "hnsw"
    assert hnsw.search([first.contents], 1)[0][0].id == first.id


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_damaged_dense_auto_cache_is_rebuilt_with_a_warning(tmp_path, corpus, tiny_encoder, how):
    from file_damage import damage

    from igpo_envs.search.manifest import read_manifest

    first = make_retriever(corpus=corpus, retriever="dense", model=str(tiny_encoder), cache_dir=tmp_path)
    query = load_passages(corpus)[5].contents
    expected = [p.id for p in first.search([query], 3)[0]]
    (index_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("dense-")]
    del first
    gc.collect()  # unmapped (cycles too) before its files change under it: a live map of a rewritten file faults
    victim = max(read_manifest(index_dir).files, key=lambda name: (index_dir / name).stat().st_size)
    damage(index_dir / victim, how)
    with pytest.warns(RuntimeWarning, match="index cache .*dense-.* is unusable"):
        again = make_retriever(corpus=corpus, retriever="dense", model=str(tiny_encoder), cache_dir=tmp_path)
    assert [p.id for p in again.search([query], 3)[0]] == expected


def test_hnsw_agrees_with_flat(tmp_path, encoder, retriever, corpus):
    passages = load_passages(corpus)
    hnsw = make_retriever(corpus=passages, retriever="dense", encoder=encoder, index_type="hnsw", hnsw_m=16,
                          ef_search=64, cache_dir=tmp_path)
    queries = [p.text[:80] for p in passages[::6]]
    same = [h[0].id == f[0].id for h, f in zip(hnsw.search(queries, 1), retriever.search(queries, 1))]
    assert np.mean(same) >= 0.95


def test_pickled_retriever_reopens_the_index(retriever):
    clone = pickle.loads(pickle.dumps(retriever))
    assert clone.search(["Genentech lobbyist"], 3) == retriever.search(["Genentech lobbyist"], 3)


def _search_in_child(retriever, queries, out):
    out.put([[p.id for p in h] for h in retriever.search(queries, 3)])


def test_a_forked_worker_searches_after_the_parent_used_its_thread_pools(retriever):
    import multiprocessing
    import queue

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    try:
        queries = ["Evan Morris lobbyist"] * 32
        expected = [[p.id for p in h] for h in retriever.search(queries, 3)]  # starts both OpenMP pools here
        context = multiprocessing.get_context("fork")  # as gymnasium's AsyncVectorEnv on Linux
        out = context.Queue()
        child = context.Process(target=_search_in_child, args=(retriever, queries, out))
        child.start()
        try:
            answer = out.get(timeout=120)  # read before joining: a child exits only once its queue is drained
        except queue.Empty:
            pytest.fail("the forked child deadlocked in OpenMP")
        finally:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
        assert answer == expected
    finally:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


def search_r1_style_index(model_dir: Path, passages: list[Passage], path: Path) -> Path:
    """A FAISS index built the way Search-R1 / FlashRAG build e5_Flat.index: transformers encoder, "passage: " +
    contents, masked mean pooling, L2-normalised, ``index_factory(d, "Flat", METRIC_INNER_PRODUCT)``."""
    vectors = search_r1_encode(model_dir, [f"passage: {p.contents}" for p in passages])
    index = faiss.index_factory(vectors.shape[1], "Flat", faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    faiss.write_index(index, str(path))
    return path


def search_r1_encode(model_dir: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        inputs = tokenizer(texts, max_length=128, padding=True, truncation=True, return_tensors="pt")
        hidden = model(**inputs).last_hidden_state.masked_fill(~inputs["attention_mask"][..., None].bool(), 0.0)
        pooled = hidden.sum(dim=1) / inputs["attention_mask"].sum(dim=1)[..., None]
        return torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)


def test_search_r1_prebuilt_index_opens_without_reencoding(tmp_path, corpus, tiny_encoder):
    passages = load_passages(corpus)
    # An "e5" model folder name turns on e5's prefixes, as Search-R1's retriever does for e5 models.
    e5 = tmp_path / "e5-tiny"
    shutil.copytree(tiny_encoder, e5)
    faiss_file = search_r1_style_index(e5, passages, tmp_path / "e5_Flat.index")
    ours = make_retriever(corpus=corpus, retriever="dense", faiss_index=faiss_file, model=str(e5),
                          cache_dir=tmp_path / "cache")
    assert (ours.encoder.query_prefix, ours.encoder.passage_prefix, ours.encoder.pooling) == \
           ("query: ", "passage: ", "mean")
    queries = ["Evan Morris lobbyist Genentech", "Horatio Hale ethnologist", passages[7].title]
    reference = faiss.read_index(str(faiss_file)).search(search_r1_encode(e5, [f"query: {q}" for q in queries]), 3)
    hits = ours.search(queries, 3)
    assert [[int(p.id) for p in h] for h in hits] == [[int(passages[i].id) for i in row] for row in reference[1]]
    np.testing.assert_allclose([[p.score for p in h] for h in hits], reference[0], atol=1e-4)
    # The CLI does the same into a directory every server and the Ray pool can open.
    out = tmp_path / "imported"
    assert index_main(["import-faiss", "--faiss", str(faiss_file), "--corpus", str(corpus), "--model", str(e5),
                       "--out", str(out), "--quiet"]) == 0
    assert open_index(out, corpus=corpus).search(queries, 3) == hits


def test_faiss_file_of_another_corpus_or_encoder_is_refused(tmp_path, corpus, tiny_encoder, capsys):
    passages = load_passages(corpus)
    faiss_file = search_r1_style_index(tiny_encoder, passages[:-1], tmp_path / "short.index")
    assert index_main(["import-faiss", "--faiss", str(faiss_file), "--corpus", str(corpus), "--model",
                       str(tiny_encoder), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert f"holds {N_PASSAGES - 1} vectors but the corpus" in capsys.readouterr().err
    wide = faiss.IndexFlatIP(48)
    wide.add(np.zeros((N_PASSAGES, 48), dtype=np.float32))
    faiss.write_index(wide, str(tmp_path / "wide.index"))
    with pytest.raises(IndexManifestError, match="48-d vectors but encoder"):
        make_retriever(corpus=corpus, retriever="dense", faiss_index=tmp_path / "wide.index",
                       model=str(tiny_encoder), cache_dir=tmp_path / "cache")


def test_reciprocal_rank_fusion_arithmetic():
    a, b, c, d = (Passage(x, x, x) for x in "abcd")
    fused = reciprocal_rank_fusion([[a, b, c], [c, d, a]], k=60)
    expected = {"a": 1 / 61 + 1 / 63, "c": 1 / 63 + 1 / 61, "b": 1 / 62, "d": 1 / 62}
    assert [p.id for p in fused] == ["a", "c", "b", "d"]  # a/c and b/d tie: first seen first
    assert {p.id: p.score for p in fused} == pytest.approx(expected)
    weighted = reciprocal_rank_fusion([[a, b], [b, a]], k=1, weights=[1.0, 3.0])
    assert [p.id for p in weighted] == ["b", "a"]


def test_hybrid_engine_fuses_bm25_and_dense(tmp_path, corpus, tiny_encoder, encoder):
    hybrid = make_retriever(corpus=corpus, retriever="hybrid", encoder=encoder, cache_dir=tmp_path)
    assert isinstance(hybrid, HybridRetriever) and hybrid.content_hash == file_content_hash(corpus)
    queries = ["Evan Morris lobbyist Genentech", load_passages(corpus)[9].contents]
    sparse, dense = hybrid.sparse.search(queries, 20), hybrid.dense.search(queries, 20)
    for q, hits in enumerate(hybrid.search(queries, 5)):
        assert hits == reciprocal_rank_fusion([sparse[q], dense[q]])[:5]
    assert hybrid.search(queries, 1)[1][0].id == load_passages(corpus)[9].id  # top of both engines


def test_igpo_retriever_serves_the_dense_engine(built, corpus, encoder, tiny_encoder, tmp_path):
    from igpo_envs.search.server import build_parser, build_retriever

    parser = build_parser()
    by_manifest = build_retriever(parser.parse_args(["--index", str(built), "--corpus", str(corpus)]))
    assert isinstance(by_manifest, DenseRetriever)  # a prebuilt index names its engine
    assert by_manifest.search(["Genentech"], 2) == DenseRetriever(built, encoder=encoder).search(["Genentech"], 2)
    served = build_retriever(parser.parse_args(["--engine", "dense", "--corpus", str(corpus), "--model",
                                                str(tiny_encoder), "--cache-dir", str(tmp_path)]))
    assert served.search(["Genentech"], 2) == by_manifest.search(["Genentech"], 2)
    with pytest.raises(IndexManifestError, match="query_prefix"):
        build_retriever(parser.parse_args(["--index", str(built), "--corpus", str(corpus), "--query-prefix", "q: "]))


def test_dense_needs_a_model_and_a_known_index_type(corpus, tmp_path, tiny_encoder):
    with pytest.raises(ValueError, match="needs model="):
        make_retriever(corpus=corpus, retriever="dense")
    with pytest.raises(ValueError, match="unknown index type 'ivf'"):
        make_retriever(corpus=corpus, retriever="dense", model=str(tiny_encoder), index_type="ivf",
                       cache_dir=tmp_path)
    assert index_main(["build", "--corpus", str(corpus), "--engine", "dense", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow  # Ray start-up and the encoder import in the actor: ~30 s on 2 loaded cores
def test_ray_pool_serves_a_dense_index(built, retriever):
    ray = pytest.importorskip("ray")
    from igpo_envs.search.ray_pool import RayRetrieverPool

    started = not ray.is_initialized()
    try:
        with RayRetrieverPool(built, num_actors=1) as pool:
            queries = ["Evan Morris lobbyist", "ethnologist", "the of"]
            remote, local = pool.search(queries, 3), retriever.search(queries, 3)
            assert [[p.id for p in h] for h in remote] == [[p.id for p in h] for h in local]
            np.testing.assert_allclose([[p.score for p in h] for h in remote], [[p.score for p in h] for h in local],
                                       atol=1e-5)
    finally:
        if started:
            ray.shutdown()
