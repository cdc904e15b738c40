"""Search backends behind one batched interface, :class:`~igpo_envs.search.base.Retriever`.

- :class:`~igpo_envs.search.bm25.BM25Retriever`: local bm25s (numba) over a wiki-18 jsonl corpus, cached on disk.
- :class:`~igpo_envs.search.http.HTTPRetriever`: a client of any Search-R1-protocol retrieval server, such as ours
  (``igpo-retriever``, :mod:`igpo_envs.search.server`).

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


_SCALE_EXPORTS = {"open_index": "igpo_envs.search.index_cli", "TantivyRetriever": "igpo_envs.search.tantivy_index",
                  "RayRetrieverPool": "igpo_envs.search.ray_pool"}


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


ENGINES = ("bm25s", "tantivy")


def _local_engine(engine: str, corpus: Any, index: str | os.PathLike[str] | None, kwargs: dict) -> Retriever:
    """``retriever="bm25s"|"tantivy"``: a prebuilt ``index=`` directory (checked against ``corpus=`` when both are
    given), or an index of ``corpus=`` cached on disk by its content hash like the default BM25 index."""
    if engine not in ENGINES:
        raise ValueError(f"unknown retriever engine {engine!r}; expected one of {ENGINES} or a Retriever instance")
    from igpo_envs.search.index_cli import build_index, corpus_sha256, open_index
    from igpo_envs.search.manifest import MANIFEST_NAME

    if index is not None:
        return open_index(index, corpus=corpus, **kwargs)
    if not isinstance(corpus, (str, os.PathLike)) or not Path(corpus).expanduser().is_file():
        raise ValueError(f"retriever={engine!r} needs corpus= (a wiki-18 jsonl file) or index= (a prebuilt index "
                         f"directory from `igpo-index build`); got corpus={corpus!r}")
    if engine == "bm25s":
        from igpo_envs.search.bm25 import BM25Retriever

        return BM25Retriever(Path(corpus).expanduser(), **kwargs)
    from igpo_envs.search.bm25 import default_cache_dir

    out = default_cache_dir() / f"tantivy-{corpus_sha256(corpus)[:24]}"
    if not (out / MANIFEST_NAME).is_file():
        import shutil
        import tempfile

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".building-"))
        try:
            build_index(corpus, "tantivy", tmp, progress=False)
            tmp.rename(out)
        except OSError:
            if not (out / MANIFEST_NAME).is_file():  # lost a race to an identical build: fine
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return open_index(out, corpus=corpus, **kwargs)


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
        retriever: an already-built retriever, returned as is; or the name of a local engine, ``"bm25s"`` or
            ``"tantivy"``, for ``corpus=`` (indexed once, cached by content hash) or a prebuilt ``index=``.
        index: a directory written by ``igpo-index build`` (its manifest is checked against ``corpus=`` if given).
        **kwargs: passed to the constructor chosen (e.g. ``cache_dir=`` for BM25, ``timeout=`` for HTTP).

    Returns:
        The retriever, or None when no source is given (the env then explains how to configure one).

    Raises:
        ValueError: more than one source is given, or the corpus file does not exist.
        TypeError: ``retriever`` does not implement the Retriever protocol.
    """
    if isinstance(retriever, str) or index is not None:
        if retriever_url is not None:
            raise ValueError("give at most one of retriever_url= and a local index/engine")
        return _local_engine(retriever if isinstance(retriever, str) else "bm25s", corpus, index, kwargs)
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
    passages = list(corpus)
    bad = next((i for i, p in enumerate(passages) if not isinstance(p, Passage)), None)
    if bad is not None:
        raise ValueError(f"corpus= must be a path or a sequence of Passage; item {bad} is "
                         f"{type(passages[bad]).__name__}")
    return BM25Retriever.from_passages(passages, **kwargs)
