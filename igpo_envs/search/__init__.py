"""Search backends behind one batched interface, :class:`~igpo_envs.search.base.Retriever`.

- :class:`~igpo_envs.search.bm25.BM25Retriever`: local bm25s (numba) over a wiki-18 jsonl corpus, cached on disk.
- :class:`~igpo_envs.search.http.HTTPRetriever`: a client of any Search-R1-protocol retrieval server, such as ours
  (``igpo-retriever``, :mod:`igpo_envs.search.server`).
- tantivy (:mod:`~igpo_envs.search.tantivy_index`), dense (:mod:`~igpo_envs.search.dense`: an encoder + FAISS) and
  hybrid (:mod:`~igpo_envs.search.hybrid`: BM25 + dense by reciprocal rank), selected by name (:data:`ENGINES`).

:func:`make_retriever` turns the env's ``corpus=`` / ``retriever_url=`` / ``retriever=`` arguments into one of these.
The backends are imported lazily, so importing this package does not load bm25s, numba or requests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from igpo_envs.search.base import Retriever, RetrieverError
from igpo_envs.types import Passage

if TYPE_CHECKING:
    from igpo_envs.search.bm25 import BM25Retriever
    from igpo_envs.search.http import HTTPRetriever

__all__ = ["ENGINES", "BM25Retriever", "HTTPRetriever", "Retriever", "RetrieverError", "make_retriever"]


_SCALE_EXPORTS = {"open_index": "igpo_envs.search.index", "TantivyRetriever": "igpo_envs.search.tantivy_index",
                  "RayRetrieverPool": "igpo_envs.search.ray_pool", "DenseRetriever": "igpo_envs.search.dense",
                  "HybridRetriever": "igpo_envs.search.hybrid"}


def __getattr__(name: str) -> Any:
    if name == "BM25Retriever":
        from igpo_envs.search.bm25 import BM25Retriever

        return BM25Retriever
    if name == "HTTPRetriever":
        from igpo_envs.search.http import HTTPRetriever

        return HTTPRetriever
    if name in _SCALE_EXPORTS:  # issue 6: on-disk indexes (igpo-index) and the Ray pool
        import importlib

        return getattr(importlib.import_module(_SCALE_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ENGINES = ("bm25s", "tantivy", "dense", "hybrid")
#: Options of the dense engine that shape how an index is built (the rest open it: model, prefixes, ef_search, ...).
_DENSE_BUILD_KEYS = ("index_type", "shard_size", "chunk_rows", "hnsw_m", "ef_construction")
_HYBRID_KEYS = ("sparse", "sparse_index", "rrf_k", "depth", "weights")


def _corpus_file(corpus: Any) -> Path | None:
    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus).expanduser()
        if not path.is_file():
            raise ValueError(f"corpus file not found: {path} (expected a wiki-18 jsonl file)")
        return path
    return None


def _local_engine(engine: str, corpus: Any, index: str | os.PathLike[str] | None, kwargs: dict) -> Retriever:
    """``retriever="bm25s"|"tantivy"|"dense"|"hybrid"``: a prebuilt ``index=`` directory (checked against ``corpus=``
    when both are given), or an index of ``corpus=`` cached on disk by its content hash like the default BM25 index."""
    if engine not in ENGINES:
        raise ValueError(f"unknown retriever engine {engine!r}; expected one of {ENGINES} or a Retriever instance")
    if engine == "dense":
        return _dense_engine(corpus, index, kwargs)
    if engine == "hybrid":
        return _hybrid_engine(corpus, index, kwargs)
    from igpo_envs.search.index import build_index, cached_index_dir, corpus_sha256, open_index

    if index is not None:
        return open_index(index, corpus=corpus, **kwargs)
    if _corpus_file(corpus) is None:
        raise ValueError(f"retriever={engine!r} needs corpus= (a wiki-18 jsonl file) or index= (a prebuilt index "
                         f"directory from `igpo-index build`); got corpus={corpus!r}")
    if engine == "bm25s":
        from igpo_envs.search.bm25 import BM25Retriever

        return BM25Retriever(Path(corpus).expanduser(), **kwargs)
    cache_dir = kwargs.pop("cache_dir", None)
    out = cached_index_dir(f"tantivy-{corpus_sha256(corpus)[:24]}",
                           lambda tmp: build_index(corpus, "tantivy", tmp, progress=False), cache_dir=cache_dir)
    return open_index(out, corpus=corpus, **kwargs)


def _dense_engine(corpus: Any, index: str | os.PathLike[str] | None, kwargs: dict) -> Retriever:
    """``retriever="dense"``: ``index=`` (a dense index directory), ``faiss_index=`` (a FAISS file of ``corpus``,
    e.g. Search-R1's ``e5_Flat.index``), or ``corpus=`` (a jsonl file or passages) embedded once with ``model=``
    and cached by corpus content, encoder and index options."""
    import hashlib
    import inspect

    from igpo_envs.search.corpus import file_content_hash, iter_passages, passages_content_hash
    from igpo_envs.search.dense import DenseRetriever, build_dense_index, load_encoder
    from igpo_envs.search.index import cached_index_dir, open_index

    kwargs = dict(kwargs)
    faiss_index = kwargs.pop("faiss_index", None)
    cache_dir = kwargs.pop("cache_dir", None)
    if index is not None:
        if faiss_index is not None:
            raise ValueError("give index= (an igpo index directory) or faiss_index= (a FAISS file), not both")
        return open_index(index, corpus=corpus, **kwargs)
    path = _corpus_file(corpus)
    if faiss_index is not None:
        if path is None:
            raise ValueError("faiss_index= needs corpus= (the wiki-18 jsonl file the FAISS index was built from)")
        if "model" not in kwargs:
            raise ValueError("faiss_index= needs model= (the encoder that built it, e.g. 'intfloat/e5-base-v2')")
        return DenseRetriever.from_faiss(faiss_index, path, cache_dir=cache_dir, **kwargs)
    if path is not None:
        content_hash, passages, source = file_content_hash(path), (lambda: iter_passages(path)), str(path.resolve())
    elif corpus is not None and not isinstance(corpus, (str, bytes)):
        items = _checked_passages(corpus)
        content_hash, passages, source = passages_content_hash(items), (lambda: items), "<passages>"
    else:
        raise ValueError("retriever='dense' needs corpus= (a wiki-18 jsonl file or passages) with model=, index= (a "
                         "dense index directory from `igpo-index build --engine dense`) or faiss_index= with corpus=")
    encoder, rest = load_encoder(kwargs)
    build = {k: rest.pop(k) for k in _DENSE_BUILD_KEYS if k in rest}
    if "ef_search" in rest:
        build["ef_search"] = rest["ef_search"]
    defaults = {k: v.default for k, v in inspect.signature(build_dense_index).parameters.items()
                if k in (*_DENSE_BUILD_KEYS, "ef_search")}
    build = {**defaults, **build}  # an option given at its default value names the same cached index
    key = hashlib.sha256(repr((sorted(encoder.identity().items()), sorted(build.items()))).encode()).hexdigest()
    out = cached_index_dir(
        f"dense-{content_hash[:24]}-{key[:8]}",
        lambda tmp: build_dense_index(passages(), tmp, encoder=encoder, content_hash=content_hash, source=source,
                                      **build),
        cache_dir=cache_dir,
    )
    return DenseRetriever(out, corpus_sha256=content_hash, encoder=encoder, **rest)


def _hybrid_engine(corpus: Any, index: str | os.PathLike[str] | None, kwargs: dict) -> Retriever:
    """``retriever="hybrid"``: a BM25 engine (``sparse="bm25s"|"tantivy"``, over ``corpus=`` or ``sparse_index=``)
    and the dense engine (``index=`` or ``corpus=`` with ``model=``, as for ``"dense"``), fused by reciprocal rank
    (``rrf_k=``, ``depth=``, ``weights=``)."""
    from igpo_envs.search.hybrid import HybridRetriever

    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in _HYBRID_KEYS if k in kwargs}
    sparse_engine = options.pop("sparse", "bm25s")
    if sparse_engine not in ("bm25s", "tantivy"):
        raise ValueError(f"hybrid sparse= must be 'bm25s' or 'tantivy', got {sparse_engine!r}")
    sparse_options = {"cache_dir": kwargs["cache_dir"]} if "cache_dir" in kwargs else {}
    sparse = _local_engine(sparse_engine, corpus, options.pop("sparse_index", None), sparse_options)
    dense = _dense_engine(corpus, index, kwargs)
    return HybridRetriever(sparse, dense, **options)


def _checked_passages(corpus: Any) -> list[Passage]:
    passages = list(corpus)
    bad = next((i for i, p in enumerate(passages) if not isinstance(p, Passage)), None)
    if bad is not None:
        raise ValueError(f"corpus= must be a path or a sequence of Passage; item {bad} is "
                         f"{type(passages[bad]).__name__}")
    return passages


def make_retriever(
    corpus: str | os.PathLike[str] | Sequence[Passage] | None = None,
    retriever_url: str | None = None,
    retriever: Retriever | str | None = None,
    index: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Retriever | None:
    """Build the retriever an env was configured with, from exactly one source (or none).

    Args:
        corpus: a wiki-18 jsonl corpus path → :class:`BM25Retriever`; a sequence of :class:`Passage` →
            :meth:`BM25Retriever.from_passages`.
        retriever_url: a Search-R1 ``/retrieve`` endpoint → :class:`HTTPRetriever`.
        retriever: an already-built retriever, returned as is; or the name of a local engine, ``"bm25s"``,
            ``"tantivy"``, ``"dense"`` (an encoder + FAISS; ``model=`` names the encoder) or ``"hybrid"`` (BM25 and
            dense fused by reciprocal rank), for ``corpus=`` (indexed once, cached by content hash) or a prebuilt
            ``index=``.
        index: a directory written by ``igpo-index build`` (its manifest is checked against ``corpus=`` if given).
        **kwargs: passed to the constructor chosen (e.g. ``cache_dir=`` for BM25, ``timeout=`` for HTTP;
            ``model=``, ``query_prefix=``, ``index_type=``, ``faiss_index=`` ... for dense, see
            :mod:`igpo_envs.search.dense`; ``sparse=``, ``rrf_k=`` for hybrid).

    Returns:
        The retriever, or None when no source is given (the env then explains how to configure one).

    Raises:
        ValueError: more than one source is given, or the corpus file does not exist.
        TypeError: ``retriever`` does not implement the Retriever protocol.
    """
    if isinstance(retriever, str) or index is not None:
        if retriever_url is not None:
            raise ValueError("give at most one of retriever_url= and a local index/engine")
        if index is not None and not isinstance(retriever, str):  # the index's own engine
            from igpo_envs.search.manifest import read_manifest

            retriever = read_manifest(index).engine
        return _local_engine(retriever, corpus, index, kwargs)
    given = [name for name, value in (("corpus", corpus), ("retriever_url", retriever_url),
                                      ("retriever", retriever)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of corpus=, retriever_url=, retriever=; got {' and '.join(given)}")
    if retriever is not None:
        if not isinstance(retriever, Retriever):
            raise TypeError(f"retriever= must implement igpo_envs.search.base.Retriever (a `content_hash` attribute "
                            f"and a batched `search(queries, topk)`), got {type(retriever).__name__}")
        if kwargs:
            raise ValueError(f"options {sorted(kwargs)} cannot apply to an already-built retriever")
        return retriever
    if retriever_url is not None:
        from igpo_envs.search.http import HTTPRetriever

        return HTTPRetriever(retriever_url, **kwargs)
    if corpus is None:
        if kwargs:
            raise ValueError(f"retriever options {sorted(kwargs)} given without a corpus= or retriever_url=")
        return None

    from igpo_envs.search.bm25 import BM25Retriever

    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus).expanduser()
        if not path.is_file():
            raise ValueError(f"corpus file not found: {path} (expected a wiki-18 jsonl file)")
        return BM25Retriever(path, **kwargs)
    return BM25Retriever.from_passages(_checked_passages(corpus), **kwargs)
