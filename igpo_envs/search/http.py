"""Client of the Search-R1 retrieval-server protocol (ours: ``igpo-retriever``; theirs: Search-R1's retrieval_server).

Request, ``POST {url}``::

    {"queries": ["q1", "q2"], "topk": 3, "return_scores": true}

Response, one list per query, best first::

    {"result": [[{"document": {"id": "0", "contents": "\\"Title\\"\\ntext"}, "score": 12.3}, ...], ...]}

With ``return_scores: false`` Search-R1 returns the bare documents (``[[{"id", "contents"}, ...], ...]``); both item
shapes are accepted, and documents may also be ``{"id", "title", "text"}`` or, from Search-R1's BM25 server over an
index that stores raw documents, ``{"title", "text", "contents"}`` without an id (the passage id is then
``"sha256:"`` + a hash of its contents).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urljoin

import requests

from igpo_envs.search.base import RetrieverError
from igpo_envs.search.corpus import passage_from_record
from igpo_envs.search.sessions import retrying_session
from igpo_envs.types import Passage

__all__ = ["HTTPRetriever", "parse_retrieve_response"]


def parse_retrieve_response(payload: Any, num_queries: int) -> list[list[Passage]]:
    """Turn a Search-R1 ``/retrieve`` response body into passages; a malformed body raises RetrieverError."""
    if not isinstance(payload, dict) or "result" not in payload:
        raise RetrieverError(f"response has no 'result' field (got {_preview(payload)})")
    result = payload["result"]
    if not isinstance(result, list) or len(result) != num_queries:
        got = f"{len(result)} lists" if isinstance(result, list) else type(result).__name__
        raise RetrieverError(f"'result' must be a list with one list per query ({num_queries}), got {got}")
    out: list[list[Passage]] = []
    for qi, hits in enumerate(result):
        if not isinstance(hits, list):
            raise RetrieverError(f"result[{qi}] must be a list of documents, got {type(hits).__name__}")
        passages = []
        for di, hit in enumerate(hits):
            where = f"result[{qi}][{di}]"
            score = 0.0
            if isinstance(hit, dict) and "document" in hit:
                doc, score = hit["document"], hit.get("score", 0.0)
                if isinstance(score, bool) or not isinstance(score, (int, float)):
                    raise RetrieverError(f"{where}: 'score' must be a number, got {_preview(score)}")
            else:
                doc = hit
            try:
                p = passage_from_record(_with_id(doc), where + (".document" if doc is not hit else ""))
            except ValueError as exc:
                raise RetrieverError(str(exc)) from None
            passages.append(Passage(p.id, p.title, p.text, float(score)))
        out.append(passages)
    return out


def _with_id(doc: Any) -> Any:
    """Search-R1's raw-document BM25 branch answers ``{"title", "text", "contents"}`` with no id: name the passage
    by its content, so the same passage always gets the same id."""
    if isinstance(doc, dict) and "id" not in doc and isinstance(doc.get("contents", doc.get("text")), str):
        content = doc.get("contents", doc.get("text"))
        return {**doc, "id": "sha256:" + hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()[:16]}
    return doc


def _preview(obj: Any, limit: int = 200) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "…"


class HTTPRetriever:
    """A :class:`~igpo_envs.search.base.Retriever` that asks a Search-R1-protocol server.

    Args:
        url: the ``/retrieve`` endpoint, e.g. ``http://127.0.0.1:8000/retrieve``.
        timeout: overall deadline of one ``search`` call, in seconds (connecting, every read and every retry; a
            server that drips its answer byte by byte cannot hold the caller longer).
        max_retries: further attempts after a connection error, a read error or a 429/5xx answer (so at most
            ``1 + max_retries`` requests), waiting ``backoff * 2**n`` seconds in between (urllib3's `Retry`, in the
            project's one retrying session, :func:`igpo_envs.search.sessions.retrying_session`). Other failures
            (4xx, malformed responses) are not retried.
        backoff: base of the exponential wait between attempts, in seconds.
        content_hash: fixes the content hash instead of asking the server (see below).
        topk: the ``topk`` the caller will search with; checked now against the server's ``max_topk`` (from
            ``GET /health``), so a value the server refuses fails at construction, not at every search.

    ``content_hash`` and the server's limits are read lazily from ``GET /health`` next to ``url`` (our server
    reports the hash of its corpus and its request limits there) and then kept. A server without that endpoint
    (e.g. Search-R1's own) gets ``"url:" + sha256(url)`` and no limits. While the server cannot be reached, the URL
    hash is returned but not kept (the next access asks again); reading the attribute makes one quick attempt and
    never raises, so ``isinstance(client, Retriever)`` stays cheap and safe.

    A batch larger than the server's ``max_queries`` or ``max_results`` (queries × topk) is sent in several
    requests. Failures never return an empty result: ``search`` raises RetrieverError naming the URL, the number
    of attempts and the last error.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        *,
        content_hash: str | None = None,
        topk: int | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"retriever URL must start with http:// or https://, got {url!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = url
        self.health_url = urljoin(url, "health")
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = backoff
        self._content_hash = content_hash
        self._health: dict[str, Any] | None = None  # kept once the server answered (or has no /health)
        self._session = retrying_session(max_retries, backoff, max_wait=self.timeout)
        self._probe = retrying_session(0)  # /health: one quick try, never a retry loop inside isinstance()
        if topk is not None:
            self.check_topk(topk)

    def __repr__(self) -> str:
        return f"HTTPRetriever({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_session", "_probe")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._session = retrying_session(self.max_retries, self.backoff, max_wait=self.timeout)
        self._probe = retrying_session(0)

    def _server_health(self) -> dict[str, Any] | None:
        """``GET /health``'s body ({} for a server without one), or None while the server cannot be reached."""
        if self._health is not None:
            return self._health
        try:
            response = self._probe.get(self.health_url, timeout=min(self.timeout, 5.0))
        except requests.RequestException:
            return None  # unreachable now: don't keep a guess
        try:
            health = response.json() if response.ok else {}
        except (ValueError, RecursionError):
            health = {}
        self._health = health if isinstance(health, dict) else {}
        return self._health

    @property
    def content_hash(self) -> str:
        if self._content_hash is not None:
            return self._content_hash
        url_hash = "url:" + hashlib.sha256(self.url.encode()).hexdigest()
        health = self._server_health()
        if health is None:
            return url_hash
        reported = health.get("content_hash")
        self._content_hash = reported if isinstance(reported, str) and reported else url_hash
        return self._content_hash

    def limit(self, name: str) -> int | None:
        """The server's request limit ``name`` (``max_topk``, ``max_queries``, ``max_results``) if it reports one."""
        limits = (self._server_health() or {}).get("limits")
        value = limits.get(name) if isinstance(limits, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def check_topk(self, topk: int) -> None:
        """Raise ValueError if the server reports a ``max_topk`` below ``topk`` (no check if it reports none)."""
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
        max_topk = self.limit("max_topk")
        if max_topk is not None and topk > max_topk:
            raise ValueError(f"topk={topk} exceeds the retriever server's limit max_topk={max_topk} ({self.url}); "
                             f"use topk <= {max_topk} or start the server with a larger --max-topk")

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        if isinstance(queries, str):
            raise TypeError("search() takes a sequence of queries; wrap a single query in a list")
        self.check_topk(topk)
        queries = list(queries)
        if not queries:
            return []
        per_request = [n for n in (self.limit("max_queries"), (self.limit("max_results") or 0) // topk) if n]
        size = max(1, min(per_request)) if per_request else len(queries)
        out: list[list[Passage]] = []
        for start in range(0, len(queries), size):
            out.extend(self._search_batch(queries[start:start + size], topk))
        return out

    def _search_batch(self, queries: list[str], topk: int) -> list[list[Passage]]:
        body = {"queries": queries, "topk": int(topk), "return_scores": True}
        attempts = 1 + self.max_retries
        try:
            response = self._session.post(self.url, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RetrieverError(f"retriever {self.url} failed after {attempts} attempt(s); last error: "
                                 f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise RetrieverError(f"retriever {self.url} failed after {attempts} attempt(s); last error: "
                                 f"HTTP {response.status_code}: {_preview(response.text)}")
        if not response.ok:
            raise RetrieverError(f"retriever {self.url} answered HTTP {response.status_code}: "
                                 f"{_preview(response.text)}")
        try:
            payload = response.json()
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than json can parse
            raise RetrieverError(f"retriever {self.url} answered with invalid JSON ({type(exc).__name__}): "
                                 f"{_preview(response.text)}") from None
        try:
            return [hits[:topk] for hits in parse_retrieve_response(payload, len(queries))]
        except RetrieverError as exc:
            raise RetrieverError(f"retriever {self.url} gave a malformed response: {exc}") from None
