"""Web search backends behind the `Retriever` interface: a self-hosted SearXNG instance and Serper (Google).

Results become `Passage(id=url, title, text=snippet)`, so the env shows them exactly like local passages
(``Doc i (Title: t) snippet``). Answers are cached on disk (sqlite) for ``cache_ttl`` seconds, 7 days by default like
the official IGPO code, under ``$IGPO_CACHE_DIR`` or ``~/.cache/igpo/web``. Rate limits (429) and server errors
(5xx) are retried a bounded number of times with exponential backoff, honouring ``Retry-After``, and ``timeout`` is
an overall deadline per query: the project's one retrying session, :func:`igpo_envs.search.sessions.retrying_session`.
A batch of queries is answered concurrently by a small thread pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from igpo_envs.search.base import RetrieverError
from igpo_envs.search.sessions import RETRY_STATUSES, retrying_session
from igpo_envs.types import Passage

DEFAULT_CACHE_TTL = 7 * 24 * 3600


def default_cache_dir() -> Path:
    """``$IGPO_CACHE_DIR/web`` if set, else ``~/.cache/igpo/web``."""
    root = os.environ.get("IGPO_CACHE_DIR")
    return Path(root) / "web" if root else Path.home() / ".cache" / "igpo" / "web"


class WebCache:
    """A sqlite cache of search answers, keyed by a hash of (backend, endpoint, query, topk), with expiry.

    A cache never stops a search: a corrupt file (or one that is not this cache's) is moved aside to
    ``<name>.corrupt-<time>`` and started afresh, an unreadable entry is fetched again, and a file or directory that
    cannot be written makes the searches run uncached; each with a `RuntimeWarning` naming the file.
    """

    def __init__(self, path: str | Path | None = None, ttl: float = DEFAULT_CACHE_TTL):
        self.path = Path(path) if path is not None else default_cache_dir() / "search.sqlite"
        self.ttl = ttl
        self.enabled = True
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._disable(exc)
            return
        self._run(lambda db: db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, created REAL, value TEXT)"))
        self._run(lambda db: db.execute("SELECT key, created, value FROM answers LIMIT 1").fetchall())

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def _run(self, operation: Any) -> Any:
        """``operation(db)`` in a transaction on a fresh connection; None if the cache is (or becomes) unusable."""
        if not self.enabled:
            return None
        try:
            with self._lock, contextlib.closing(self._connect()) as db, db:
                return operation(db)
        except sqlite3.OperationalError as exc:
            message = str(exc).lower()
            if "no such table" in message or "no such column" in message or "has no column" in message:
                self._move_aside(exc)  # a sqlite file, but not this cache's
            elif "locked" in message or "busy" in message:
                warnings.warn(f"web search cache {self.path} is busy ({exc}); this search is not cached",
                              RuntimeWarning, stacklevel=3)
            else:  # read-only file or directory, no space, I/O error
                self._disable(exc)
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            self._move_aside(exc)
        except OSError as exc:
            self._disable(exc)
        return None

    def _disable(self, exc: Exception) -> None:
        self.enabled = False
        warnings.warn(f"web search cache {self.path} cannot be used ({type(exc).__name__}: {exc}); searching "
                      f"without a cache", RuntimeWarning, stacklevel=4)

    def _move_aside(self, exc: Exception) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            for suffix in ("-journal", "-wal", "-shm"):
                companion = self.path.with_name(self.path.name + suffix)
                if companion.exists():
                    os.replace(companion, aside.with_name(aside.name + suffix))
            os.replace(self.path, aside)
        except OSError as move_error:
            self._disable(move_error)
            return
        warnings.warn(f"web search cache {self.path} is corrupt ({exc}); moved it to {aside} and started a new one",
                      RuntimeWarning, stacklevel=4)
        self._run(lambda db: db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, created REAL, value TEXT)"))

    @staticmethod
    def key(*parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        """The cached value, or None if absent, older than ``ttl`` seconds or unreadable."""
        row = self._run(lambda db: db.execute("SELECT created, value FROM answers WHERE key = ?", (key,)).fetchone())
        if row is None:
            return None
        created, value = row
        try:
            if time.time() - float(created) > self.ttl:
                return None
            return json.loads(value)
        except (TypeError, ValueError, RecursionError) as exc:
            warnings.warn(f"web search cache {self.path}: entry {key[:12]}… is unreadable ({type(exc).__name__}); "
                          f"searching again", RuntimeWarning, stacklevel=2)
            return None

    def put(self, key: str, value: Any) -> None:
        self._run(lambda db: db.execute("REPLACE INTO answers VALUES (?, ?, ?)", (key, time.time(), json.dumps(value))))


def _cached_passages(hit: Any) -> list[Passage] | None:
    """The passages of a cache entry, or None if it is not a list of passage records (then search again)."""
    try:
        passages = [Passage(**p) for p in hit]
    except TypeError:
        return None
    fields_ok = all(isinstance(x, str) for p in passages for x in (p.id, p.title, p.text))
    return passages if fields_ok and all(isinstance(p.score, (int, float)) for p in passages) else None


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
            passages = _cached_passages(hit)
            if passages is not None:
                return passages
            warnings.warn(f"web search cache {self.cache.path}: the entry for {query!r} is not a list of passages; "
                          f"searching again", RuntimeWarning, stacklevel=3)
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
