"""The Search-R1 ``POST /retrieve`` endpoint on Ray Serve, with N replicas over one prebuilt on-disk index.

Existing Search-R1 / FlashRAG clients keep working and scale out: Ray Serve's HTTP proxy spreads requests over the
replicas, each of which memory-maps the same index directory (``igpo-index build`` output).

    igpo-retriever --ray --replicas 4 --index indexes/wiki18-tantivy --host 127.0.0.1 --port 8000

Request ``{"queries": [...], "topk": 3, "return_scores": true}`` -> ``{"result": [[{"document": {"id", "contents"},
"score"}, ...], ...]}`` (without ``return_scores``: ``{"result": [[{"id", "contents"}, ...], ...]}``).
"""

from __future__ import annotations

import time
from pathlib import Path

DEFAULT_TOPK = 3
APP_NAME = "igpo-retriever"


def _serve():
    try:
        from ray import serve
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError('Ray Serve is needed: pip install "igpo[scale]" (ray[default,serve])') from exc
    return serve


def build_app(
    index_dir: str | Path,
    *,
    replicas: int = 1,
    num_cpus_per_replica: float = 1,
    corpus: str | Path | None = None,
    default_topk: int = DEFAULT_TOPK,
):
    """The Serve application (``Deployment.bind()``) answering ``POST /retrieve`` from ``replicas`` replicas.

    Requests are validated and answered exactly as :mod:`igpo_envs.search.server` does (same parser, same response
    builder, same 400 ``{"error": ...}`` bodies), so clients cannot tell the two servers apart.
    """
    from igpo_envs.search.index_cli import open_index
    from igpo_envs.search.ray_serve_app import RetrieverDeployment

    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    # Open once here: a bad directory or a corpus mismatch fails now, in the caller, with the manifest's message.
    open_index(index_dir, corpus=corpus)
    deployment = RetrieverDeployment.options(num_replicas=replicas,
                                             ray_actor_options={"num_cpus": num_cpus_per_replica})
    return deployment.bind(str(Path(index_dir).resolve()), default_topk)


def serve_retriever(
    index_dir: str | Path,
    *,
    replicas: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    num_cpus_per_replica: float = 1,
    corpus: str | Path | None = None,
    default_topk: int = DEFAULT_TOPK,
    address: str | None = None,
    blocking: bool = False,
):
    """Start Ray (if needed) and Serve on ``host:port`` and deploy the ``/retrieve`` app; returns its handle."""
    import ray

    serve = _serve()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    app = build_app(index_dir, replicas=replicas, num_cpus_per_replica=num_cpus_per_replica, corpus=corpus,
                    default_topk=default_topk)
    handle = serve.run(app, name=APP_NAME, route_prefix="/")
    if blocking:
        print(f"igpo-retriever (Ray Serve, {replicas} replicas) on http://{host}:{port}/retrieve", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return handle


def add_scale_arguments(parser) -> None:
    """Add ``--index``, ``--ray``, ``--replicas`` (and Ray options) to the ``igpo-retriever`` parser."""
    group = parser.add_argument_group("prebuilt indexes and Ray Serve (pip install 'igpo[scale]')")
    group.add_argument("--index", default=None,
                       help="serve a prebuilt `igpo-index build` directory (checked against --corpus) instead of "
                            "building a bm25s index from --corpus")
    group.add_argument("--ray", action="store_true",
                       help="serve /retrieve with Ray Serve (needs --index); replicas share the memory-mapped index")
    group.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray; default 1)")
    group.add_argument("--ray-address", default=None,
                       help="join an existing Ray cluster (e.g. 'auto'); default: start a local one")
    group.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs reserved per replica")


def run_ray(args) -> int:
    """``igpo-retriever --ray``: serve ``--index`` on Ray Serve until interrupted."""
    if not args.index:
        raise SystemExit("igpo-retriever: error: --ray needs --index DIR (build one with `igpo-index build`)")
    if args.replicas < 1:
        raise SystemExit(f"igpo-retriever: error: --replicas must be >= 1, got {args.replicas}")
    try:
        serve_retriever(args.index, replicas=args.replicas, host=args.host, port=args.port, corpus=args.corpus,
                        num_cpus_per_replica=args.cpus_per_replica, default_topk=args.topk,
                        address=args.ray_address, blocking=True)
    except (OSError, ValueError) as exc:  # missing index, manifest/corpus mismatch
        raise SystemExit(f"igpo-retriever: error: {exc}") from None
    return 0
