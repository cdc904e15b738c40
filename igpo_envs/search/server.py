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
import json
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from igpo_envs.search.base import Retriever
from igpo_envs.types import Passage

if TYPE_CHECKING:
    from fastapi import FastAPI

    from igpo_envs.search.corpus import CorpusRows

__all__ = ["Limits", "RetrieverServer", "build_parser", "create_app", "main", "retrieve_response", "run", "serve"]


@dataclass(frozen=True)
class Limits:
    """What one ``/retrieve`` request may ask for; the response size is bounded by ``max_results`` passages."""

    max_topk: int = 1000
    max_queries: int = 10_000
    max_results: int = 20_000  # queries × topk: ~14 MiB of wiki-18 passages (~0.7 KB each with its score)
    max_body_bytes: int = 16 * 1024 * 1024


def _fastapi():
    try:
        import fastapi
        import uvicorn  # noqa: F401 - checked together: the server needs both
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError('igpo-retriever needs FastAPI and uvicorn: pip install "igpo[server]"') from exc
    return fastapi


def retrieve_response(results: list[list[Passage]], return_scores: bool,
                      rows: "CorpusRows | None" = None) -> dict[str, Any]:
    """The Search-R1 response body for ``results``: each passage's stored corpus row when ``rows`` has it, else
    ``{"id", "contents"}`` rebuilt from the passage."""

    def document(p: Passage) -> dict[str, Any]:
        row = rows.get(p.id) if rows is not None else None
        return row if row is not None else {"id": p.id, "contents": p.contents}

    if return_scores:
        return {"result": [[{"document": document(p), "score": p.score} for p in hits] for hits in results]}
    return {"result": [[document(p) for p in hits] for hits in results]}


class _BodyTooLarge(Exception):
    pass


class _BodySizeLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, by its Content-Length or, when chunked, as it streams."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send) -> None:
        body = json.dumps({"detail": f"request body exceeds this server's limit max_body_bytes="
                                     f"{self.max_bytes}"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def create_app(retriever: Retriever, *, default_topk: int = 3, limits: Limits = Limits(),
               rows: "CorpusRows | None" = None, name: str | None = None, body_timeout: float = 30.0) -> "FastAPI":
    """The Search-R1 ``/retrieve`` + ``/health`` FastAPI app answering from ``retriever``.

    ``rows`` (:class:`~igpo_envs.search.corpus.CorpusRows` of the indexed corpus) makes documents the stored rows;
    ``name`` is what ``/health`` reports as ``retriever`` (default: the retriever's class name); a client that has
    not sent its whole body after ``body_timeout`` seconds gets 408.
    """
    fastapi = _fastapi()
    import asyncio

    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ValidationError
    from starlette.concurrency import run_in_threadpool

    if not isinstance(retriever, Retriever):
        raise TypeError(f"the retriever server needs a Retriever, got {type(retriever).__name__}")

    class RetrieveRequest(BaseModel):
        """Search-R1's request model: same fields, types, defaults and pydantic (lax) coercions."""

        queries: list[str]
        topk: int | None = None
        return_scores: bool = False

    app = fastapi.FastAPI(title="igpo retriever", description="The Search-R1 retrieval protocol.")
    app.add_middleware(_BodySizeLimit, max_bytes=limits.max_body_bytes)

    def unprocessable(detail: Any) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=422)

    @app.post("/retrieve")
    async def retrieve(request: fastapi.Request):
        try:
            body = await asyncio.wait_for(request.body(), body_timeout)
        except asyncio.TimeoutError:
            return JSONResponse({"detail": f"request body not received within {body_timeout} s"}, status_code=408,
                                headers={"Connection": "close"})
        try:  # parsed here, not by FastAPI, so that deep nesting and huge integers are a 422 too
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return unprocessable([{"loc": ["body"], "type": "json_invalid",
                                   "msg": f"request body is not valid JSON: {str(exc)[:200]}"}])
        try:
            req = RetrieveRequest.model_validate(data)
        except ValidationError as exc:
            return unprocessable(exc.errors(include_url=False, include_input=False, include_context=False))
        topk = req.topk or default_topk  # Search-R1: a missing, null or zero topk means the server's default
        if topk < 1 or topk > limits.max_topk:
            return unprocessable(f"topk={topk} is outside [1, {limits.max_topk}] (this server's limit max_topk="
                                 f"{limits.max_topk})")
        if len(req.queries) > limits.max_queries:
            return unprocessable(f"{len(req.queries)} queries exceed this server's limit max_queries="
                                 f"{limits.max_queries}; split the batch")
        if len(req.queries) * topk > limits.max_results:
            return unprocessable(f"{len(req.queries)} queries x topk {topk} = {len(req.queries) * topk} results "
                                 f"exceed this server's limit max_results={limits.max_results}; split the batch")
        try:
            results = await run_in_threadpool(retriever.search, req.queries, topk)
            payload = await run_in_threadpool(retrieve_response, results, req.return_scores, rows)
        except Exception as exc:  # noqa: BLE001 - report any backend failure to the client, keep serving
            return JSONResponse({"detail": f"retriever failed: {type(exc).__name__}: {exc}"}, status_code=500)
        return JSONResponse(payload)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "content_hash": retriever.content_hash,
                "num_passages": getattr(retriever, "num_passages", None),
                "retriever": name or type(retriever).__name__, "limits": asdict(limits)}

    return app


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
          limits: Limits = Limits(), rows: "CorpusRows | None" = None, verbose: bool = False,
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("topk", "max_topk", "max_queries", "max_results", "max_body_bytes"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.topk > args.max_topk:
        parser.error(f"--topk {args.topk} exceeds --max-topk {args.max_topk}")
    try:
        _fastapi()
    except ImportError as exc:
        parser.exit(2, f"igpo-retriever: error: {exc}\n")
    if args.ray:
        from igpo_envs.search.ray_serve import run_ray

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
