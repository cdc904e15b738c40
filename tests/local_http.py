"""A real HTTP server on 127.0.0.1 for the web tests: routes map a path to a function returning a response."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int = 200
    body: bytes | str | list[bytes] = b""  # a list is sent chunk by chunk, `chunk_delay` seconds apart
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay: float = 0.0


Route = Callable[[Request], Response]


class LocalServer:
    """``with LocalServer({"/page": fn}) as server: server.url("/page")``; ``server.requests`` logs every request."""

    def __init__(self, routes: dict[str, Route]):
        self.routes = routes
        self.requests: list[Request] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, parts.path, parse_qs(parts.query), dict(self.headers),
                                  self.rfile.read(length) if length else b"")
                outer.requests.append(request)
                route = outer.routes.get(parts.path)
                response = route(request) if route else Response(404, "not found", {"Content-Type": "text/plain"})
                chunks = response.body if isinstance(response.body, list) else [response.body]
                chunks = [c.encode() if isinstance(c, str) else c for c in chunks]
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(sum(len(c) for c in chunks)))
                self.end_headers()
                try:
                    for i, chunk in enumerate(chunks):
                        if i:
                            time.sleep(response.chunk_delay)
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (size cap)
                    pass

            do_GET = do_POST = _handle

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
