"""The index library: build an on-disk retrieval index from a wiki-18 jsonl corpus, and open one safely.

The ``igpo-index`` command (:mod:`igpo_envs.search.index_cli`) is a thin front end to it.

Memory while building:

* ``tantivy``: bounded by the indexing heap, not the corpus. Passages are streamed from the file and added one by
  one; tantivy flushes a segment to disk whenever its heap (``--heap-mb``) fills (412 MB peak at 1M passages with
  the default 256 MB heap, measured by benchmarks/retrieval_scale.py).
* ``bm25s``: linear in the corpus. Passages are streamed and tokenized one by one (text is not kept), but bm25s
  needs every passage's token ids in memory to compute document frequencies and the sparse score matrix, so peak
  memory grows with the corpus (2.6 GB at 1M passages measured here, so ~55 GB at 21M). Use tantivy past a few
  million passages.
* ``dense``: bounded by one FAISS shard (``--shard-size`` vectors, 3 GB at 1M x 768-d) plus one chunk of passages
  being encoded; text and finished shards go to disk as they fill (see :mod:`igpo_envs.search.dense`).

Every index directory gets a manifest (``igpo_index.json``: corpus sha256, engine, parameters, doc count, creation
time, igpo version); :func:`open_index` with ``corpus=`` refuses an index built from a different corpus.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from igpo_envs.search.cache import cached_index_dir
from igpo_envs.search.corpus import file_content_hash, iter_passages
from igpo_envs.search.manifest import ENGINES, IndexManifest, read_manifest
from igpo_envs.types import Passage

__all__ = ["build_index", "cached_index_dir", "corpus_sha256", "count_lines", "open_index", "with_progress"]

_HASH_BLOCK = 1 << 20


def corpus_sha256(path: str | Path) -> str:
    """sha256 of the corpus file's bytes (the hash a manifest records), computed in constant memory."""
    return file_content_hash(path)


def with_progress(passages: Iterable[Passage], total: int | None, desc: str, enabled: bool) -> Iterator[Passage]:
    from tqdm.auto import tqdm

    yield from tqdm(passages, total=total, desc=desc, unit=" passages", disable=not enabled, mininterval=1.0)


def count_lines(path: Path) -> int:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(_HASH_BLOCK), b""))


def build_index(
    corpus: str | Path,
    engine: str,
    out: str | Path,
    *,
    heap_mb: int = 256,
    threads: int = 0,
    progress: bool = True,
    count_first: bool = True,
    **dense: Any,
) -> IndexManifest:
    """Build a ``engine`` index of the wiki-18 jsonl ``corpus`` under ``out`` and write its manifest.

    ``engine="dense"`` needs ``model=`` (or ``encoder=``, a loaded :class:`~igpo_envs.search.dense.DenseEncoder`)
    and takes the other :class:`~igpo_envs.search.dense.EncoderConfig` fields and
    :func:`~igpo_envs.search.dense.build_dense_index`'s options (``index_type``, ``shard_size``, ...).
    """
    if dense and engine != "dense":
        raise ValueError(f"options {sorted(dense)} apply to the dense engine only, not {engine!r}")
    corpus = Path(corpus)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if not corpus.is_file():
        raise FileNotFoundError(f"corpus file not found: {corpus}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"--out {out} is not empty; refusing to mix a new index with existing files")
    sha = corpus_sha256(corpus)
    total = count_lines(corpus) if count_first else None
    passages = with_progress(iter_passages(corpus), total, f"igpo-index {engine}", progress)
    if engine == "dense":
        from igpo_envs.search.dense import build_dense_index, load_encoder

        encoder, build_options = load_encoder(dense)
        return build_dense_index(passages, out, encoder=encoder, content_hash=sha, source=str(corpus), **build_options)
    if engine == "tantivy":
        from igpo_envs.search.tantivy_index import build_tantivy_index

        return build_tantivy_index(
            passages, out, corpus_sha256=sha, corpus_path=str(corpus), heap_size=heap_mb << 20, num_threads=threads
        )
    from igpo_envs.search.bm25 import build_index as build_bm25s_index

    return build_bm25s_index(passages, out, content_hash=sha, source=str(corpus))


def open_index(index_dir: str | Path, corpus: str | Path | None = None, *, num_threads: int | None = None,
               **options: Any):
    """Open a prebuilt index directory as a ``Retriever``.

    With ``corpus`` given, the corpus file's sha256 must equal the manifest's, else
    :class:`~igpo_envs.search.manifest.IndexManifestError` names both hashes. ``num_threads``: search threads per
    batch (BM25 engines, default 1); for a dense index, FAISS's and torch's threads (default: theirs).
    ``options`` go to :class:`~igpo_envs.search.dense.DenseRetriever` (``model=``, ``ef_search=``, ...).
    """
    manifest = read_manifest(index_dir)
    sha = None
    if corpus is not None:
        sha = corpus_sha256(corpus)
        manifest.check_corpus(sha, index_dir=index_dir, corpus_path=corpus)
    if manifest.engine == "dense":
        from igpo_envs.search.dense import DenseRetriever

        return DenseRetriever(index_dir, corpus_sha256=sha, num_threads=num_threads, **options)
    if options:
        raise ValueError(f"options {sorted(options)} apply to dense indexes; {index_dir} is a {manifest.engine} one")
    if manifest.engine == "tantivy":
        from igpo_envs.search.tantivy_index import TantivyRetriever

        return TantivyRetriever(index_dir, corpus_sha256=sha, num_threads=num_threads or 1)
    from igpo_envs.search.bm25 import BM25Retriever

    return BM25Retriever.from_index_dir(index_dir, content_hash=sha, n_threads=max(1, num_threads or 1))
