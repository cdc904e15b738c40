"""``igpo-retriever``: serve any Retriever over the Search-R1 HTTP protocol, with FastAPI on uvicorn.

Endpoints (one FastAPI app, :func:`create_app`, served by uvicorn here and used as the Ray Serve ingress by
``igpo-retriever --ray``, :mod:`igpo_envs.search.ray_serve`):

- ``POST /retrieve`` with ``{"queries": [...], "topk": k, "return_scores": bool}``, Search-R1's request model with
  its leniency (``topk`` missing, null or 0 → the server's ``--topk``; ``"3"`` and ``3.0`` are 3; ``return_scores``
  defaults to false; unknown fields are ignored) →
  ``{"result": [[{"document": row, "score": s}, ...], ...]}``, or bare rows without ``return_scores``. A document is
  the corpus row exactly as stored in the jsonl file (``contents`` verbatim, extra fields kept), as Search-R1 serves.
- ``GET /health`` → ``{"status": "ok", "content_hash", "num_passages", "retriever", "limits"}``.

A body that is not such a request gets 422 with FastAPI's ``{"detail": [...]}`` naming the field; a body over
``max_body_bytes`` gets 413; more than ``max_queries`` queries, ``topk`` over ``max_topk`` or ``queries × topk``
over ``max_results`` get 422 naming the limit (a client splits its batch to fit, see ``/health``); a body not received
within ``body_timeout`` seconds gets 408; a failing retriever gets 500. Malformed HTTP, the listen backlog and idle
connections are uvicorn's job (its keep-alive timeout also closes a connection that never sends a request).

Run ``igpo-retriever --corpus corpus.jsonl --port 8000`` (binds 127.0.0.1 unless ``--host`` says otherwise), then
point an env at it with ``retriever_url="http://127.0.0.1:8000/retrieve"``. Needs ``pip install "igpo[server]"``.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's `Request` annotation at runtime.
import argparse
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from igpo_envs.search.app import DEFAULT_LIMITS, Limits, create_app, require_fastapi, retrieve_response
from igpo_envs.search.base import Retriever

if TYPE_CHECKING:

    from igpo_envs.search.corpus import CorpusRows

__all__ = ["Limits", "RetrieverServer", "build_parser", "create_app", "main", "retrieve_response", "run", "serve"]


def _idle_timeout_protocol():
    """uvicorn's h11 protocol whose keep-alive timeout also runs from the moment a connection opens: uvicorn starts
    it only after a response, so a client that connects and sends nothing would hold its connection forever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class IdleTimeoutH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

    return IdleTimeoutH11Protocol


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


class RetrieverServer:
    """A uvicorn server of :func:`create_app` on an already-bound socket; ``url`` is its ``/retrieve`` endpoint."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8000, *, verbose: bool = False,
                 backlog: int = 2048, timeout_keep_alive: float = 5.0, max_connections: int | None = None) -> None:
        import uvicorn

        self.socket = _bind(host, port, backlog)  # bound now: port 0's real port is known before serving
        self.server_address = self.socket.getsockname()[:2]
        config = uvicorn.Config(app, log_level="info" if verbose else "warning", access_log=verbose,
                                backlog=backlog, timeout_keep_alive=timeout_keep_alive,
                                limit_concurrency=max_connections, lifespan="off", http=_idle_timeout_protocol())
        self.uvicorn = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/retrieve"

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (SIGINT/SIGTERM in the main thread) or :meth:`shutdown`."""
        self.uvicorn.run(sockets=[self.socket])

    def start(self) -> "RetrieverServer":
        self.thread = threading.Thread(target=self.serve_forever, name=f"igpo-retriever:{self.server_address[1]}",
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"igpo-retriever failed to start on {self.url}")
            time.sleep(0.01)
        return self

    def shutdown(self) -> None:
        self.uvicorn.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)

    def server_close(self) -> None:
        self.socket.close()

    def __enter__(self) -> "RetrieverServer":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


def serve(retriever: Retriever, host: str = "127.0.0.1", port: int = 0, *, default_topk: int = 3,
          limits: Limits = DEFAULT_LIMITS, rows: "CorpusRows | None" = None, verbose: bool = False,
          timeout_keep_alive: float = 5.0, body_timeout: float = 30.0) -> RetrieverServer:
    """Start serving ``retriever`` in a background thread and return the running server.

    ``port=0`` picks a free port: read it from ``server.server_address[1]`` (or use ``server.url``). Stop it with
    ``server.shutdown(); server.server_close()`` (or use it as a context manager).
    """
    app = create_app(retriever, default_topk=default_topk, limits=limits, rows=rows, body_timeout=body_timeout)
    return RetrieverServer(app, host, port, verbose=verbose, timeout_keep_alive=timeout_keep_alive).start()


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """``--index``, ``--ray``, ``--replicas`` and Ray's options (Ray itself is imported only with ``--ray``)."""
    group = parser.add_argument_group("prebuilt indexes and Ray Serve (pip install 'igpo[scale]')")
    group.add_argument("--index", default=None,
                       help="serve a prebuilt `igpo-index build` directory (checked against --corpus) instead of "
                            "indexing --corpus")
    group.add_argument("--ray", action="store_true",
                       help="serve /retrieve with Ray Serve (needs --index); replicas share the memory-mapped index")
    group.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray; default 1)")
    group.add_argument("--ray-address", default=None,
                       help="join an existing Ray cluster (e.g. 'auto'); default: start a local one")
    group.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs reserved per replica")


def build_parser() -> argparse.ArgumentParser:
    """The ``igpo-retriever`` argument parser."""
    from igpo_envs.search import ENGINES

    defaults = Limits()
    parser = argparse.ArgumentParser(
        prog="igpo-retriever",
        description="Serve retrieval over a wiki-18 jsonl corpus with the Search-R1 HTTP protocol "
                    "(POST /retrieve, GET /health).",
    )
    parser.add_argument("--corpus", required=True, help="corpus in FlashRAG / wiki-18 jsonl ({id, contents} or "
                                                        "{id, title, text}); its rows are served as stored")
    parser.add_argument("--engine", default="bm25s", choices=ENGINES,
                        help="retrieval engine over --corpus (default bm25s; ignored with --index, whose manifest "
                             "names its engine)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (0 picks a free one; default 8000)")
    parser.add_argument("--topk", type=int, default=3, help="passages per query when a request omits topk")
    parser.add_argument("--max-topk", type=int, default=defaults.max_topk, help="largest topk a request may ask for")
    parser.add_argument("--max-queries", type=int, default=defaults.max_queries, help="most queries per request")
    parser.add_argument("--max-results", type=int, default=defaults.max_results,
                        help="most passages per response (queries x topk)")
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes, help="largest request body")
    parser.add_argument("--max-connections", type=int, default=None,
                        help="concurrent connections before answering 503 (default: no limit)")
    parser.add_argument("--cache-dir", default=None, help="bm25s index cache (default $IGPO_CACHE_DIR/indexes "
                                                          "or ~/.cache/igpo/indexes)")
    parser.add_argument("--threads", type=int, default=None, help="search threads per batch (default: all CPUs "
                                                                  "for bm25s, 1 for tantivy)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    add_scale_arguments(parser)
    from igpo_envs.search.dense import add_dense_arguments  # --model, prefixes, --faiss-index (dense and hybrid)

    add_dense_arguments(parser, build=False, faiss_file=True)
    return parser


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(max_topk=args.max_topk, max_queries=args.max_queries, max_results=args.max_results,
                  max_body_bytes=args.max_body_bytes)


def build_retriever(args: argparse.Namespace) -> Retriever:
    """The retriever the parsed arguments ask for, through the env's engine selection
    (:func:`igpo_envs.search.make_retriever`), so every engine it knows can be served."""
    from pathlib import Path

    from igpo_envs.search import make_retriever

    if not Path(args.corpus).expanduser().is_file():
        raise FileNotFoundError(f"corpus file not found: {args.corpus}")
    if args.index is None and args.engine == "bm25s":
        options = {"cache_dir": args.cache_dir, "n_threads": args.threads}
    elif args.index is not None or args.engine == "tantivy":
        options = {"num_threads": args.threads or 1}
    else:
        options = {}
    if args.index is not None or args.engine in ("dense", "hybrid"):
        from igpo_envs.search.dense import dense_options

        options.update(dense_options(args))  # a BM25 index refuses them with a clear error
        if args.index is None:
            options["cache_dir"] = args.cache_dir
    return make_retriever(corpus=args.corpus, retriever=args.engine, index=args.index, **options)


def run(args: argparse.Namespace, retriever: Retriever | None = None, rows: "CorpusRows | None" = None) -> None:
    """Serve in the foreground until interrupted."""
    from igpo_envs.search.corpus import CorpusRows

    retriever = retriever if retriever is not None else build_retriever(args)
    rows = rows if rows is not None else CorpusRows(args.corpus)
    app = create_app(retriever, default_topk=args.topk, limits=limits_from_args(args), rows=rows)
    server = RetrieverServer(app, args.host, args.port, verbose=args.verbose, max_connections=args.max_connections)
    print(f"igpo-retriever: serving {getattr(retriever, 'num_passages', '?')} passages "
          f"(content hash {retriever.content_hash[:16]}) at {server.url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def run_ray(args: argparse.Namespace) -> int:
    """``igpo-retriever --ray``: serve ``--index`` on Ray Serve until interrupted."""
    if not args.index:
        raise SystemExit("igpo-retriever: error: --ray needs --index DIR (build one with `igpo-index build`)")
    if args.replicas < 1:
        raise SystemExit(f"igpo-retriever: error: --replicas must be >= 1, got {args.replicas}")
    from igpo_envs.search.ray_serve import serve_retriever

    try:
        serve_retriever(args.index, replicas=args.replicas, host=args.host, port=args.port, corpus=args.corpus,
                        num_cpus_per_replica=args.cpus_per_replica, default_topk=args.topk,
                        limits=limits_from_args(args), address=args.ray_address, blocking=True)
    except (OSError, ValueError) as exc:  # missing index, manifest/corpus mismatch
        raise SystemExit(f"igpo-retriever: error: {exc}") from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("topk", "max_topk", "max_queries", "max_results", "max_body_bytes"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.topk > args.max_topk:
        parser.error(f"--topk {args.topk} exceeds --max-topk {args.max_topk}")
    try:
        require_fastapi()
    except ImportError as exc:
        parser.exit(2, f"igpo-retriever: error: {exc}\n")
    if args.ray:
        return run_ray(args)
    from igpo_envs.search.corpus import CorpusRows

    try:
        retriever = build_retriever(args)
        rows = CorpusRows(args.corpus)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"igpo-retriever: error: {exc}\n")
    run(args, retriever, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
