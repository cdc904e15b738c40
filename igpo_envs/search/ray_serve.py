"""The Search-R1 ``POST /retrieve`` endpoint on Ray Serve, with N replicas over one prebuilt on-disk index.

Existing Search-R1 / FlashRAG clients keep working and scale out: Ray Serve's HTTP proxy spreads requests over the
replicas, each of which memory-maps the same index directory (``igpo-index build`` output).

    igpo-retriever --ray --replicas 4 --index indexes/wiki18-tantivy --corpus wiki-18.jsonl --port 8000

Every replica's ingress is the FastAPI app of the local server (:func:`igpo_envs.search.app.create_app`), so the
two answer every request, good or bad, alike. This module imports Ray Serve; ``igpo-retriever`` imports it only
for ``--ray``.
"""

from __future__ import annotations

import time
from pathlib import Path

try:
    from ray import serve
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError('Ray Serve is needed: pip install "igpo[scale]" (ray[default,serve])') from exc

from igpo_envs.search.app import DEFAULT_LIMITS, Limits, create_app

DEFAULT_TOPK = 3
APP_NAME = "igpo-retriever"


@serve.deployment
@serve.ingress()  # the app is built per replica, around the retriever it opened (__serve_build_asgi_app__)
class RetrieverDeployment:
    """One replica: memory-maps the index directory and answers Search-R1 requests like ``igpo-retriever``."""

    def __init__(self, index_dir: str, default_topk: int, corpus: str | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        from igpo_envs.search.corpus import CorpusRows
        from igpo_envs.search.index import open_index

        self.retriever = open_index(index_dir)
        self.rows = CorpusRows(corpus) if corpus is not None else None
        self.default_topk, self.limits = default_topk, limits

    def __serve_build_asgi_app__(self):
        return create_app(self.retriever, default_topk=self.default_topk, limits=self.limits, rows=self.rows,
                          name=f"ray-serve:{type(self.retriever).__name__}")


def build_app(
    index_dir: str | Path,
    *,
    replicas: int = 1,
    num_cpus_per_replica: float = 1,
    corpus: str | Path | None = None,
    default_topk: int = DEFAULT_TOPK,
    limits: Limits = DEFAULT_LIMITS,
):
    """The Serve application (``Deployment.bind()``) answering ``POST /retrieve`` from ``replicas`` replicas.

    With ``corpus``, the index must have been built from it and documents are its rows as stored; without, they are
    ``{"id", "contents"}`` rebuilt from the index.
    """
    from igpo_envs.search.index import open_index

    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    # Open once here: a bad directory or a corpus mismatch fails now, in the caller, with the manifest's message.
    open_index(index_dir, corpus=corpus)
    deployment = RetrieverDeployment.options(num_replicas=replicas,
                                             ray_actor_options={"num_cpus": num_cpus_per_replica})
    return deployment.bind(str(Path(index_dir).resolve()), default_topk,
                           str(Path(corpus).resolve()) if corpus is not None else None, limits)


def serve_retriever(
    index_dir: str | Path,
    *,
    replicas: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    num_cpus_per_replica: float = 1,
    corpus: str | Path | None = None,
    default_topk: int = DEFAULT_TOPK,
    limits: Limits = DEFAULT_LIMITS,
    address: str | None = None,
    blocking: bool = False,
):
    """Start Ray (if needed) and Serve on ``host:port`` and deploy the ``/retrieve`` app; returns its handle."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    app = build_app(index_dir, replicas=replicas, num_cpus_per_replica=num_cpus_per_replica, corpus=corpus,
                    default_topk=default_topk, limits=limits)
    handle = serve.run(app, name=APP_NAME, route_prefix="/")
    if blocking:
        print(f"igpo-retriever (Ray Serve, {replicas} replicas) on http://{host}:{port}/retrieve", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return handle
