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
from igpo_envs.search.manifest import ENGINES, IndexManifest, IndexManifestError, read_manifest
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
    from igpo_envs.search.bm25 import build_index as build_bm25s_index

    return build_bm25s_index(passages, out, content_hash=sha, source=str(corpus))


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
    from igpo_envs.search.bm25 import BM25Retriever

    return BM25Retriever.from_index_dir(index_dir, content_hash=sha, n_threads=max(1, num_threads))


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
