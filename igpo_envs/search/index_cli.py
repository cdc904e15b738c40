"""``igpo-index``: build an on-disk retrieval index from a wiki-18 jsonl corpus, and open one safely.

    igpo-index build --corpus wiki-18.jsonl --engine tantivy --out indexes/wiki18-tantivy
    igpo-index build --corpus wiki-18.jsonl --engine bm25s   --out indexes/wiki18-bm25s
    igpo-index build --corpus wiki-18.jsonl --engine dense --model intfloat/e5-base-v2 --out indexes/wiki18-e5 \
        [--index-type flat|hnsw]
    igpo-index import-faiss --faiss e5_Flat.index --corpus wiki-18.jsonl --model intfloat/e5-base-v2 \
        --out indexes/wiki18-e5-searchr1          # Search-R1's prebuilt index, not re-encoded
    igpo-index info indexes/wiki18-tantivy [--corpus wiki-18.jsonl]

The library behind it (building, opening, caching) is :mod:`igpo_envs.search.index`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from igpo_envs.search.corpus import iter_passages
from igpo_envs.search.index import (  # noqa: F401  (open_index: re-exported for callers of the CLI module)
    build_index,
    corpus_sha256,
    open_index,
    with_progress,
)
from igpo_envs.search.manifest import ENGINES, IndexManifestError, read_manifest


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
    passages = with_progress(iter_passages(corpus), None, "igpo-index import-faiss", not args.quiet)
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
