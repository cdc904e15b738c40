"""The ``browse`` tool: fetch one web page safely and return its readable text within a token budget.

Safety is on by default: every hop (the URL and each redirect target) passes `check_url` before any connection, and
the connection goes to the exact address that was checked (no second DNS lookup, so DNS rebinding cannot swap in a
private address). Redirects are followed by hand with a cap; the body is read with a byte cap and timeouts; only
HTML and plain text are accepted. Environment proxy settings are ignored (a proxy would resolve names itself, which
defeats the address check).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from urllib.parse import urljoin

import requests
from bs4 import BeautifulSoup, NavigableString
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from igpo_envs.search.url_safety import AllowPrivate, resolve_url

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
TEXT_TYPES = ("text/html", "application/xhtml+xml", "text/plain")
# Page chrome and non-content: dropped before extracting text.
DROP_TAGS = ("script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "iframe", "svg",
             "button", "select", "canvas", "object", "embed", "menu")
# Block-level tags end a line in the extracted text (inline tags like <a> and <code> stay inside the line).
BLOCK_TAGS = ("p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "td", "th",
              "pre", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "br", "hr", "figure", "figcaption", "details",
              "summary")
DEFAULT_USER_AGENT = "igpo-browse/0.1 (+https://arxiv.org/abs/2510.14967)"


class BrowseError(RuntimeError):
    """A page could not be fetched or read (HTTP error, timeout, wrong content type, too many redirects)."""


# --- connections pinned to the checked address -------------------------------------------------------------------


class _PinnedMixin:
    """Connect to ``pinned_address`` instead of resolving the host again (Host header, SNI and TLS keep the name)."""

    pinned_address: str

    def _new_conn(self):
        try:
            return urllib3_connection.create_connection(
                (self.pinned_address, self.port),
                self.timeout,
                source_address=self.source_address,
                socket_options=self.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"connection to {self.host} ({self.pinned_address}) timed out") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"failed to connect to {self.host} ({self.pinned_address}): {exc}") from exc


def _pinned_session(address: str, user_agent: str) -> requests.Session:
    """A session whose every connection goes to ``address`` (one hop = one session)."""
    http_conn = type("PinnedHTTPConnection", (_PinnedMixin, HTTPConnection), {"pinned_address": address})
    https_conn = type("PinnedHTTPSConnection", (_PinnedMixin, HTTPSConnection), {"pinned_address": address})
    pools = {
        "http": type("PinnedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("PinnedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }
    adapter = HTTPAdapter(max_retries=0)
    adapter.poolmanager.pool_classes_by_scheme = pools
    session = requests.Session()
    session.trust_env = False  # no proxies from the environment: they would resolve names behind our back
    session.headers.update({"User-Agent": user_agent, "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9"})
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# --- text extraction ----------------------------------------------------------------------------------------------


def extract_text(html: str | bytes, encoding: str | None = None) -> tuple[str, str]:
    """Readable text of an HTML page as ``(title, text)``: chrome dropped, main/article content preferred.

    Scripts, styles, navigation, headers, footers, asides and forms are removed; if the page has a ``<main>`` (or
    else ``<article>`` elements, or an element with ``role="main"``) only that content is kept. Block elements become
    lines; whitespace inside a line is collapsed and empty lines dropped.
    """
    soup = BeautifulSoup(html, "html.parser", from_encoding=encoding if isinstance(html, bytes) else None)
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup.find_all(DROP_TAGS):
        tag.decompose()
    for tag in soup.find_all(attrs={"role": ["navigation", "banner", "contentinfo", "search", "complementary"]}):
        tag.decompose()
    roots = [soup.find("main")] if soup.find("main") else soup.find_all("article")
    if not roots:
        roots = [soup.find(attrs={"role": "main"}) or soup.body or soup]
    for root in roots:
        # HTML whitespace semantics: source line breaks are spaces, except inside <pre>.
        for string in root.find_all(string=True):
            if type(string) is NavigableString and string.find_parent(["pre", "textarea"]) is None:
                string.replace_with(re.sub(r"\s+", " ", string))
        for tag in root.find_all(BLOCK_TAGS):
            tag.insert_before("\n")
            tag.insert_after("\n")
    text = "\n".join(root.get_text() for root in roots)
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.splitlines())
    return title, "\n".join(line for line in lines if line)


def truncate_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """Keep the first ``max_tokens`` whitespace-separated tokens of ``text``, line breaks preserved.

    Whitespace tokens are a model-independent budget (roughly 0.75 subword tokens per word for English).
    """
    kept, count = [], 0
    for line in text.splitlines():
        words = line.split()
        if count + len(words) > max_tokens:
            if max_tokens - count > 0:
                kept.append(" ".join(words[: max_tokens - count]))
            return "\n".join(kept), True
        kept.append(line)
        count += len(words)
    return "\n".join(kept), False


# --- the tool -----------------------------------------------------------------------------------------------------


@dataclass
class Page:
    """A fetched page: the final URL after redirects, its content type, raw body and whether the body was capped."""

    url: str
    status: int
    content_type: str
    encoding: str | None
    body: bytes
    capped: bool


class Browser:
    """The ``browse`` tool: ``browser(url) -> str``, the page title, final URL and readable text.

    Args:
        max_tokens: text budget in whitespace-separated tokens (the page text is cut there, and says so).
        max_bytes: at most this many body bytes are read; the rest of a larger page is never downloaded.
        timeout: seconds to connect and between received bytes, as ``requests`` takes it (float or (connect, read)).
        max_seconds: wall-clock limit for the whole body (``timeout`` bounds each wait; this stops slow drips).
        max_redirects: redirects followed by hand, each target re-checked with `check_url` before connecting.
        allow_private: ``False`` (default) refuses every non-public address; ``True`` allows all (local testing); a
            list of networks such as ``["127.0.0.0/8"]`` allows only those.
        user_agent: the User-Agent header sent.

    Raises:
        UnsafeURLError: the URL or a redirect target is refused (raised before any connection to it).
        BrowseError: the page could not be fetched or is not HTML/text.
    """

    def __init__(
        self,
        max_tokens: int = 2000,
        max_bytes: int = 2_000_000,
        timeout: float | tuple[float, float] = (5.0, 15.0),
        max_seconds: float = 30.0,
        max_redirects: int = 5,
        allow_private: AllowPrivate = False,
        user_agent: str = DEFAULT_USER_AGENT,
    ):
        if max_tokens < 1 or max_bytes < 1 or max_redirects < 0:
            raise ValueError("max_tokens and max_bytes must be positive and max_redirects non-negative")
        self.max_tokens = max_tokens
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.max_redirects = max_redirects
        self.allow_private = allow_private
        self.user_agent = user_agent

    def __call__(self, url: str) -> str:
        page = self.fetch(url)
        if page.content_type == "text/plain":
            title, text = "", page.body.decode(page.encoding or "utf-8", errors="replace").strip()
        else:
            title, text = extract_text(page.body, page.encoding)
        text, cut = truncate_tokens(text, self.max_tokens)
        header = [f"Title: {title}"] if title else []
        header.append(f"URL: {page.url}")
        notes = []
        if page.capped:
            notes.append(f"[page larger than {self.max_bytes} bytes; only the beginning was read]")
        if cut:
            notes.append(f"[text truncated to {self.max_tokens} words]")
        return "\n".join(header + ["", text or "(no readable text)"] + notes)

    def fetch(self, url: str) -> Page:
        """GET ``url``, following up to ``max_redirects`` redirects, each hop checked and pinned to its address."""
        current = url
        for _hop in range(self.max_redirects + 1):
            resolved = resolve_url(current, allow_private=self.allow_private)  # raises before any connection
            session = _pinned_session(resolved.addresses[0], self.user_agent)
            try:
                response = session.get(current, stream=True, allow_redirects=False, timeout=self.timeout)
            except requests.RequestException as exc:
                raise BrowseError(f"could not fetch {current!r}: {exc}") from None
            try:
                if response.status_code in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise BrowseError(f"redirect {response.status_code} from {current!r} has no Location header")
                    current = urljoin(current, location)
                    continue
                return self._read(current, response)
            finally:
                response.close()
                session.close()
        raise BrowseError(f"too many redirects (more than {self.max_redirects}) starting from {url!r}")

    def _read(self, url: str, response: requests.Response) -> Page:
        if response.status_code >= 400:
            raise BrowseError(f"HTTP {response.status_code} {response.reason} from {url!r}")
        content_type = response.headers.get("Content-Type", "")
        mime = content_type.split(";")[0].strip().lower()
        if mime not in TEXT_TYPES:
            raise BrowseError(
                f"{url!r} is {content_type or 'of unknown type (no Content-Type)'}; "
                "only HTML and plain text can be browsed"
            )
        body, capped = bytearray(), False
        deadline = time.monotonic() + self.max_seconds
        try:
            # read1 returns whatever has arrived (iter_content would wait for full 64 KiB blocks), so the deadline
            # is checked while a slow server drips bytes.
            while chunk := response.raw.read1(65536, decode_content=True):
                if time.monotonic() > deadline:
                    raise BrowseError(f"reading {url!r} took longer than {self.max_seconds} s")
                body.extend(chunk)
                if len(body) >= self.max_bytes:
                    capped = len(body) > self.max_bytes or response.raw.read1(1, decode_content=True) != b""
                    del body[self.max_bytes :]
                    break
        except (requests.RequestException, HTTPError, OSError) as exc:
            raise BrowseError(f"error while reading {url!r}: {exc}") from None
        charset = re.search(r"charset=([\w.:-]+)", content_type, flags=re.IGNORECASE)
        return Page(url, response.status_code, mime, charset.group(1) if charset else None, bytes(body), capped)
