"""The one HTTP session every igpo client uses (retriever client, web search, OpenAI-compatible agents).

:func:`retrying_session` returns a `requests.Session` that

* retries connection errors, read errors and 429/5xx answers with urllib3's `Retry` (exponential backoff,
  ``Retry-After`` honoured up to ``max_wait``), the last failing answer coming back so it can be reported; and
* treats ``timeout=`` as an **overall deadline** for the whole call (connect, send, every read, every retry):
  requests and urllib3 apply a timeout per socket operation, so a server that drips one byte at a time holds a
  caller forever. A watchdog shuts the call's socket down at the deadline; the call then raises
  :class:`DeadlineExceeded` (a `requests.Timeout`).

The browse tool keeps its own session (pinned to one checked address per hop, no retries): see
:mod:`igpo_envs.search.browse`.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import Retry

__all__ = ["RETRY_STATUSES", "DeadlineExceeded", "retrying_session"]

RETRY_STATUSES = (429, 500, 502, 503, 504)


class DeadlineExceeded(requests.Timeout):
    """No complete answer within the call's overall deadline (``timeout=`` seconds)."""


class _DeadlinePassed(Exception):
    """Raised inside urllib3 to stop a call whose deadline has passed (not an error urllib3 would retry)."""


class _Deadline:
    """One call's deadline: the sockets it uses are shut down when it expires."""

    def __init__(self, seconds: float) -> None:
        self.expires = time.monotonic() + seconds
        self.expired = False
        self.done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if self.expired:
                _shutdown(sock)
            else:
                self._sockets.append(sock)

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:  # wakes a thread blocked in recv/send on it; the connection is then dropped, never reused
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """One daemon thread expiring deadlines in time order (a thread per call would cost more than most calls)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._counter = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: _Deadline) -> None:
        with self._wake:
            heapq.heappush(self._heap, (deadline.expires, next(self._counter), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="igpo-http-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                deadline = heapq.heappop(self._heap)[2]
            deadline.expire()


_WATCHDOG = _Watchdog()
_current = threading.local()  # the deadline of the call running on this thread (connections are per thread)


def _active() -> _Deadline | None:
    return getattr(_current, "deadline", None)


class _DeadlineConnectionMixin:
    """Registers the connection's socket with the current call's deadline; refuses to start after it."""

    def connect(self) -> None:
        deadline = _active()
        if deadline is not None and deadline.expired:
            raise _DeadlinePassed
        super().connect()  # type: ignore[misc]
        if deadline is not None:
            deadline.watch(self.sock)  # type: ignore[attr-defined]

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = _active()
        if deadline is not None:
            if deadline.expired:
                raise _DeadlinePassed
            deadline.watch(self.sock)  # type: ignore[attr-defined]  # a kept-alive connection
        super().request(*args, **kwargs)  # type: ignore[misc]


class _DeadlineRetry(Retry):
    """urllib3's Retry that does not sleep past the deadline just to find it has passed."""

    def sleep(self, response: Any = None) -> None:
        deadline = _active()
        if deadline is not None:
            wait = self.get_backoff_time()
            if self.respect_retry_after_header and response is not None:
                wait = max(wait, self.get_retry_after(response) or 0.0)
            if deadline.remaining() <= wait:
                raise _DeadlinePassed
        super().sleep(response)


_HTTP_CONNECTION = type("DeadlineHTTPConnection", (_DeadlineConnectionMixin, HTTPConnection), {})
_HTTPS_CONNECTION = type("DeadlineHTTPSConnection", (_DeadlineConnectionMixin, HTTPSConnection), {})
_POOL_CLASSES = {
    "http": type("DeadlineHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": _HTTP_CONNECTION}),
    "https": type("DeadlineHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": _HTTPS_CONNECTION}),
}


class _DeadlineAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:  # also runs when unpickled
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOL_CLASSES)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_POOL_CLASSES)
        return manager


class DeadlineSession(requests.Session):
    """A `requests.Session` whose numeric ``timeout=`` bounds the whole call, retries included."""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        timeout = kwargs.get("timeout")
        if kwargs.get("stream") or isinstance(timeout, tuple) or timeout is None:
            return super().request(method, url, *args, **kwargs)  # the caller manages time itself
        deadline = _Deadline(float(timeout))
        outer, _current.deadline = _active(), deadline
        _WATCHDOG.add(deadline)
        try:
            return super().request(method, url, *args, **kwargs)  # reads the whole body (stream=False)
        except (requests.RequestException, _DeadlinePassed) as exc:
            if deadline.expired or isinstance(exc, _DeadlinePassed):
                raise DeadlineExceeded(f"no complete answer from {url} within the {timeout} s deadline") from None
            raise
        finally:
            deadline.done = True
            _current.deadline = outer


def retrying_session(max_retries: int = 3, backoff: float = 0.5, max_wait: float = 60.0,
                     methods: tuple[str, ...] = ("GET", "POST"),
                     statuses: tuple[int, ...] = RETRY_STATUSES) -> requests.Session:
    """A session retrying connection/read errors and ``statuses`` up to ``max_retries`` times.

    Waits grow as ``backoff * 2**n`` (urllib3's schedule: none before the first retry), each at most ``max_wait``
    seconds, as is ``Retry-After`` (seconds or an HTTP date). After the last retry the failing answer is returned,
    so its status and body can be reported. ``timeout=`` on a call is an overall deadline (see the module docs).
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    retry_kwargs: dict[str, Any] = {}
    if "retry_after_max" in Retry.__init__.__code__.co_varnames:  # urllib3 >= 2.6
        retry_kwargs["retry_after_max"] = max_wait
    retry = _DeadlineRetry(
        total=max_retries,
        connect=max_retries,
        read=max_retries,
        status=max_retries,
        backoff_factor=backoff,
        backoff_max=max_wait,
        status_forcelist=statuses,
        allowed_methods=frozenset(methods),
        respect_retry_after_header=True,
        raise_on_status=False,  # the last response comes back so its status and body can be reported
        **retry_kwargs,
    )
    session = DeadlineSession()
    adapter = _DeadlineAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
