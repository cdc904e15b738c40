"""The Search-R1 ``/retrieve`` API as one FastAPI app: served by uvicorn (``igpo-retriever``,
:mod:`igpo_envs.search.server`) and used as the Ray Serve ingress (:mod:`igpo_envs.search.ray_serve`), so both answer
every request, good or bad, alike. The endpoints and their limits are described in :mod:`igpo_envs.search.server`.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's `Request` annotation at runtime.
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from igpo_envs.search.base import Retriever
from igpo_envs.types import Passage

if TYPE_CHECKING:
    from fastapi import FastAPI

    from igpo_envs.search.corpus import CorpusRows

__all__ = ["DEFAULT_LIMITS", "Limits", "create_app", "require_fastapi", "retrieve_response"]


@dataclass(frozen=True)
class Limits:
    """What one ``/retrieve`` request may ask for; the response size is bounded by ``max_results`` passages."""

    max_topk: int = 1000
    max_queries: int = 10_000
    max_results: int = 20_000  # queries × topk: ~14 MiB of wiki-18 passages (~0.7 KB each with its score)
    max_body_bytes: int = 16 * 1024 * 1024


#: The limits a server gets unless told otherwise (a frozen dataclass, safe to share as a default).
DEFAULT_LIMITS = Limits()


def require_fastapi():
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


def create_app(retriever: Retriever, *, default_topk: int = 3, limits: Limits = DEFAULT_LIMITS,
               rows: "CorpusRows | None" = None, name: str | None = None, body_timeout: float = 30.0) -> "FastAPI":
    """The Search-R1 ``/retrieve`` + ``/health`` FastAPI app answering from ``retriever``.

    ``rows`` (:class:`~igpo_envs.search.corpus.CorpusRows` of the indexed corpus) makes documents the stored rows;
    ``name`` is what ``/health`` reports as ``retriever`` (default: the retriever's class name); a client that has
    not sent its whole body after ``body_timeout`` seconds gets 408.
    """
    fastapi = require_fastapi()
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
        except Exception as exc:
            return JSONResponse({"detail": f"retriever failed: {type(exc).__name__}: {exc}"}, status_code=500)
        return JSONResponse(payload)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "content_hash": retriever.content_hash,
                "num_passages": getattr(retriever, "num_passages", None),
                "retriever": name or type(retriever).__name__, "limits": asdict(limits)}

    return app
