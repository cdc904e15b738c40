"""Web search backends behind the `Retriever` interface: a self-hosted SearXNG instance and Serper (Google).

Results become `Passage(id=url, title, text=snippet)`, so the env shows them exactly like local passages
(``Doc i (Title: t) snippet``). Answers are cached on disk (sqlite) for ``cache_ttl`` seconds, 7 days by default like
the official IGPO code, under ``$IGPO_CACHE_DIR`` or ``~/.cache/igpo/web``. Rate limits (429) and server errors
(5xx) are retried a bounded number of times with exponential backoff, honouring ``Retry-After``, and ``timeout`` is
an overall deadline per query: the project's one retrying session, :func:`igpo_envs.search.sessions.retrying_session`.
A batch of queries is answered concurrently by a small thread pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from igpo_envs.search.base import RetrieverError
from igpo_envs.search.sessions import RETRY_STATUSES, retrying_session  # noqa: F401 - re-exported for agents
from igpo_envs.types import Passage

DEFAULT_CACHE_TTL = 7 * 24 * 3600


def default_cache_dir() -> Path:
    """``$IGPO_CACHE_DIR/web`` if set, else ``~/.cache/igpo/web``."""
    root = os.environ.get("IGPO_CACHE_DIR")
    return Path(root) / "web" if root else Path.home() / ".cache" / "igpo" / "web"


class WebCache:
    """A sqlite cache of search answers, keyed by a hash of (backend, endpoint, query, topk), with expiry."""

    def __init__(self, path: str | Path | None = None, ttl: float = DEFAULT_CACHE_TTL):
        self.path = Path(path) if path is not None else default_cache_dir() / "search.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl = ttl
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, created REAL, value TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    @staticmethod
    def key(*parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        """The cached value, or None if absent or older than ``ttl`` seconds."""
        with self._lock, self._connect() as db:
            row = db.execute("SELECT created, value FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None or time.time() - row[0] > self.ttl:
            return None
        return json.loads(row[1])

    def put(self, key: str, value: Any) -> None:
        with self._lock, self._connect() as db:
            db.execute("REPLACE INTO answers VALUES (?, ?, ?)", (key, time.time(), json.dumps(value)))


class WebSearchRetriever:
    """Shared machinery of the web backends: caching, retries, concurrency, error reporting.

    Subclasses implement `_request` (one HTTP call) and `_parse` (response JSON -> passages).
    """

    name = "web"

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 20.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_wait: float = 60.0,
        max_workers: int = 4,
        cache: WebCache | bool | None = True,
        cache_ttl: float = DEFAULT_CACHE_TTL,
    ):
        self.endpoint = endpoint
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_workers = max_workers
        self.session = retrying_session(max_retries, backoff, max_wait)
        if cache is True:
            cache = WebCache(ttl=cache_ttl)
        self.cache: WebCache | None = cache or None
        # Web results have no fixed corpus; the hash identifies the backend and endpoint that answered.
        self.content_hash = f"{self.name}:" + hashlib.sha256(endpoint.encode()).hexdigest()[:16]

    def search(self, queries: Sequence[str], topk: int) -> list[list[Passage]]:
        """Top-``topk`` web results per query (same order as ``queries``); raises `RetrieverError` on failure."""
        if isinstance(queries, str):
            raise TypeError("search() takes a list of queries, not a single string")
        unique = list(dict.fromkeys(queries))  # a batch often repeats a query (G rollouts of one question)
        if len(unique) <= 1:
            answers = [self._search_one(q, topk) for q in unique]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_workers, len(unique))) as pool:
                answers = list(pool.map(lambda q: self._search_one(q, topk), unique))
        by_query = dict(zip(unique, answers))
        return [list(by_query[q]) for q in queries]

    def _search_one(self, query: str, topk: int) -> list[Passage]:
        key = WebCache.key(self.name, self.endpoint, query, topk)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return [Passage(**p) for p in hit]
        try:
            response = self._request(query, topk)
        except requests.RequestException as exc:
            raise RetrieverError(f"{self.name} search at {self.endpoint} failed for query {query!r}: {exc}") from None
        if response.status_code != 200:
            raise RetrieverError(
                f"{self.name} search at {self.endpoint} answered HTTP {response.status_code} for query {query!r}"
                f"{' after ' + str(self.max_retries) + ' retries' if response.status_code in RETRY_STATUSES else ''}"
                f"{self._hint(response.status_code)}: {response.text[:300]!r}"
            )
        try:
            data = response.json()
        except ValueError:
            raise RetrieverError(
                f"{self.name} search at {self.endpoint} returned non-JSON for query {query!r}: {response.text[:200]!r}"
            ) from None
        unique = {p.id: p for p in reversed(self._parse(data))}  # first occurrence of each URL wins
        passages = sorted(unique.values(), key=lambda p: -p.score)[:topk]
        if self.cache is not None:
            self.cache.put(key, [p.__dict__ for p in passages])
        return passages

    def _hint(self, status: int) -> str:
        return ""

    def _request(self, query: str, topk: int) -> requests.Response:
        raise NotImplementedError

    def _parse(self, data: dict) -> list[Passage]:
        raise NotImplementedError


def _passage(url: Any, title: Any, snippet: Any, rank: int) -> Passage | None:
    if not isinstance(url, str) or not url:
        return None
    text = " ".join(str(snippet or "").split())
    return Passage(id=url, title=str(title or url).strip(), text=text, score=-float(rank))


class SearXNGRetriever(WebSearchRetriever):
    """Search a self-hosted SearXNG instance through its JSON API (``GET {base_url}/search?q=...&format=json``).

    The instance must list ``json`` under ``search.formats`` in its settings.yml (SearXNG answers 403 otherwise).
    Each result's ``url``, ``title`` and ``content`` become a passage's id, title and text.
    """

    name = "searxng"

    def __init__(self, base_url: str = "http://127.0.0.1:8888", *, categories: str = "general",
                 language: str = "en", **kwargs: Any):
        super().__init__(base_url.rstrip("/") + "/search", **kwargs)
        self.params = {"format": "json", "categories": categories, "language": language}

    def _request(self, query: str, topk: int) -> requests.Response:
        return self.session.get(self.endpoint, params={"q": query, **self.params}, timeout=self.timeout)

    def _hint(self, status: int) -> str:
        return " (enable the json format: search.formats in SearXNG's settings.yml)" if status == 403 else ""

    def _parse(self, data: dict) -> list[Passage]:
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise RetrieverError(f"searxng response from {self.endpoint} has no 'results' list: {str(data)[:200]!r}")
        passages = [_passage(r.get("url"), r.get("title"), r.get("content"), i) for i, r in enumerate(results)]
        return [p for p in passages if p is not None]


class SerperRetriever(WebSearchRetriever):
    """Google results through Serper (``POST https://google.serper.dev/search``), the official IGPO web backend.

    The API key is read from the environment variable ``api_key_env`` (``SERPER_API_KEY``). The answer box, when
    Google shows one, comes first; then the ``organic`` results (``link``, ``title``, ``snippet``).
    """

    name = "serper"

    def __init__(self, api_key_env: str = "SERPER_API_KEY", *, base_url: str = "https://google.serper.dev",
                 gl: str = "us", hl: str = "en", **kwargs: Any):
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:
            raise RetrieverError(
                f"Serper needs an API key: set the environment variable {api_key_env} (get one at serper.dev)"
            )
        super().__init__(base_url.rstrip("/") + "/search", **kwargs)
        self.session.headers.update({"X-API-KEY": api_key, "Content-Type": "application/json"})
        self.gl, self.hl = gl, hl

    def _request(self, query: str, topk: int) -> requests.Response:
        body = {"q": query, "num": max(10, topk), "gl": self.gl, "hl": self.hl}
        return self.session.post(self.endpoint, json=body, timeout=self.timeout)

    def _hint(self, status: int) -> str:
        return " (check the API key)" if status in (401, 403) else ""

    def _parse(self, data: dict) -> list[Passage]:
        organic = data.get("organic") if isinstance(data, dict) else None
        if not isinstance(organic, list):
            raise RetrieverError(f"serper response from {self.endpoint} has no 'organic' list: {str(data)[:200]!r}")
        passages = []
        box = data.get("answerBox")
        if isinstance(box, dict) and box.get("link"):
            passages.append(_passage(box["link"], box.get("title"), box.get("answer") or box.get("snippet"), -1))
        passages += [_passage(r.get("link"), r.get("title"), r.get("snippet"), i) for i, r in enumerate(organic)]
        return [p for p in passages if p is not None]
