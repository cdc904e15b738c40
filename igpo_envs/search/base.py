"""The retriever interface every search backend implements (bm25s, HTTP, tantivy, Ray, web)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from igpo_envs.types import Passage


class RetrieverError(RuntimeError):
    """A configured retriever could not answer (down, timed out, bad response)."""


@runtime_checkable
class Retriever(Protocol):
    """Batched search: one call answers many queries, which is what the vector env and the trainer rely on."""

    #: Identifies the exact corpus/index content (a hash), reported in env info so results are traceable.
    content_hash: str

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Return the top-``topk`` passages for each query, best first (same order as ``queries``)."""
        ...
