"""A Ray pool of searcher actors over one prebuilt on-disk index: retrieval for many rollout workers.

Each actor opens the same index directory (``igpo-index build`` output). Every engine memory-maps its index
files (tantivy segments; bm25s's score matrix with ``mmap=True``; a dense index's FAISS vectors and passages), so
the actors of one node share page-cache pages instead of each holding a copy. A dense actor also loads its own copy
of the query encoder (~90 MB for MiniLM, ~440 MB for e5-base-v2) and, with one CPU, encodes with one thread. On a
multi-node cluster the directory must exist at the same path on every node (shared filesystem or a copy per node).

The client splits a batch of queries into chunks and spreads them over the actors. If an actor dies (killed, OOM,
node lost) its slot gets a new actor and every chunk that was in flight on it is resubmitted, so no query is lost
and none is answered empty because of the failure. A chunk that fails ``max_retries`` times, or an error raised by
the search itself, surfaces as :class:`~igpo_envs.search.base.RetrieverError`.

Example::

    import ray
    ray.init()                      # or ray.init(address="auto") on a cluster
    pool = RayRetrieverPool("/data/wiki18-tantivy", num_actors=8)
    env = gym.make("igpo/...", retriever=pool)
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from igpo_envs.search.base import RetrieverError
from igpo_envs.search.manifest import read_manifest
from igpo_envs.types import Passage

#: Ray system config for a cluster that serves retrieval: keep task returns up to 4 MiB inline in the RPC reply
#: instead of the object store (Ray's default limit is 100 KiB). A batch of 64 queries x 10 passages is ~400 KB of
#: text; at 1M passages inlining cut Ray's cost per batch from 5.7 ms (+17%) to 0.8 ms (+2%) in
#: benchmarks/retrieval_scale.py (no difference at 100k, on a loaded machine). The pool applies
#: it when it starts a local cluster itself; for a cluster started with `ray start`, pass it there
#: (`ray start --head --system-config='{"max_direct_call_object_size": 4194304, ...}'`).
RAY_SYSTEM_CONFIG = {"max_direct_call_object_size": 4 << 20, "task_rpc_inlined_bytes_limit": 8 << 20}


def _ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError('the Ray retrieval pool needs Ray: pip install "igpo[scale]"') from exc
    return ray


class SearcherActor:
    """One searcher process: opens the on-disk index once, then answers chunks of queries."""

    def __init__(self, index_dir: str, num_threads: int = 1, open_options: dict[str, Any] | None = None) -> None:
        from igpo_envs.search.index import open_index

        self.retriever = open_index(index_dir, num_threads=num_threads, **(open_options or {}))

    def ready(self) -> int:
        return os.getpid()

    def search(self, queries: list[str], topk: int) -> tuple[list[int], list[str], list[str], list[str], list[float]]:
        """Answers as flat columns (per-query counts, ids, titles, texts, scores): about half the serialisation
        cost of pickling ``Passage`` objects, which dominates Ray's per-call overhead at batch 64."""
        hits = self.retriever.search(queries, topk)
        flat = [p for answer in hits for p in answer]
        return (
            [len(answer) for answer in hits],
            [p.id for p in flat],
            [p.title for p in flat],
            [p.text for p in flat],
            [p.score for p in flat],
        )


def _passages_from_columns(columns: tuple[list[int], list[str], list[str], list[str], list[float]]):
    counts, ids, titles, texts, scores = columns
    out, start = [], 0
    for n in counts:
        out.append([Passage(ids[j], titles[j], texts[j], scores[j]) for j in range(start, start + n)])
        start += n
    return out


@dataclass
class PoolStats:
    """Counters a user (or a test) can read to see what the fault handling did."""

    batches: int = 0
    chunks: int = 0
    chunks_done: int = 0
    chunks_retried: int = 0
    actors_replaced: int = 0
    replaced_pids: list[int] = field(default_factory=list)


class RayRetrieverPool:
    """Batched search spread over ``num_actors`` Ray actors (implements the ``Retriever`` protocol).

    Args:
        index_dir: an ``igpo-index build`` output directory, readable at this path on every node.
        num_actors: searcher actors to start (one CPU each by default).
        corpus: optional corpus file; its sha256 must match the index manifest (checked once, here).
        chunk_size: queries per actor call; ``None`` splits each batch into one chunk per actor.
        max_retries: how many times one chunk may be resubmitted after actor failures before giving up.
        timeout_s: give up (``RetrieverError``) if no chunk finishes for this long.
        num_cpus_per_actor: Ray CPUs reserved per actor.
        actor_options: extra ``ActorClass.options(...)`` (e.g. ``{"scheduling_strategy": "SPREAD"}``, resources).
        address: passed to ``ray.init`` when Ray is not initialised yet (``None`` = local cluster, ``"auto"`` = join).
        open_options: passed to :func:`~igpo_envs.search.index.open_index` in each actor (a dense index's
            ``model=``, ``ef_search=``, ``device=``, ...).
        num_threads: search threads per actor (for a dense index: FAISS's and torch's threads); match it to
            ``num_cpus_per_actor``.
    """

    def __init__(
        self,
        index_dir: str | Path,
        num_actors: int = 2,
        *,
        corpus: str | Path | None = None,
        chunk_size: int | None = None,
        max_retries: int = 3,
        timeout_s: float = 120.0,
        num_cpus_per_actor: float = 1,
        actor_options: dict[str, Any] | None = None,
        address: str | None = None,
        open_options: dict[str, Any] | None = None,
        num_threads: int = 1,
    ) -> None:
        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        ray = _ray()
        self.index_dir = str(Path(index_dir).resolve())
        self.manifest = read_manifest(self.index_dir)
        if corpus is not None:
            from igpo_envs.search.index import corpus_sha256

            self.manifest.check_corpus(corpus_sha256(corpus), index_dir=self.index_dir, corpus_path=corpus)
        self.content_hash: str = self.manifest.corpus_sha256
        if not ray.is_initialized():
            # A system config can only be set by whoever starts the cluster, not when joining one.
            ray.init(address=address, _system_config=RAY_SYSTEM_CONFIG if address is None else None)
        self.num_actors = num_actors
        self.chunk_size = chunk_size
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        options = {"num_cpus": num_cpus_per_actor, "max_restarts": 0}
        options.update(actor_options or {})
        self._actor_class = ray.remote(SearcherActor).options(**options)
        self._actor_args = (self.index_dir, num_threads, dict(open_options or {}))
        self._lock = threading.Lock()
        self.stats = PoolStats()
        self.actors = [self._actor_class.remote(*self._actor_args) for _ in range(num_actors)]
        # Surface an index that cannot be opened now, not at the first search.
        self.pids = ray.get([a.ready.remote() for a in self.actors], timeout=timeout_s)

    # -- Retriever protocol --------------------------------------------------------------------------------------
    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-``topk`` passages per query, best first, in the order of ``queries``."""
        ray = _ray()
        if isinstance(queries, str):
            raise TypeError("search() takes a list of queries; wrap a single query in a list")
        queries = list(queries)
        if not queries:
            return []
        chunks = self._chunks(queries)
        results: list[list[list[Passage]] | None] = [None] * len(chunks)
        attempts = [0] * len(chunks)
        pending: dict[Any, tuple[int, int, Any]] = {}  # ref -> (chunk index, slot, actor handle used)

        def submit(i: int, slot: int) -> None:
            actor = self.actors[slot]
            pending[actor.search.remote(chunks[i], topk)] = (i, slot, actor)

        with self._lock:
            self.stats.batches += 1
            self.stats.chunks += len(chunks)
        for i in range(len(chunks)):
            submit(i, i % self.num_actors)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=self.timeout_s)
            if not done:
                raise RetrieverError(
                    f"Ray retrieval pool: no answer within {self.timeout_s:.0f} s for {len(pending)} chunk(s) "
                    f"of a {len(queries)}-query batch ({self.index_dir})"
                )
            ref = done[0]
            i, slot, actor = pending.pop(ref)
            try:
                results[i] = _passages_from_columns(ray.get(ref))
            except ray.exceptions.RayActorError as exc:
                attempts[i] += 1
                if attempts[i] > self.max_retries:
                    raise RetrieverError(
                        f"Ray retrieval pool: chunk {i} ({len(chunks[i])} queries) failed {attempts[i]} times "
                        f"because its actor died; last error: {exc}"
                    ) from exc
                self._replace(slot, actor)
                with self._lock:
                    self.stats.chunks_retried += 1
                submit(i, slot)
                continue
            except ray.exceptions.RayTaskError as exc:
                raise RetrieverError(f"Ray retrieval pool: search failed inside the actor: {exc}") from exc
            with self._lock:
                self.stats.chunks_done += 1
        return [answers for chunk in results for answers in chunk]  # type: ignore[union-attr]

    # -- internals -----------------------------------------------------------------------------------------------
    def _chunks(self, queries: list[str]) -> list[list[str]]:
        size = self.chunk_size or math.ceil(len(queries) / self.num_actors)
        return [queries[i : i + size] for i in range(0, len(queries), size)]

    def _replace(self, slot: int, dead: Any) -> None:
        """Give ``slot`` a fresh actor unless another failure already replaced the dead one."""
        with self._lock:
            if self.actors[slot] is not dead:
                return
            ray = _ray()
            try:
                ray.kill(dead, no_restart=True)
            except Exception:  # already gone
                pass
            self.actors[slot] = self._actor_class.remote(*self._actor_args)
            self.stats.actors_replaced += 1
            self.stats.replaced_pids.append(self.pids[slot])
            self.pids[slot] = -1  # filled lazily; the new actor's pid is not needed to serve

    def close(self) -> None:
        """Stop every actor of the pool (Ray itself stays up)."""
        ray = _ray()
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors = []

    def __enter__(self) -> RayRetrieverPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RayRetrieverPool({self.index_dir!r}, num_actors={self.num_actors}, engine={self.manifest.engine})"

