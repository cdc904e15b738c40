"""BM25 over an on-disk tantivy index: for corpora past a few million passages (wiki-18 is 21M).

tantivy keeps the index on disk and memory-maps it, so opening a 21M-passage index costs little RAM and every
process on a node (e.g. Ray searcher actors) shares the same page cache.

Differences from the bm25s retriever, and their effect:

* **BM25 parameters.** tantivy's BM25 uses fixed ``k1=1.2, b=0.75`` (not configurable from Python); bm25s uses
  whatever the bm25s retriever was built with. Lower ``k1`` saturates term frequency sooner and lower ``b``
  penalises long passages less; on ~100-word wiki-18 passages passage lengths vary little, so the effect on the
  ranking is small (measured in BENCHMARKS.md: top-10 overlap with bm25s).
* **Document length.** tantivy stores each passage's length in one byte (a lossy "fieldnorm"), so two passages
  of nearly equal length can tie where bm25s orders them; scores also carry tantivy's ``(k1 + 1)`` factor, which
  does not change the order.
* **Tokens.** The analyzer ``igpo_en_stem`` is tantivy's ``en_stem`` pipeline (lowercase + Snowball English
  stemmer) with bm25s's default splitter (words of 2+ word characters) and bm25s's English stopword list, so both
  engines index the same terms; only rare Unicode edge cases differ (Rust and Python disagree on what ``\\w``
  matches for combining marks).

Queries are never handed to tantivy's query parser: each query is analyzed into terms and searched as an OR of
term queries (a repeated term counts twice, as in bm25s), so quotes, colons, parentheses or ``AND`` in a user's
query are just text and never raise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from igpo_envs.search.corpus import split_contents
from igpo_envs.search.manifest import IndexManifest, IndexManifestError, read_manifest, write_manifest
from igpo_envs.types import Passage

ANALYZER_NAME = "igpo_en_stem"
#: bm25s's default splitter (``bm25s.tokenization.Tokenizer``): runs of 2+ word characters.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
#: tantivy's BM25 constants (fixed in tantivy, recorded in the manifest so the difference is visible).
TANTIVY_K1 = 1.2
TANTIVY_B = 0.75
TANTIVY_SUBDIR = "tantivy"


def _tantivy():
    try:
        import tantivy
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError('the tantivy engine needs the `tantivy` package: pip install "igpo[scale]"') from exc
    return tantivy


def english_stopwords() -> list[str]:
    """bm25s's English stopword list (the one ``stopwords="en"`` selects), so both engines drop the same words."""
    from bm25s.stopwords import STOPWORDS_EN

    return list(STOPWORDS_EN)


def build_analyzer(stopwords: Sequence[str] | None = None, language: str = "english"):
    """The ``igpo_en_stem`` analyzer: bm25s splitter -> lowercase -> stopwords -> Snowball stemmer."""
    tantivy = _tantivy()
    builder = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(TOKEN_PATTERN)).filter(tantivy.Filter.lowercase())
    words = english_stopwords() if stopwords is None else list(stopwords)
    if words:
        builder = builder.filter(tantivy.Filter.custom_stopword(words))
    return builder.filter(tantivy.Filter.stemmer(language)).build()


def _schema():
    tantivy = _tantivy()
    return (
        tantivy.SchemaBuilder()
        .add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
        .add_text_field("title", stored=True, tokenizer_name="raw", index_option="basic")
        # Only `contents` (the wiki-18 field: title line + text) is searched, as in the bm25s retriever.
        .add_text_field("contents", stored=True, tokenizer_name=ANALYZER_NAME, index_option="freq")
        .build()
    )


def build_tantivy_index(
    passages: Iterable[Passage],
    out_dir: str | Path,
    *,
    corpus_sha256: str,
    corpus_path: str = "",
    heap_size: int = 256_000_000,
    num_threads: int = 0,
    stopwords: Sequence[str] | None = None,
) -> IndexManifest:
    """Stream ``passages`` into a new tantivy index under ``out_dir`` and write its manifest.

    Memory is bounded by ``heap_size`` (tantivy flushes segments to disk when its indexing heap fills), not by the
    corpus size: passages are added one by one as they are read.
    """
    tantivy = _tantivy()
    out = Path(out_dir)
    index_path = out / TANTIVY_SUBDIR
    if index_path.exists() and any(index_path.iterdir()):
        raise FileExistsError(f"{index_path} already holds an index; choose an empty --out directory")
    index_path.mkdir(parents=True, exist_ok=True)
    words = english_stopwords() if stopwords is None else list(stopwords)
    index = tantivy.Index(_schema(), path=str(index_path), reuse=False)
    index.register_tokenizer(ANALYZER_NAME, build_analyzer(words))
    writer = index.writer(heap_size=heap_size, num_threads=num_threads)
    count = 0
    for passage in passages:
        writer.add_document(tantivy.Document(id=passage.id, title=passage.title, contents=passage.contents))
        count += 1
    writer.commit()
    writer.wait_merging_threads()
    manifest = IndexManifest(
        engine="tantivy",
        corpus_sha256=corpus_sha256,
        corpus_path=str(corpus_path),
        num_docs=count,
        parameters={
            "k1": TANTIVY_K1,
            "b": TANTIVY_B,
            "analyzer": ANALYZER_NAME,
            "token_pattern": TOKEN_PATTERN,
            "stemmer": "english",
            "stopwords": words,
            "field": "contents",
        },
    )
    write_manifest(out, manifest)
    return manifest


class TantivyRetriever:
    """BM25 search over a prebuilt tantivy index directory (``igpo-index build --engine tantivy``).

    Args:
        index_dir: the ``--out`` directory of ``igpo-index build`` (holds ``igpo_index.json`` and ``tantivy/``).
        corpus_sha256: if given, the sha256 of the corpus this index must serve; a different manifest hash raises
            :class:`~igpo_envs.search.manifest.IndexManifestError` naming both.
        num_threads: threads used to answer one batch (tantivy searches without holding the GIL).
    """

    engine = "tantivy"

    def __init__(self, index_dir: str | Path, *, corpus_sha256: str | None = None, num_threads: int = 1) -> None:
        tantivy = _tantivy()
        self.index_dir = Path(index_dir)
        self.manifest = read_manifest(self.index_dir)
        if self.manifest.engine != "tantivy":
            raise IndexManifestError(f"{self.index_dir} holds a {self.manifest.engine!r} index, not a tantivy one")
        if corpus_sha256 is not None:
            self.manifest.check_corpus(corpus_sha256, index_dir=self.index_dir)
        if self.manifest.files:  # sizes only (cheap); caches are checked in full by manifest.index_is_intact
            self.manifest.verify_files(self.index_dir, full=False)
        self.content_hash: str = self.manifest.corpus_sha256
        stopwords = self.manifest.parameters.get("stopwords")
        self._analyzer = build_analyzer(stopwords, self.manifest.parameters.get("stemmer", "english"))
        # Index.open memory-maps the segment files; no writer is ever created, so the index is only read.
        try:
            self._index = tantivy.Index.open(str(self.index_dir / TANTIVY_SUBDIR))
            self._index.register_tokenizer(ANALYZER_NAME, self._analyzer)
            self._schema = self._index.schema
            self._searcher = self._index.searcher()
        except ValueError as exc:  # tantivy's errors on damaged segment files
            raise IndexManifestError(f"{self.index_dir}: cannot open the tantivy index ({exc}); rebuild it") from exc
        self.num_passages: int = self._searcher.num_docs
        self.num_threads = max(1, int(num_threads))
        self._pool = ThreadPoolExecutor(self.num_threads) if self.num_threads > 1 else None

    def __len__(self) -> int:
        return self._searcher.num_docs

    def __getstate__(self) -> dict[str, Any]:
        # By reference to the on-disk index (tantivy's Index and searcher cannot be pickled): pickle, deepcopy and
        # spawned vector-env workers re-open it.
        return {"index_dir": str(self.index_dir), "corpus_sha256": self.content_hash, "num_threads": self.num_threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["index_dir"], corpus_sha256=state["corpus_sha256"], num_threads=state["num_threads"])

    def query_terms(self, query: str) -> list[str]:
        """The index terms a query searches for (after splitting, lowercasing, stopwords and stemming)."""
        return self._analyzer.analyze(query)

    def _build_query(self, query: str) -> Any | None:
        tantivy = _tantivy()
        terms = self.query_terms(query)
        if not terms:
            return None
        clauses = [(tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "contents", t)) for t in terms]
        return tantivy.Query.boolean_query(clauses)

    def search_one(self, query: str, topk: int) -> list[Passage]:
        """Top-``topk`` passages for one query; a query with no searchable term (e.g. only stopwords) gets ``[]``."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}: {query!r}")
        q = self._build_query(query)
        if q is None or topk <= 0:
            return []
        hits = self._searcher.search(q, limit=topk, count=False).hits
        out = []
        for score, address in hits:
            doc = self._searcher.doc(address)
            title, text = split_contents(doc.get_first("contents"))
            out.append(Passage(id=doc.get_first("id"), title=title, text=text, score=float(score)))
        return out

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-``topk`` passages for each query, best first, in the order of ``queries``."""
        if isinstance(queries, str):
            raise TypeError("search() takes a list of queries; wrap a single query in a list")
        if self._pool is None or len(queries) < 2:
            return [self.search_one(q, topk) for q in queries]
        return list(self._pool.map(lambda q: self.search_one(q, topk), queries))

    def __repr__(self) -> str:
        return f"TantivyRetriever({str(self.index_dir)!r}, docs={len(self)}, corpus_sha256={self.content_hash[:12]}…)"

