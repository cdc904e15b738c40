"""Hybrid retrieval: BM25 and dense rankings fused by reciprocal rank (RRF, Cormack et al., SIGIR 2009).

Each engine ranks its top ``depth`` passages; a passage's fused score is ``sum_e w_e / (rrf_k + rank_e)`` over the
engines that returned it (rank 1 = best). Ranks, not scores, are fused, so BM25's unbounded scores and cosine
similarities need no calibration. A passage found by both engines beats one found by one at a similar rank, which
is where hybrid retrieval gains: lexical matches of rare names (BM25) plus paraphrases (dense).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from igpo_envs.search.base import Retriever
from igpo_envs.search.dense import checked_queries
from igpo_envs.types import Passage

__all__ = ["HybridRetriever", "reciprocal_rank_fusion"]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Passage]], *, k: float = 60.0,
                           weights: Sequence[float] | None = None) -> list[Passage]:
    """Fuse best-first ``rankings`` by ``sum_r w_r / (k + rank_r(p))``; returns every passage once, best first,
    its ``score`` the fused score. Ties keep the order in which passages were first seen (first ranking first)."""
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    fused: dict[str, float] = {}
    first: dict[str, Passage] = {}
    for weight, ranking in zip(weights, rankings):
        for rank, passage in enumerate(ranking, start=1):
            fused[passage.id] = fused.get(passage.id, 0.0) + weight / (k + rank)
            first.setdefault(passage.id, passage)
    order = sorted(fused, key=fused.__getitem__, reverse=True)  # stable: ties stay in first-seen order
    return [replace(first[pid], score=fused[pid]) for pid in order]


class HybridRetriever:
    """BM25 (``sparse``) and dense retrieval over the same corpus, fused by reciprocal rank.

    Args:
        sparse: a BM25 retriever (bm25s or tantivy); dense: a :class:`~igpo_envs.search.dense.DenseRetriever`
            (any two retrievers over one corpus work).
        rrf_k: RRF's rank constant (60, the paper's); larger flattens the difference between ranks.
        depth: passages each engine ranks before fusion (default ``max(topk, 20)``).
        weights: per-engine weights ``(sparse, dense)``.

    Passage ids must identify the same passage in both engines, so both must index the same corpus: retrievers
    with different ``content_hash`` are refused.
    """

    engine = "hybrid"

    def __init__(self, sparse: Retriever, dense: Retriever, *, rrf_k: float = 60.0, depth: int | None = None,
                 weights: Sequence[float] = (1.0, 1.0)) -> None:
        if sparse.content_hash != dense.content_hash:
            raise ValueError(f"hybrid retrieval needs both engines over one corpus; the sparse engine serves "
                             f"{sparse.content_hash[:16]}…, the dense one {dense.content_hash[:16]}…")
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if len(weights) != 2:
            raise ValueError(f"weights must be (sparse, dense), got {weights!r}")
        self.sparse, self.dense = sparse, dense
        self.rrf_k, self.depth, self.weights = float(rrf_k), depth, tuple(float(w) for w in weights)
        self.content_hash: str = sparse.content_hash  # the corpus's, as for every local engine
        self.num_passages = getattr(dense, "num_passages", None)

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-``topk`` passages per query by fused rank, best first; ``score`` is the RRF score."""
        queries = checked_queries(queries, topk)
        depth = self.depth if self.depth is not None else max(topk, 20)
        sparse_hits = self.sparse.search(queries, depth)
        dense_hits = self.dense.search(queries, depth)
        return [reciprocal_rank_fusion([s, d], k=self.rrf_k, weights=self.weights)[:topk]
                for s, d in zip(sparse_hits, dense_hits)]

    def __repr__(self) -> str:
        return f"HybridRetriever(sparse={self.sparse!r}, dense={self.dense!r}, rrf_k={self.rrf_k:g})"
