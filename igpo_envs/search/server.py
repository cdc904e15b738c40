"""``igpo-retriever``: serve any Retriever over the Search-R1 HTTP protocol.

Endpoints:

- ``POST /retrieve`` with ``{"queries": [...], "topk": k, "return_scores": bool}`` (``topk`` defaults to the
  server's ``--topk``, ``return_scores`` to false, as in Search-R1) →
  ``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}``, or bare documents without scores.
- ``GET /health`` → ``{"status": "ok", "content_hash": ..., "num_passages": ..., "retriever": ...}``.

Bad requests get 400 with ``{"error": message}``; a failing retriever gets 500. The standard library's
``ThreadingHTTPServer`` keeps the envs free of web-framework dependencies; one batched request carries many
queries, so per-request overhead is not the bottleneck.

Run ``igpo-retriever --corpus corpus.jsonl --port 8000`` (binds 127.0.0.1 unless ``--host`` says otherwise), then
point an env at it with ``retriever_url="http://127.0.0.1:8000/retrieve"``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from igpo_envs.search.base import Retriever
from igpo_envs.types import Passage

__all__ = ["RetrieverHTTPServer", "build_parser", "main", "retrieve_response", "run", "serve"]

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_TOPK = 1000


class BadRequest(ValueError):
    """The request body is not a valid /retrieve request; the message says why."""


def parse_retrieve_request(body: bytes, default_topk: int) -> tuple[list[str], int, bool]:
    """Validate a ``/retrieve`` body; returns ``(queries, topk, return_scores)`` or raises BadRequest."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(request).__name__}")
    queries = request.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise BadRequest("'queries' must be a list of strings")
    topk = request.get("topk", default_topk)
    if topk is None:
        topk = default_topk
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        raise BadRequest(f"'topk' must be an integer in [1, {MAX_TOPK}], got {topk!r}")
    return_scores = request.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise BadRequest(f"'return_scores' must be a boolean, got {return_scores!r}")
    return queries, topk, return_scores


def retrieve_response(results: list[list[Passage]], return_scores: bool) -> dict[str, Any]:
    """The Search-R1 response body for ``results``."""
    if return_scores:
        return {"result": [[{"document": {"id": p.id, "contents": p.contents}, "score": p.score} for p in hits]
                           for hits in results]}
    return {"result": [[{"id": p.id, "contents": p.contents} for p in hits] for hits in results]}


class _Handler(BaseHTTPRequestHandler):
    server: RetrieverHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses one connection per session

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        # An error answered before the body is read must close the connection: the unread body would otherwise
        # be parsed as the next keep-alive request.
        if self.path.split("?", 1)[0] != "/retrieve":
            self.close_connection = True
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {self.path} (use /retrieve)"})
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "a Content-Length header is required"})
            return
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            {"error": f"request body of {length} bytes exceeds {MAX_BODY_BYTES}"})
            return
        body = self.rfile.read(int(length))
        try:
            queries, topk, return_scores = parse_retrieve_request(body, self.server.default_topk)
        except BadRequest as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        try:
            results = self.server.retriever.search(queries, topk)
        except Exception as exc:  # noqa: BLE001 - report any backend failure to the client, keep serving
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR,
                            {"error": f"retriever failed: {type(exc).__name__}: {exc}"})
            return
        self._send_json(HTTPStatus.OK, retrieve_response(results, return_scores))

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/health":
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: GET {self.path} (use /health)"})
            return
        retriever = self.server.retriever
        self._send_json(HTTPStatus.OK, {
            "status": "ok",
            "content_hash": retriever.content_hash,
            "num_passages": getattr(retriever, "num_passages", None),
            "retriever": type(retriever).__name__,
        })

    def _send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        if self.server.verbose:
            super().log_message(format, *args)


class RetrieverHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer bound to one retriever. ``url`` is its ``/retrieve`` endpoint."""

    daemon_threads = True

    def __init__(self, retriever: Retriever, host: str = "127.0.0.1", port: int = 8000, *, default_topk: int = 3,
                 verbose: bool = False) -> None:
        if not isinstance(retriever, Retriever):
            raise TypeError(f"serve() needs a Retriever, got {type(retriever).__name__}")
        self.retriever = retriever
        self.default_topk = default_topk
        self.verbose = verbose
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/retrieve"


def serve(retriever: Retriever, host: str = "127.0.0.1", port: int = 0, *, default_topk: int = 3,
          verbose: bool = False) -> RetrieverHTTPServer:
    """Start serving ``retriever`` in a background thread and return the running server.

    ``port=0`` picks a free port: read it from ``server.server_address[1]`` (or use ``server.url``). Stop it with
    ``server.shutdown(); server.server_close()``.
    """
    server = RetrieverHTTPServer(retriever, host, port, default_topk=default_topk, verbose=verbose)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},  # prompt shutdown()
                              name=f"igpo-retriever:{server.server_address[1]}", daemon=True)
    thread.start()
    server.thread = thread  # type: ignore[attr-defined]
    return server


def build_parser() -> argparse.ArgumentParser:
    """The ``igpo-retriever`` argument parser (extensions add their options to it)."""
    parser = argparse.ArgumentParser(
        prog="igpo-retriever",
        description="Serve BM25 retrieval over a wiki-18 jsonl corpus with the Search-R1 HTTP protocol "
                    "(POST /retrieve, GET /health).",
    )
    parser.add_argument("--corpus", required=True, help="corpus in FlashRAG / wiki-18 jsonl ({id, contents} or "
                                                        "{id, title, text})")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (0 picks a free one; default 8000)")
    parser.add_argument("--topk", type=int, default=3, help="passages per query when a request omits topk")
    parser.add_argument("--cache-dir", default=None, help="index cache (default $IGPO_CACHE_DIR/indexes "
                                                          "or ~/.cache/igpo/indexes)")
    parser.add_argument("--threads", type=int, default=None, help="numba threads per batch (default: all CPUs)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    from igpo_envs.search.ray_serve import add_scale_arguments  # --index, --ray, --replicas (issue 6)

    add_scale_arguments(parser)
    return parser


def build_retriever(args: argparse.Namespace) -> Retriever:
    """The retriever the parsed arguments ask for (a cached BM25 index over ``--corpus``)."""
    from igpo_envs.search.bm25 import BM25Retriever

    if getattr(args, "index", None):  # a prebuilt `igpo-index build` directory, checked against --corpus
        from igpo_envs.search.index_cli import open_index

        return open_index(args.index, corpus=args.corpus, num_threads=args.threads or 1)
    return BM25Retriever(args.corpus, cache_dir=args.cache_dir, n_threads=args.threads)


def run(args: argparse.Namespace, retriever: Retriever | None = None) -> None:
    """Serve in the foreground until interrupted."""
    retriever = retriever if retriever is not None else build_retriever(args)
    server = RetrieverHTTPServer(retriever, args.host, args.port, default_topk=args.topk, verbose=args.verbose)
    print(f"igpo-retriever: serving {getattr(retriever, 'num_passages', '?')} passages "
          f"(content hash {retriever.content_hash[:16]}) at {server.url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")
    if getattr(args, "ray", False):
        from igpo_envs.search.ray_serve import run_ray

        return run_ray(args)
    try:
        retriever = build_retriever(args)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"igpo-retriever: error: {exc}\n")
    run(args, retriever)
    return 0


if __name__ == "__main__":
    sys.exit(main())
