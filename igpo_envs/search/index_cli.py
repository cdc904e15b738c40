"""``igpo-index``: build an on-disk retrieval index from a wiki-18 jsonl corpus, and open one safely.

    igpo-index build --corpus wiki-18.jsonl --engine tantivy --out indexes/wiki18-tantivy
    igpo-index build --corpus wiki-18.jsonl --engine bm25s   --out indexes/wiki18-bm25s
    igpo-index build --corpus wiki-18.jsonl --engine dense --model intfloat/e5-base-v2 --out indexes/wiki18-e5 \
        [--index-type flat|hnsw]
    igpo-index import-faiss --faiss e5_Flat.index --corpus wiki-18.jsonl --model intfloat/e5-base-v2 \
        --out indexes/wiki18-e5-searchr1          # Search-R1's prebuilt index, not re-encoded
    igpo-index info indexes/wiki18-tantivy [--corpus wiki-18.jsonl]

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

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

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


def cached_index_dir(name: str, build: Callable[[Path], object], *, cache_dir: str | Path | None = None) -> Path:
    """``cache_dir/name`` (default: the index cache), built by ``build(tmp_dir)`` if it has no intact index yet.

    The build goes to a private directory renamed into place, so a crash or a concurrent builder never leaves a
    half-written index where a later start would trust it. A cached index damaged since it was built (see
    `manifest.index_is_intact`) is removed with a warning and built again: every engine's auto-cache heals itself.
    """
    from igpo_envs.search.bm25 import default_cache_dir
    from igpo_envs.search.manifest import MANIFEST_NAME, index_is_intact

    out = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / name
    if (out / MANIFEST_NAME).is_file() and not index_is_intact(out):
        pass  # warned and removed by index_is_intact: rebuilt below
    if not (out / MANIFEST_NAME).is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".building-"))
        try:
            build(tmp)
            if out.exists() and not (out / MANIFEST_NAME).is_file():  # a stale, unfinished directory
                shutil.rmtree(out)
            tmp.rename(out)
        except OSError:
            if not (out / MANIFEST_NAME).is_file():  # lost a race to an identical build: fine
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


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
    total = _count_lines(corpus) if count_first else None
    passages = _progress(iter_passages(corpus), total, f"igpo-index {engine}", progress)
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


def _cmd_build(args: argparse.Namespace) -> int:
    from igpo_envs.search.dense import dense_options

    dense = dense_options(args)
    if args.engine == "dense" and not dense.get("model"):
        raise ValueError("--engine dense needs --model (a sentence-transformers folder or hub id)")
    if args.engine != "dense":
        dense = {}
    t0 = time.perf_counter()
    manifest = build_index(args.corpus, args.engine, args.out, heap_mb=args.heap_mb, threads=args.threads,
                           progress=not args.quiet, **dense)
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(
        f"built {manifest.engine} index of {manifest.num_docs:,} passages in {seconds:.1f} s "
        f"({size / 2**20:.1f} MiB) at {args.out}; corpus sha256 {manifest.corpus_sha256}"
    )
    return 0


def _cmd_import_faiss(args: argparse.Namespace) -> int:
    from igpo_envs.search.dense import dense_options, import_faiss_index, load_encoder

    corpus, out = Path(args.corpus), Path(args.out)
    if not corpus.is_file():
        raise FileNotFoundError(f"corpus file not found: {corpus}")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"--out {out} is not empty; refusing to mix a new index with existing files")
    encoder, extra = load_encoder(dense_options(args))
    if extra:
        raise ValueError(f"import-faiss does not build an index; options {sorted(extra)} do not apply")
    passages = _progress(iter_passages(corpus), None, "igpo-index import-faiss", not args.quiet)
    manifest = import_faiss_index(args.faiss, passages, out, encoder=encoder, content_hash=corpus_sha256(corpus),
                                  source=str(corpus))
    print(f"imported {manifest.parameters['index_type']} FAISS index of {manifest.num_docs:,} passages at {out} "
          f"(encoder {manifest.encoder['name']}, pooling {manifest.encoder['pooling']}, prefixes "
          f"{manifest.encoder['query_prefix']!r} / {manifest.encoder['passage_prefix']!r})")
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
    b.add_argument("--engine", required=True, choices=ENGINES,
                   help="bm25s (in RAM, mmap), tantivy (on disk) or dense (an encoder + FAISS; needs --model)")
    b.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    b.add_argument("--heap-mb", type=int, default=256, help="tantivy indexing heap in MiB (bounds build memory)")
    b.add_argument("--threads", type=int, default=0, help="tantivy indexing threads (0 = tantivy's choice)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    from igpo_envs.search.dense import add_dense_arguments

    add_dense_arguments(b, build=True)
    b.set_defaults(func=_cmd_build)
    f = sub.add_parser("import-faiss", help="wrap an existing FAISS index of a corpus (e.g. Search-R1's "
                                            "e5_Flat.index) into an index directory, without re-encoding")
    f.add_argument("--faiss", required=True, help="FAISS index file; vector i must embed corpus line i")
    f.add_argument("--corpus", required=True, help="the wiki-18 jsonl corpus the FAISS file was built from")
    f.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dense_arguments(f, build=False)
    f.set_defaults(func=_cmd_import_faiss)
    i = sub.add_parser("info", help="print an index manifest; with --corpus, check it matches that corpus")
    i.add_argument("index", help="index directory")
    i.add_argument("--corpus", help="corpus file the index must have been built from")
    i.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (IndexManifestError, FileExistsError, FileNotFoundError, ValueError, ImportError) as exc:
        print(f"igpo-index: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
