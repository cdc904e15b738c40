"""Local BM25 retrieval with bm25s (numba backend), with the index cached on disk by corpus content.

The first construction for a corpus tokenizes it (English stopwords, Snowball stemming via PyStemmer), builds the
bm25s index and saves it, together with the passages as an Arrow file, under ``$IGPO_CACHE_DIR/indexes`` (default
``~/.cache/igpo/indexes``) in a directory named by the corpus content hash and the BM25 parameters. Every later
construction for the same content memory-maps that directory instead of rebuilding. The manifest records a checksum of
every cached file; a cache that is missing a file, truncated, edited or garbled is rebuilt with a warning, never
trusted (an edited doc id could otherwise crash numba's kernels, edited scores silently change results).

Importing this module also gives bm25s's numba kernels an on-disk compile cache (see ``_install_cached_kernels``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import bm25s
import numpy as np
import pyarrow as pa
import Stemmer
from bm25s.tokenization import Tokenizer

from igpo_envs.search.corpus import file_content_hash, iter_passages, passages_content_hash
from igpo_envs.search.manifest import (
    MANIFEST_NAME,
    IndexManifest,
    IndexManifestError,
    read_manifest,
    write_manifest,
)
from igpo_envs.types import Passage

__all__ = ["BM25Retriever", "build_index", "default_cache_dir", "index_parameters"]

_STOPWORDS = "en"
_STEMMER_LANGUAGE = "english"
_PASSAGES_FILE = "passages.arrow"
# Bump when the on-disk layout or the tokenization changes, so stale caches are rebuilt, not misread.
_CACHE_FORMAT = 2  # 2: the manifest holds file checksums


def default_cache_dir() -> Path:
    """``$IGPO_CACHE_DIR/indexes`` if set, else ``~/.cache/igpo/indexes`` (``IGPO_CACHE_DIR`` replaces
    ``~/.cache/igpo`` for every igpo cache, e.g. ``web/`` for web search answers)."""
    root = os.environ.get("IGPO_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "igpo") / "indexes"


def _install_cached_kernels() -> None:
    """Give bm25s's numba retrieval kernels an on-disk cache: compiling them costs 2-10 s in every new process.

    bm25s jit-compiles one Python function twice (parallel and serial) without ``cache=True``. We compile two
    renamed copies of it with ``cache=True`` (numba names cache files after the function, so distinct names keep
    the two compilations apart) and install them where bm25s looks them up at call time. Same code, same results,
    for every bm25s user in this process. Best effort: another bm25s layout just keeps bm25s's own kernels.
    """
    try:
        import types

        import numba
        from bm25s.numba import retrieve_utils

        kernel = retrieve_utils._retrieve_internal_jitted
        if not isinstance(kernel, types.FunctionType) or not all(
            hasattr(retrieve_utils, name) for name in ("_retrieve_internal_jitted_parallel",
                                                        "_retrieve_internal_jitted_serial")):
            return

        def renamed(suffix: str) -> types.FunctionType:
            clone = types.FunctionType(kernel.__code__, kernel.__globals__, kernel.__name__ + suffix,
                                       kernel.__defaults__, kernel.__closure__)
            clone.__qualname__ = kernel.__qualname__ + suffix
            clone.__kwdefaults__ = kernel.__kwdefaults__
            return clone

        retrieve_utils._retrieve_internal_jitted_parallel = numba.njit(parallel=True, cache=True)(renamed("_parallel"))
        retrieve_utils._retrieve_internal_jitted_serial = numba.njit(nogil=True, cache=True)(renamed("_serial"))
    except Exception:
        pass


_install_cached_kernels()


@functools.cache
def _csc_builder():
    """bm25s's numba CSC builder, compiled once per process and cached on disk (None if unavailable).

    ``bm25s.BM25(backend="numba")`` wraps it in a fresh ``njit`` per instance, i.e. recompiles it for every index
    built, which dominates building small indexes (tests, per-world synthetic envs).
    """
    try:
        import numba
        from bm25s.scoring import _np_csc_jit_ready

        return numba.njit(cache=True)(_np_csc_jit_ready)
    except Exception:
        return None

# The process that started numba's parallel thread pool. A child forked after that (gymnasium's AsyncVectorEnv,
# multiprocessing) must not use the pool: GNU OpenMP aborts in a forked child. Such children search serially.
_PARALLEL_POOL_PID: int | None = None


def _threads_usable(requested: int) -> int:
    global _PARALLEL_POOL_PID
    if requested <= 1:
        return 1
    pid = os.getpid()
    if _PARALLEL_POOL_PID is None:
        _PARALLEL_POOL_PID = pid
    return requested if _PARALLEL_POOL_PID == pid else 1


def _default_threads(n_threads: int | None) -> int:
    return max(1, int(n_threads) if n_threads is not None else (os.cpu_count() or 1))


def _make_tokenizer() -> Tokenizer:
    return Tokenizer(stopwords=_STOPWORDS, stemmer=Stemmer.Stemmer(_STEMMER_LANGUAGE))


def index_parameters(k1: float = 1.5, b: float = 0.75, method: str = "lucene") -> dict:
    """Everything that determines an index's content besides the corpus (recorded in its manifest)."""
    return {"k1": k1, "b": b, "method": method, "stopwords": _STOPWORDS, "stemmer": _STEMMER_LANGUAGE,
            "cache_format": _CACHE_FORMAT, "bm25s": ".".join(bm25s.__version__.split(".")[:2])}


def build_index(
    passages: Iterable[Passage],
    out_dir: str | os.PathLike[str],
    *,
    content_hash: str,
    source: str = "",
    k1: float = 1.5,
    b: float = 0.75,
    method: str = "lucene",
    batch_rows: int = 100_000,
) -> IndexManifest:
    """Stream ``passages`` into a bm25s index in ``out_dir``, the layout :class:`BM25Retriever` memory-maps.

    ``out_dir`` receives bm25s's saved index, ``passages.arrow`` (id, title, text, in index order) and the manifest
    ``igpo_index.json`` (written last). Passages are written to Arrow in batches of ``batch_rows`` and tokenized as
    they stream past, so their text is never all in memory; bm25s itself needs every passage's token ids at once
    (~2.8 GB at 1M passages). On error ``out_dir`` may hold partial files: build into a fresh directory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # large_string: a wiki-18 scale text column exceeds the 2 GiB limit of 32-bit string offsets.
    schema = pa.schema([(name, pa.large_string()) for name in ("id", "title", "text")])
    batch: list[Passage] = []
    count = 0

    with pa.OSFile(str(out_dir / _PASSAGES_FILE), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:

        def flush() -> None:
            if batch:
                columns = [pa.array([getattr(p, name) for p in batch], pa.large_string()) for name in schema.names]
                writer.write_batch(pa.record_batch(columns, schema=schema))
                batch.clear()

        def contents() -> Iterator[str]:
            nonlocal count
            for p in passages:
                batch.append(p)
                count += 1
                if len(batch) >= batch_rows:
                    flush()
                # Title and text together, as Search-R1's and FlashRAG's BM25 indexes use `contents`.
                yield f"{p.title}\n{p.text}"

        tokenizer = _make_tokenizer()
        corpus_ids = list(tokenizer.streaming_tokenize(contents(), update_vocab=True))
        flush()
    if not count:
        raise ValueError(f"cannot build a BM25 index over an empty corpus ({source or 'no passages'})")

    model = bm25s.BM25(k1=k1, b=b, method=method, backend="numba",
                       auto_compile=False)  # retrieval runs on the numba backend either way; see _csc_builder
    if _csc_builder() is not None:
        model._np_csc = _csc_builder()
    model.index((corpus_ids, tokenizer.get_vocab_dict()), show_progress=False)
    del corpus_ids
    model.save(str(out_dir), show_progress=False)
    manifest = IndexManifest(engine="bm25s", corpus_sha256=content_hash, num_docs=count,
                             parameters=index_parameters(k1, b, method), corpus_path=source)
    write_manifest(out_dir, manifest)
    return manifest


def _check_structure(model: bm25s.BM25, num_passages: int, index_dir: Path) -> None:
    """Refuse a score matrix that points outside the passages: numba's kernels index without bounds checks, so an
    out-of-range document id would crash the process instead of raising."""
    scores = model.scores
    indptr, indices = np.asarray(scores["indptr"]), np.asarray(scores["indices"])
    problem = None
    if scores.get("num_docs") != num_passages:
        problem = f"it scores {scores.get('num_docs')} documents but {_PASSAGES_FILE} holds {num_passages}"
    elif indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(indices) \
            or len(indices) != len(scores["data"]) or np.any(np.diff(indptr) < 0):
        problem = "its sparse score matrix is inconsistent"
    elif len(indices) and (indices.min() < 0 or indices.max() >= num_passages):
        problem = f"it refers to documents outside 0..{num_passages - 1}"
    elif model.vocab_dict and max(model.vocab_dict.values()) >= len(indptr) - 1:
        problem = "its vocabulary refers to terms outside the score matrix"
    if problem:
        raise IndexManifestError(f"{index_dir}: damaged bm25s index: {problem}; rebuild it")


def _read_passage_table(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()  # zero-copy view of the mmapped file


class BM25Retriever:
    """BM25 over a passage corpus, batched, on bm25s's numba backend.

    Args:
        corpus_path: a FlashRAG / wiki-18 jsonl corpus (see :mod:`igpo_envs.search.corpus`).
        cache_dir: where indexes are cached (default :func:`default_cache_dir`).
        k1, b, method: BM25 parameters, as in ``bm25s.BM25`` (``method`` is one of bm25s's scoring variants).
        n_threads: numba threads per ``search`` call (default: every CPU; 1 runs bm25s's serial kernel).

    Attributes:
        content_hash: sha256 of the corpus file's bytes (or, for :meth:`from_passages`, of the passages' ids,
            titles and texts).
        num_passages: number of indexed passages.
        index_dir: the cache directory of this index.
        loaded_from_cache: True if the index was loaded from ``index_dir`` rather than built by this construction.
        memo_size: how many query strings (their token ids) and passages (by row and score) the retriever
            remembers between searches, each (default 16,384; 0 turns both memos off). RL rollouts repeat queries a
            lot; a remembered one skips bm25s's tokenizer and the Arrow read. Retrieval itself always runs.

    ``search`` returns, per query, up to ``topk`` passages that share at least one term with the query, best first,
    with their BM25 scores. A query none of whose terms occur in the corpus (e.g. only stopwords) gets ``[]``:
    documents are never padded in with a score of zero (as Pyserini's BM25, which Search-R1 serves, behaves).

    Thread-safe. Pickles by reference to ``index_dir`` (a spawned worker re-opens the mmapped index); a worker forked
    after this process started numba's thread pool searches serially (GNU OpenMP cannot survive a fork).
    """

    memo_size: int = 16_384

    def __init__(
        self,
        corpus_path: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        n_threads: int | None = None,
    ) -> None:
        corpus_path = Path(corpus_path)
        if not corpus_path.is_file():
            raise FileNotFoundError(f"corpus file not found: {corpus_path}")
        self._setup(
            content_hash=file_content_hash(corpus_path),
            passages=lambda: iter_passages(corpus_path),
            source=str(corpus_path.resolve()),
            cache_dir=cache_dir,
            k1=k1,
            b=b,
            method=method,
            n_threads=n_threads,
        )

    @classmethod
    def from_passages(
        cls,
        passages: Iterable[Passage],
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        n_threads: int | None = None,
    ) -> BM25Retriever:
        """Index in-memory passages (cached on disk by a hash of their ids, titles and texts)."""
        passages = list(passages)
        self = cls.__new__(cls)
        self._setup(
            content_hash=passages_content_hash(passages),
            passages=lambda: passages,
            source="<passages>",
            cache_dir=cache_dir,
            k1=k1,
            b=b,
            method=method,
            n_threads=n_threads,
        )
        return self

    @classmethod
    def from_index_dir(
        cls,
        index_dir: str | os.PathLike[str],
        *,
        content_hash: str | None = None,
        n_threads: int | None = None,
    ) -> BM25Retriever:
        """Open an index directory written by :func:`build_index` (e.g. by ``igpo-index build``).

        With ``content_hash`` (the corpus sha256), an index built from another corpus is refused with
        :class:`~igpo_envs.search.manifest.IndexManifestError`.
        """
        manifest = read_manifest(index_dir)
        if manifest.engine != "bm25s":
            raise IndexManifestError(f"{index_dir} holds a {manifest.engine} index, not a bm25s one")
        if content_hash is not None:
            manifest.check_corpus(content_hash, index_dir=index_dir)
        if manifest.files:  # sizes only: hashing a large prebuilt index at every open would cost seconds
            manifest.verify_files(index_dir, full=False)
        self = cls.__new__(cls)
        self.content_hash = manifest.corpus_sha256
        self.n_threads = _default_threads(n_threads)
        self.index_dir = Path(index_dir)
        self.loaded_from_cache = True
        self._load()
        return self

    # -- construction (internal) ---------------------------------------------------------------------------------

    def _setup(self, *, content_hash, passages, source, cache_dir, k1, b, method, n_threads) -> None:
        self.content_hash: str = content_hash
        self.n_threads = _default_threads(n_threads)
        params = index_parameters(k1, b, method)
        params_key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.index_dir: Path = cache_root / f"bm25s-{content_hash[:24]}-{params_key[:8]}"

        problem = self._cache_problem()
        self.loaded_from_cache = problem is None
        if problem is not None:
            if self.index_dir.exists():
                warnings.warn(f"BM25 index cache {self.index_dir} is unusable ({problem}); rebuilding it",
                              RuntimeWarning, stacklevel=3)
            self._build(passages(), source, cache_root, k1=k1, b=b, method=method)
        self._load()

    def _cache_problem(self, *, full: bool = True) -> str | None:
        """Why the cached index cannot be used (None if it can): no manifest, another corpus or engine, or a file
        that differs from its checksum (``full``) or size at build time."""
        if not (self.index_dir / MANIFEST_NAME).is_file():
            return f"no {MANIFEST_NAME}"
        try:
            manifest = read_manifest(self.index_dir)
            manifest.check_corpus(self.content_hash, index_dir=self.index_dir)
            if manifest.engine != "bm25s":
                return f"it holds a {manifest.engine} index"
            manifest.verify_files(self.index_dir, full=full)
        except IndexManifestError as exc:
            return str(exc)
        return None

    def _cache_is_valid(self, *, full: bool = True) -> bool:
        return self._cache_problem(full=full) is None

    def _build(self, passages: Iterable[Passage], source: str, cache_root: Path, **params) -> None:
        # Build in a private directory and rename it into place, so a crash or a concurrent builder never leaves
        # a half-written index where a later start would trust it.
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = cache_root / f".{self.index_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            build_index(passages, tmp, content_hash=self.content_hash, source=source, **params)
            if self.index_dir.exists():  # a stale or concurrent index: replace it only if it is not valid
                if self._cache_is_valid():
                    return
                shutil.rmtree(self.index_dir)
            os.replace(tmp, self.index_dir)
        except OSError:
            if not self._cache_is_valid():  # lost a race to an identical build: fine; anything else: raise
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _load(self) -> None:
        try:
            self._bm25 = bm25s.BM25.load(str(self.index_dir), mmap=True, load_corpus=False, show_progress=False)
            table = _read_passage_table(self.index_dir / _PASSAGES_FILE)
        except Exception as exc:
            raise IndexManifestError(f"{self.index_dir}: cannot load the bm25s index ({type(exc).__name__}: "
                                     f"{exc}); rebuild it") from exc
        self._bm25.backend = "numba"
        _check_structure(self._bm25, table.num_rows, self.index_dir)
        self._columns = [table.column(name).chunks for name in ("id", "title", "text")]
        self._chunk_starts = np.cumsum([0] + [len(c) for c in self._columns[0][:-1]])
        self.num_passages: int = table.num_rows
        # Queries map words straight to the index's stem ids; unseen words are stemmed once and cached by bm25s.
        self._tokenizer = _make_tokenizer()
        self._tokenizer.stem_to_sid = dict(self._bm25.vocab_dict)
        self._tokenizer.stem_to_sid.pop("", None)  # "" scores every document 0: no-term queries return []
        self._parallel_lock = threading.Lock()  # numba's workqueue threading layer is not re-entrant
        # Memos (see memo_size): query string -> its token ids; (row, score) -> its Passage.
        self._token_ids_memo: dict[str, list[int]] = {}
        self._passage_memo: dict[tuple[int, float], Passage] = {}
        self._memo_lock = threading.Lock()  # the tokenizer's own caches and the memos' evictions

    def __getstate__(self) -> dict:
        # Pickle by reference to the on-disk index (spawned vector-env workers re-open it with mmap).
        return {"index_dir": self.index_dir, "content_hash": self.content_hash, "n_threads": self.n_threads,
                "loaded_from_cache": self.loaded_from_cache, "memo_size": self.memo_size}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if not self._cache_is_valid(full=False):  # the pickling process verified the content
            raise FileNotFoundError(f"BM25 index {self.index_dir} (content hash {self.content_hash}) is gone; "
                                    f"it must stay on disk while pickled retrievers use it")
        self._load()

    # -- retrieval ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.num_passages

    def __repr__(self) -> str:
        return f"BM25Retriever(num_passages={self.num_passages}, content_hash={self.content_hash[:12]}…)"

    def _take_rows(self, rows: np.ndarray) -> list[list]:
        """(ids, titles, texts) of ``rows``. Takes chunk by chunk: ``ChunkedArray.take`` on the streamed,
        multi-chunk table costs tens of ms per call at 1M passages, more than the search itself."""
        if len(self._chunk_starts) == 1:  # one chunk (up to 100k passages): the rows are its positions
            local = pa.array(rows)
            return [column[0].take(local).to_pylist() for column in self._columns]
        chunk_of_row = np.searchsorted(self._chunk_starts, rows, side="right") - 1
        order = np.argsort(chunk_of_row, kind="stable")  # rows grouped by chunk, one take per chunk and column
        chunks, starts = np.unique(chunk_of_row[order], return_index=True)
        groups = np.split(rows[order], starts[1:])
        locals_ = [pa.array(group - self._chunk_starts[chunk]) for chunk, group in zip(chunks.tolist(), groups)]
        back = np.argsort(order).tolist()  # from chunk order back to the order of ``rows``
        out = []
        for column in self._columns:
            grouped = [value for chunk, local in zip(chunks.tolist(), locals_)
                       for value in column[chunk].take(local).to_pylist()]
            out.append(list(map(grouped.__getitem__, back)))
        return out

    def _remember(self, memo: dict, keys: Iterable, values: Iterable) -> None:
        """Store ``keys`` -> ``values`` in ``memo``, dropping its oldest entries beyond `memo_size`."""
        size = self.memo_size
        if size <= 0:
            return
        with self._memo_lock:
            memo.update(zip(keys, values))
            excess = len(memo) - size
            if excess > 0:  # dicts keep insertion order: the first keys are the oldest
                for key in list(islice(memo, excess)):
                    del memo[key]

    def _token_ids(self, queries: list[str]) -> list[list[int]]:
        """bm25s's token ids of each query in this index's vocabulary ([] when no term is in it), remembered per
        query string: the tokenizer maps a string to the same ids every time."""
        token_ids = list(map(self._token_ids_memo.get, queries))
        if None in token_ids:
            missing = [i for i, ids in enumerate(token_ids) if ids is None]
            with self._memo_lock:  # bm25s's tokenizer grows its word caches as it goes
                fresh = self._tokenizer.streaming_tokenize([queries[i] for i in missing], update_vocab=False,
                                                           allow_empty=False)
                for i, ids in zip(missing, fresh):
                    token_ids[i] = ids
            self._remember(self._token_ids_memo, queries, token_ids)
        return token_ids

    def _passages(self, rows: list[int], scores: list[float]) -> list[Passage]:
        """The passages at ``rows`` with ``scores``, remembered by (row, score): a query that comes back gets the
        same (frozen) passages, and only passages not remembered are read from Arrow."""
        keys = list(zip(rows, scores))
        passages = list(map(self._passage_memo.get, keys))
        if all(passages):  # all remembered (a Passage is never falsy)
            return passages
        if not any(passages):  # none remembered: read every row, as without a memo
            passages = list(map(Passage, *self._take_rows(np.array(rows, dtype=np.int64)), scores))
        else:
            missing = [i for i, passage in enumerate(passages) if passage is None]
            fields = self._take_rows(np.array([rows[i] for i in missing], dtype=np.int64))
            for i, passage in zip(missing, map(Passage, *fields, [scores[i] for i in missing])):
                passages[i] = passage
        self._remember(self._passage_memo, keys, passages)
        return passages

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        if isinstance(queries, str):
            raise TypeError("search() takes a sequence of queries; wrap a single query in a list")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if type(queries) is not list:
            queries = list(queries)
        token_ids = self._token_ids(queries)
        asked = [i for i, ids in enumerate(token_ids) if ids]
        # A fresh list per query, made once: a query without known terms keeps its empty one.
        results: list[list[Passage]] = [[] if not ids else None for ids in token_ids]
        if not asked:
            return results

        k = min(topk, self.num_passages)
        threads = _threads_usable(self.n_threads)  # > 1 takes the (disk-cached) parallel kernel, even for one query
        kwargs = dict(k=k, n_threads=threads, show_progress=False, return_as="tuple")
        if threads > 1:
            with self._parallel_lock:
                docs, scores = self._bm25.retrieve([token_ids[i] for i in asked], **kwargs)
        else:
            docs, scores = self._bm25.retrieve([token_ids[i] for i in asked], **kwargs)

        # Rows are sorted best first, so the matches (score > 0) are a prefix of each row. Split as Python lists:
        # numpy's masks and counts cost ~1 us per search on arrays this small, with the caches cold from retrieval.
        flat_scores = scores.ravel().tolist()
        if min(flat_scores[k - 1::k]) > 0:  # the usual case: every query matched k passages
            counts, rows, hit_scores = [k] * len(asked), docs.ravel().tolist(), flat_scores
        else:
            score_rows = scores.tolist()
            counts = [sum(score > 0 for score in row) for row in score_rows]
            rows = [doc for row, n in zip(docs.tolist(), counts) for doc in row[:n]]
            hit_scores = [score for row, n in zip(score_rows, counts) for score in row[:n]]
        passages = self._passages(rows, hit_scores)  # all queries' in one pass
        start = 0
        for qi, n in zip(asked, counts):
            results[qi] = passages[start:start + n]
            start += n
        return results
