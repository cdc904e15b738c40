"""Client of the Search-R1 retrieval-server protocol (ours: ``igpo-retriever``; theirs: Search-R1's retrieval_server).

Request, ``POST {url}``::

    {"queries": ["q1", "q2"], "topk": 3, "return_scores": true}

Response, one list per query, best first::

    {"result": [[{"document": {"id": "0", "contents": "\\"Title\\"\\ntext"}, "score": 12.3}, ...], ...]}

With ``return_scores: false`` Search-R1 returns the bare documents (``[[{"id", "contents"}, ...], ...]``); both item
shapes are accepted, and documents may also be ``{"id", "title", "text"}``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urljoin

import requests

from igpo_envs.search.base import RetrieverError
from igpo_envs.search.corpus import passage_from_record
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
                p = passage_from_record(doc, where + (".document" if doc is not hit else ""))
            except ValueError as exc:
                raise RetrieverError(str(exc)) from None
            passages.append(Passage(p.id, p.title, p.text, float(score)))
        out.append(passages)
    return out


def _preview(obj: Any, limit: int = 200) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "…"


class HTTPRetriever:
    """A :class:`~igpo_envs.search.base.Retriever` that asks a Search-R1-protocol server.

    Args:
        url: the ``/retrieve`` endpoint, e.g. ``http://127.0.0.1:8000/retrieve``.
        timeout: seconds per HTTP request.
        max_retries: further attempts after a connection error, a timeout or a 5xx answer (so at most
            ``1 + max_retries`` requests), waiting ``backoff * 2**attempt`` seconds in between. Other failures
            (4xx, malformed responses) are not retried.
        backoff: base of the exponential wait between attempts, in seconds.
        content_hash: fixes the content hash instead of asking the server (see below).

    ``content_hash`` is read lazily from ``GET /health`` next to ``url`` (our server reports the hash of its corpus
    there) and then kept. A server without that field or endpoint (e.g. Search-R1's own) gets
    ``"url:" + sha256(url)``: the corpus behind it is unknown, so the URL is the best trace. While the server cannot
    be reached, the URL hash is returned but not kept (the next access asks again); reading the attribute makes one
    quick attempt and never raises, so ``isinstance(client, Retriever)`` stays cheap and safe.

    Failures never return an empty result: after the bounded retries ``search`` raises RetrieverError naming the
    URL, the number of attempts and the last error.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        *,
        content_hash: str | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"retriever URL must start with http:// or https://, got {url!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.url = url
        self.health_url = urljoin(url, "health")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._content_hash = content_hash
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"HTTPRetriever({self.url!r})"

    @property
    def content_hash(self) -> str:
        if self._content_hash is not None:
            return self._content_hash
        url_hash = "url:" + hashlib.sha256(self.url.encode()).hexdigest()
        try:
            response = self._session.get(self.health_url, timeout=min(self.timeout, 5.0))
        except requests.RequestException:
            return url_hash  # unreachable now: don't keep a guess
        try:
            reported = response.json().get("content_hash") if response.ok else None
        except (ValueError, AttributeError):
            reported = None
        self._content_hash = reported if isinstance(reported, str) and reported else url_hash
        return self._content_hash

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        if isinstance(queries, str):
            raise TypeError("search() takes a sequence of queries; wrap a single query in a list")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        queries = list(queries)
        if not queries:
            return []
        body = {"queries": queries, "topk": int(topk), "return_scores": True}
        response = self._request("POST", self.url, json=body)
        if not response.ok:
            raise RetrieverError(f"retriever {self.url} answered HTTP {response.status_code}: "
                                 f"{_preview(response.text)}")
        try:
            payload = response.json()
        except ValueError:
            raise RetrieverError(
                f"retriever {self.url} answered with invalid JSON: {_preview(response.text)}") from None
        try:
            return [hits[:topk] for hits in parse_retrieve_response(payload, len(queries))]
        except RetrieverError as exc:
            raise RetrieverError(f"retriever {self.url} gave a malformed response: {exc}") from None

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Send with bounded retries on connection errors, timeouts and 5xx answers."""
        attempts = 1 + self.max_retries
        last_error = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._session.request(method, url, timeout=self.timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {_preview(response.text)}"
                continue
            return response
        raise RetrieverError(f"retriever {url} failed after {attempts} attempt(s); last error: {last_error}")
