"""``igpo-index``: build an on-disk retrieval index from a wiki-18 jsonl corpus, and open one safely.

    igpo-index build --corpus wiki-18.jsonl --engine tantivy --out indexes/wiki18-tantivy
    igpo-index build --corpus wiki-18.jsonl --engine bm25s   --out indexes/wiki18-bm25s
    igpo-index info indexes/wiki18-tantivy [--corpus wiki-18.jsonl]

Memory while building:

* ``tantivy``: bounded by the indexing heap, not the corpus. Passages are streamed from the file and added one by
  one; tantivy flushes a segment to disk whenever its heap (``--heap-mb``) fills (412 MB peak at 1M passages with
  the default 256 MB heap, measured by benchmarks/retrieval_scale.py).
* ``bm25s``: linear in the corpus. Passages are streamed and tokenized one by one (text is not kept), but bm25s
  needs every passage's token ids in memory to compute document frequencies and the sparse score matrix, so peak
  memory grows with the corpus (2.6 GB at 1M passages measured here, so ~55 GB at 21M). Use tantivy past a few
  million passages.

Every index directory gets a manifest (``igpo_index.json``: corpus sha256, engine, parameters, doc count, creation
time, igpo version); :func:`open_index` with ``corpus=`` refuses an index built from a different corpus.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from igpo_envs.search.corpus import file_content_hash, iter_passages
from igpo_envs.search.manifest import ENGINES, IndexManifest, IndexManifestError, read_manifest, write_manifest
from igpo_envs.types import Passage

_HASH_BLOCK = 1 << 20


def corpus_sha256(path: str | Path) -> str:
    """sha256 of the corpus file's bytes (the hash a manifest records), computed in constant memory."""
    return file_content_hash(path)


def _progress(passages: Iterable[Passage], total: int | None, desc: str, enabled: bool) -> Iterator[Passage]:
    from tqdm.auto import tqdm

    yield from tqdm(passages, total=total, desc=desc, unit=" passages", disable=not enabled, mininterval=1.0)


def _count_lines(path: Path) -> int:
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
) -> IndexManifest:
    """Build a ``engine`` index of the wiki-18 jsonl ``corpus`` under ``out`` and write its manifest."""
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
    total = _count_lines(corpus) if count_first else None
    passages = _progress(iter_passages(corpus), total, f"igpo-index {engine}", progress)
    if engine == "tantivy":
        from igpo_envs.search.tantivy_index import build_tantivy_index

        return build_tantivy_index(
            passages, out, corpus_sha256=sha, corpus_path=str(corpus), heap_size=heap_mb << 20, num_threads=threads
        )
    return build_bm25s_index(passages, out, corpus_sha256=sha, corpus_path=str(corpus))


def build_bm25s_index(
    passages: Iterable[Passage],
    out: str | Path,
    *,
    corpus_sha256: str,
    corpus_path: str = "",
    k1: float = 1.5,
    b: float = 0.75,
    method: str = "lucene",
    batch_rows: int = 100_000,
) -> IndexManifest:
    """Stream ``passages`` into a bm25s index under ``out``, in the layout :class:`BM25Retriever` memory-maps.

    Passage text goes to the Arrow file in batches of ``batch_rows`` as it is read and each passage is tokenized as
    it streams past, so no text is held; bm25s still needs every passage's token ids at once (see module doc).
    """
    import bm25s
    import pyarrow as pa

    from igpo_envs.search import bm25 as bm25_mod

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("id", pa.large_string()), ("title", pa.large_string()), ("text", pa.large_string())])
    sink = pa.OSFile(str(out / bm25_mod._PASSAGES_FILE), "wb")
    writer = pa.ipc.new_file(sink, schema)
    batch: list[Passage] = []
    count = 0

    def flush() -> None:
        if batch:
            columns = [[getattr(p, name) for p in batch] for name in ("id", "title", "text")]
            writer.write_batch(pa.record_batch([pa.array(c, pa.large_string()) for c in columns], schema=schema))
            batch.clear()

    def texts() -> Iterator[str]:
        nonlocal count
        for p in passages:
            batch.append(p)
            count += 1
            if len(batch) >= batch_rows:
                flush()
            yield f"{p.title}\n{p.text}"  # title and text together, as the bm25s retriever indexes them

    tokenizer = bm25_mod._make_tokenizer()
    try:
        corpus_ids = list(tokenizer.streaming_tokenize(texts(), update_vocab=True))
        flush()
    finally:
        writer.close()
        sink.close()
    if not count:
        raise ValueError(f"cannot build a BM25 index over an empty corpus ({corpus_path or 'passages'})")
    model = bm25s.BM25(k1=k1, b=b, method=method, backend="numba")
    model.index((corpus_ids, tokenizer.get_vocab_dict()), show_progress=False)
    del corpus_ids
    model.save(str(out), show_progress=False)
    params = {"k1": k1, "b": b, "method": method, "stopwords": bm25_mod._STOPWORDS,
              "stemmer": bm25_mod._STEMMER_LANGUAGE, "cache_format": bm25_mod._CACHE_FORMAT,
              "bm25s": ".".join(bm25s.__version__.split(".")[:2])}
    manifest = IndexManifest(engine="bm25s", corpus_sha256=corpus_sha256, num_docs=count, parameters=params,
                             corpus_path=str(corpus_path))
    write_manifest(out, manifest)
    return manifest


def _open_bm25s(index_dir: str | Path, manifest: IndexManifest, num_threads: int):
    # BM25Retriever has no public "open this directory" constructor yet; its loader only needs these attributes.
    from igpo_envs.search.bm25 import BM25Retriever

    retriever = BM25Retriever.__new__(BM25Retriever)
    retriever.content_hash = manifest.corpus_sha256
    retriever.n_threads = max(1, num_threads)
    retriever.index_dir = Path(index_dir)
    retriever.loaded_from_cache = True
    retriever._load()
    return retriever


def open_index(index_dir: str | Path, corpus: str | Path | None = None, *, num_threads: int = 1):
    """Open a prebuilt index directory as a ``Retriever``.

    With ``corpus`` given, the corpus file's sha256 must equal the manifest's, else
    :class:`~igpo_envs.search.manifest.IndexManifestError` names both hashes.
    """
    manifest = read_manifest(index_dir)
    sha = None
    if corpus is not None:
        sha = corpus_sha256(corpus)
        manifest.check_corpus(sha, index_dir=index_dir, corpus_path=corpus)
    if manifest.engine == "tantivy":
        from igpo_envs.search.tantivy_index import TantivyRetriever

        return TantivyRetriever(index_dir, corpus_sha256=sha, num_threads=num_threads)
    return _open_bm25s(index_dir, manifest, num_threads)


def _cmd_build(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    manifest = build_index(args.corpus, args.engine, args.out, heap_mb=args.heap_mb, threads=args.threads,
                           progress=not args.quiet)
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(
        f"built {manifest.engine} index of {manifest.num_docs:,} passages in {seconds:.1f} s "
        f"({size / 2**20:.1f} MiB) at {args.out}; corpus sha256 {manifest.corpus_sha256}"
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.index)
    if args.corpus:
        manifest.check_corpus(corpus_sha256(args.corpus), index_dir=args.index, corpus_path=args.corpus)
    shown = {k: v for k, v in vars(manifest).items() if k != "parameters"}
    shown["parameters"] = {k: v for k, v in manifest.parameters.items() if k != "stopwords"}
    print(json.dumps(shown, indent=2))
    if args.corpus:
        print(f"ok: the index matches {args.corpus}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="igpo-index", description="Build and inspect on-disk retrieval indexes.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="index a wiki-18 jsonl corpus ({'id', 'contents'} per line)")
    b.add_argument("--corpus", required=True, help="wiki-18 jsonl corpus file")
    b.add_argument("--engine", required=True, choices=ENGINES, help="bm25s (in RAM, mmap) or tantivy (on disk)")
    b.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    b.add_argument("--heap-mb", type=int, default=256, help="tantivy indexing heap in MiB (bounds build memory)")
    b.add_argument("--threads", type=int, default=0, help="tantivy indexing threads (0 = tantivy's choice)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_build)
    i = sub.add_parser("info", help="print an index manifest; with --corpus, check it matches that corpus")
    i.add_argument("index", help="index directory")
    i.add_argument("--corpus", help="corpus file the index must have been built from")
    i.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (IndexManifestError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"igpo-index: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
