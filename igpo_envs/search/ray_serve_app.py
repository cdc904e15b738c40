"""The Ray Serve deployment behind ``igpo-retriever --ray`` (imported lazily: it imports Ray Serve and FastAPI).

Serve pickles the ingress app with its deployment class, so both live at module level here; configure replicas
with ``RetrieverDeployment.options(num_replicas=...)`` (see :func:`igpo_envs.search.ray_serve.build_app`).
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` annotation.
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from igpo_envs.search.index_cli import open_index
from igpo_envs.search.server import BadRequest, parse_retrieve_request, retrieve_response

api = FastAPI(title="igpo retriever (Ray Serve)")


@serve.deployment
@serve.ingress(api)
class RetrieverDeployment:
    """One replica: memory-maps the index directory and answers Search-R1 requests like ``igpo-retriever``."""

    def __init__(self, index_dir: str, default_topk: int) -> None:
        self.retriever = open_index(index_dir)
        self.default_topk = default_topk

    @api.post("/retrieve")
    async def retrieve(self, request: Request):
        try:
            queries, topk, return_scores = parse_retrieve_request(await request.body(), self.default_topk)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            results = self.retriever.search(queries, topk)
        except Exception as exc:  # noqa: BLE001 - report a backend failure to the client, keep serving
            return JSONResponse({"error": f"retriever failed: {type(exc).__name__}: {exc}"}, status_code=500)
        return retrieve_response(results, return_scores)

    @api.get("/health")
    def health(self) -> dict[str, Any]:
        return {"status": "ok", "content_hash": self.retriever.content_hash,
                "num_passages": getattr(self.retriever, "num_passages", None),
                "retriever": f"ray-serve:{type(self.retriever).__name__}"}
