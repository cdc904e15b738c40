"""The browse tool and the web search backends against real HTTP servers on 127.0.0.1."""

import json
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path

import pytest
from local_http import LocalServer, Response

from igpo_envs.search.base import Retriever, RetrieverError
from igpo_envs.search.web import (
    BrowseError,
    Browser,
    SearXNGRetriever,
    SerperRetriever,
    WebCache,
    default_cache_dir,
    truncate_tokens,
)
from igpo_envs.types import Passage

DATA = Path(__file__).parent / "data"
HTML = {"Content-Type": "text/html; charset=utf-8"}

ARTICLE_PAGE = """<!DOCTYPE html><html><head><title>Dark Orbit (film) - Filmpedia</title>
<style>body { font-family: serif } .ad { display: none }</style>
<script>window.tracker = "SCRIPT-SECRET";</script></head>
<body><header><a href="/">Filmpedia</a> <span>HEADER-CHROME</span></header>
<nav><ul><li><a href="/a">NAV-LINK One</a></li><li><a href="/b">NAV-LINK Two</a></li></ul></nav>
<form action="/search"><input name="q"><button>FORM-SEARCH</button></form>
<article><h1>Dark Orbit</h1>
<p><b>Dark Orbit</b> is a 1987 science-fiction film directed by <a href="/marlo">Marlo Vesk</a>.</p>
<p>It was shot in   Tavella
   over nine weeks.</p><ul><li>Runtime: 104 minutes</li><li>Language: English</li></ul></article>
<aside>ASIDE-RELATED articles</aside><footer>FOOTER-COPYRIGHT 2024</footer>
<noscript>NOSCRIPT-TEXT</noscript></body></html>"""


@pytest.fixture(scope="module")
def pages():
    big = "<html><body><p>" + "word " * 200_000 + "</p><p>TAIL-MARKER</p></body></html>"
    routes = {
        "/rustdoc": lambda r: Response(200, (DATA / "what-is-rustdoc.html").read_bytes(), HTML),
        "/article": lambda r: Response(200, ARTICLE_PAGE, HTML),
        "/big": lambda r: Response(200, big, HTML),
        "/plain": lambda r: Response(200, "Just   plain\ntext here.", {"Content-Type": "text/plain"}),
        "/latin1": lambda r: Response(200, "<p>Café Zürich</p>".encode("latin-1"),
                                      {"Content-Type": "text/html; charset=ISO-8859-1"}),
        "/pdf": lambda r: Response(200, b"%PDF-1.7 ...", {"Content-Type": "application/pdf"}),
        "/png": lambda r: Response(200, b"\x89PNG\r\n", {"Content-Type": "image/png"}),
        "/untyped": lambda r: Response(200, b"<p>no type</p>"),
        "/error": lambda r: Response(500, "boom", {"Content-Type": "text/plain"}),
        "/gzip": lambda r: Response(200, __import__("gzip").compress(ARTICLE_PAGE.encode()),
                                    {**HTML, "Content-Encoding": "gzip"}),
        "/drip": lambda r: Response(200, [b"<p>slow</p>"] * 20, HTML, chunk_delay=0.2),
    }
    with LocalServer(routes) as server:
        yield server


@pytest.fixture
def browser():
    return Browser(allow_private=["127.0.0.1/32"], max_tokens=5000)


def test_browse_saved_real_page_extracts_main_text(pages, browser):
    text = browser(pages.url("/rustdoc"))
    assert text.startswith("Title: What is rustdoc? - The rustdoc book\nURL: " + pages.url("/rustdoc"))
    assert "The standard Rust distribution ships with a tool called rustdoc." in " ".join(text.split())
    assert "Using standalone Markdown files" in text and "explain all of the options that rustdoc has" in " ".join(
        text.split()
    )
    assert "$ rustdoc src/lib.rs --crate-name docs" in text  # code blocks keep their lines
    for chrome in ("localStorage", "path_to_root", "Keyboard shortcuts", "Next chapter", "Font Awesome"):
        assert chrome not in text  # scripts, help popup, nav and svg are gone


def test_browse_drops_page_chrome_and_keeps_the_article(pages, browser):
    text = browser(pages.url("/article"))
    assert "Title: Dark Orbit (film) - Filmpedia" in text
    assert "Dark Orbit is a 1987 science-fiction film directed by Marlo Vesk." in text  # inline tags stay inline
    assert "It was shot in Tavella over nine weeks." in text  # whitespace collapsed inside a paragraph
    assert "Runtime: 104 minutes\nLanguage: English" in text  # list items are lines
    for chrome in ("SCRIPT-SECRET", "font-family", "HEADER-CHROME", "NAV-LINK", "FORM-SEARCH", "ASIDE-RELATED",
                   "FOOTER-COPYRIGHT", "NOSCRIPT-TEXT"):
        assert chrome not in text


def test_browse_token_budget(pages):
    text = Browser(allow_private=True, max_tokens=12)(pages.url("/article"))
    body = text.split("\n\n", 1)[1]
    assert body.endswith("[text truncated to 12 words]")
    assert len(body.rsplit("\n", 1)[0].split()) == 12
    assert truncate_tokens("a b\nc d e\nf", 3) == ("a b\nc", True)
    assert truncate_tokens("a b\nc", 3) == ("a b\nc", False)


def test_browse_body_size_cap(pages):
    browser = Browser(allow_private=True, max_bytes=50_000, max_tokens=100_000)
    page = browser.fetch(pages.url("/big"))
    assert len(page.body) == 50_000 and page.capped
    text = browser(pages.url("/big"))
    assert "TAIL-MARKER" not in text and "only the beginning was read" in text
    assert not Browser(allow_private=True, max_bytes=10_000_000).fetch(pages.url("/big")).capped


def test_browse_total_time_limit(pages):
    with pytest.raises(BrowseError, match="took longer than 0.5 s"):
        Browser(allow_private=True, max_seconds=0.5, timeout=5)(pages.url("/drip"))


def test_browse_plain_text_and_charsets(pages, browser):
    assert browser(pages.url("/plain")).endswith("Just   plain\ntext here.")
    assert "Café Zürich" in browser(pages.url("/latin1"))
    assert "directed by Marlo Vesk" in browser(pages.url("/gzip"))  # content-encoding is decoded


@pytest.mark.parametrize("path,match", [("/pdf", "application/pdf"), ("/png", "image/png"),
                                        ("/untyped", "no Content-Type"), ("/error", "HTTP 500"),
                                        ("/missing", "HTTP 404")])
def test_browse_refuses_non_text_and_errors(pages, browser, path, match):
    with pytest.raises(BrowseError, match=match):
        browser(pages.url(path))


def test_browse_unreachable_is_a_clear_error():
    with LocalServer({}) as server:
        url = server.url("/gone")
    with pytest.raises(BrowseError, match="could not fetch"):
        Browser(allow_private=True, timeout=2)(url)


# --- web search backends ------------------------------------------------------------------------------------------


def searxng_json(query):
    """The shape of a SearXNG ``format=json`` answer (trimmed from a real instance's response)."""
    results = [
        {"url": f"https://en.wikipedia.org/wiki/{query.replace(' ', '_')}", "title": f"{query} - Wikipedia",
         "content": f"{query} is the subject of this   article.\n Second line.", "engine": "wikipedia",
         "parsed_url": ["https", "en.wikipedia.org", f"/wiki/{query}", "", "", ""], "template": "default.html",
         "engines": ["wikipedia", "duckduckgo"], "positions": [1, 2], "score": 4.0, "category": "general"},
        {"url": "https://www.britannica.com/topic/x", "title": "Britannica entry", "content": "Encyclopedia text.",
         "engine": "duckduckgo", "parsed_url": ["https", "www.britannica.com", "/topic/x", "", "", ""],
         "template": "default.html", "engines": ["duckduckgo"], "positions": [3], "score": 0.33,
         "category": "general", "publishedDate": None},
        {"url": f"https://en.wikipedia.org/wiki/{query.replace(' ', '_')}", "title": "duplicate", "content": "dup",
         "engine": "bing", "score": 0.1, "category": "general"},
        {"url": "https://example.org/third", "title": "Third", "content": "", "engine": "bing", "score": 0.2,
         "category": "general"},
    ]
    return {"query": query, "number_of_results": 1290000, "results": results, "answers": [], "corrections": [],
            "infoboxes": [], "suggestions": [f"{query} film"], "unresponsive_engines": [["google", "timeout"]]}


def serper_json(query):
    """The shape of a Serper ``/search`` answer."""
    return {
        "searchParameters": {"q": query, "gl": "us", "hl": "en", "type": "search", "num": 10, "engine": "google"},
        "answerBox": {"title": "Answer", "answer": "Tavella", "link": "https://answers.example.com/tavella"},
        "knowledgeGraph": {"title": query, "type": "Film", "description": "A film."},
        "organic": [
            {"title": f"{query} | Film", "link": "https://films.example.com/dark-orbit",
             "snippet": "Directed by Marlo Vesk.", "position": 1, "date": "Mar 3, 1987"},
            {"title": "Second", "link": "https://second.example.com/", "snippet": "More text.", "position": 2,
             "sitelinks": [{"title": "About", "link": "https://second.example.com/about"}]},
        ],
        "peopleAlsoAsk": [{"question": "Who?", "snippet": "...", "title": "t", "link": "https://q.example.com"}],
        "relatedSearches": [{"query": f"{query} cast"}],
        "credits": 1,
    }


@pytest.fixture
def cache(tmp_path):
    return WebCache(tmp_path / "cache.sqlite")


@pytest.fixture
def searxng():
    def handle(request):
        if request.query.get("format") != ["json"]:
            return Response(403, "Forbidden", {"Content-Type": "text/plain"})
        return Response(200, json.dumps(searxng_json(request.query["q"][0])), {"Content-Type": "application/json"})

    with LocalServer({"/search": handle}) as server:
        yield server


def test_searxng_results_become_passages(searxng, cache):
    retriever = SearXNGRetriever(searxng.url(""), cache=cache)
    assert isinstance(retriever, Retriever) and retriever.content_hash.startswith("searxng:")
    results = retriever.search(["Dark Orbit", "Marlo Vesk"], topk=2)
    assert [len(r) for r in results] == [2, 2]
    first = results[0][0]
    assert first == Passage(id="https://en.wikipedia.org/wiki/Dark_Orbit", title="Dark Orbit - Wikipedia",
                            text="Dark Orbit is the subject of this article. Second line.", score=-0.0)
    assert results[1][0].title == "Marlo Vesk - Wikipedia"  # answers stay in query order
    assert [p.id for p in retriever.search(["Dark Orbit"], topk=10)[0]] == [  # duplicate URL dropped
        "https://en.wikipedia.org/wiki/Dark_Orbit", "https://www.britannica.com/topic/x", "https://example.org/third"]
    assert searxng.requests[0].query["q"] in (["Dark Orbit"], ["Marlo Vesk"])


def test_searxng_without_json_format_is_a_clear_error(searxng, cache):
    retriever = SearXNGRetriever(searxng.url(""), cache=cache)
    retriever.params["format"] = "html"
    with pytest.raises(RetrieverError, match="HTTP 403.*settings.yml"):
        retriever.search(["x"], 3)


def test_serper_client(monkeypatch, cache):
    def handle(request):
        if request.method != "POST" or request.headers.get("X-API-KEY") != "test-key":
            return Response(403, json.dumps({"message": "Unauthorized.", "statusCode": 403}))
        body = json.loads(request.body)
        return Response(200, json.dumps(serper_json(body["q"])), {"Content-Type": "application/json"})

    monkeypatch.setenv("SERPER_API_KEY", "test-key")
    with LocalServer({"/search": handle}) as server:
        retriever = SerperRetriever(base_url=server.url(""), cache=cache)
        [results] = retriever.search(["Dark Orbit"], topk=3)
        assert [p.id for p in results] == ["https://answers.example.com/tavella",
                                           "https://films.example.com/dark-orbit", "https://second.example.com/"]
        assert results[0].text == "Tavella" and results[1].text == "Directed by Marlo Vesk."
        assert json.loads(server.requests[0].body)["q"] == "Dark Orbit"
        monkeypatch.setenv("OTHER_KEY", "wrong")
        with pytest.raises(RetrieverError, match="HTTP 403.*API key"):
            SerperRetriever("OTHER_KEY", base_url=server.url(""), cache=None).search(["q"], 3)


def test_serper_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    with pytest.raises(RetrieverError, match="SERPER_API_KEY"):
        SerperRetriever()


def test_cache_hit_and_expiry(searxng, tmp_path):
    cache = WebCache(tmp_path / "c.sqlite", ttl=3600)
    retriever = SearXNGRetriever(searxng.url(""), cache=cache)
    first = retriever.search(["Dark Orbit"], 3)
    assert retriever.search(["Dark Orbit"], 3) == first and len(searxng.requests) == 1  # served from the cache
    retriever.search(["Dark Orbit"], 2)
    assert len(searxng.requests) == 2  # a different topk is a different entry
    with sqlite3.connect(cache.path) as db:  # age every entry past the TTL
        db.execute("UPDATE answers SET created = created - 7200")
    assert retriever.search(["Dark Orbit"], 3) == first and len(searxng.requests) == 3
    # a new retriever on the same file reuses it (a disk cache, not a memory one)
    SearXNGRetriever(searxng.url(""), cache=WebCache(cache.path)).search(["Dark Orbit"], 3)
    assert len(searxng.requests) == 3


@pytest.mark.parametrize("content", [b"not a database " * 100, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_corrupt_cache_file_is_moved_aside_and_rebuilt(searxng, tmp_path, content):
    path = tmp_path / "c.sqlite"
    path.write_bytes(content)  # raised a raw sqlite3.DatabaseError without the path
    with pytest.warns(RuntimeWarning, match=f"{path} is corrupt .*moved it to {path}.corrupt-"):
        retriever = SearXNGRetriever(searxng.url(""), cache=WebCache(path))
    first = retriever.search(["Dark Orbit"], 3)
    assert retriever.search(["Dark Orbit"], 3) == first and len(searxng.requests) == 1  # the new cache works
    [aside] = tmp_path.glob("c.sqlite.corrupt-*")
    assert aside.read_bytes() == content  # kept for inspection, not deleted


def test_foreign_sqlite_file_is_moved_aside(tmp_path):
    path = tmp_path / "c.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE answers (something TEXT)")  # the name, not the columns
    with pytest.warns(RuntimeWarning, match="is corrupt"):
        cache = WebCache(path)
    cache.put("k", [1])
    assert cache.get("k") == [1]


def test_unreadable_cache_entries_are_fetched_again(searxng, tmp_path):
    cache = WebCache(tmp_path / "c.sqlite")
    retriever = SearXNGRetriever(searxng.url(""), cache=cache)
    first = retriever.search(["Dark Orbit"], 3)
    for created, value in [("yesterday", "[]"), (0, "{not json"), (float("inf"), '{"id": 1}'),
                           (float("inf"), '[{"id": 1, "title": "t", "text": "x", "score": 0}]'), (float("inf"), "7")]:
        with sqlite3.connect(cache.path) as db:  # raised raw JSON/TypeErrors
            db.execute("UPDATE answers SET created = ?, value = ?", (created, value))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # warned when the entry is unreadable; expired is silent
            assert retriever.search(["Dark Orbit"], 3) == first
    assert len(searxng.requests) == 6  # each bad entry was fetched again (and overwritten)
    assert retriever.search(["Dark Orbit"], 3) == first and len(searxng.requests) == 6


def test_read_only_cache_runs_uncached_with_a_warning(searxng, tmp_path, monkeypatch):
    path = tmp_path / "c.sqlite"
    WebCache(path).put("k", [1])
    # a read-only file (as root, chmod would not stop the writes: open it read-only instead)
    monkeypatch.setattr(WebCache, "_connect", lambda self: sqlite3.connect(f"file:{self.path}?mode=ro", uri=True))
    cache = WebCache(path)
    assert cache.get("k") == [1]  # reading still works
    with pytest.warns(RuntimeWarning, match=f"{path} cannot be used .*readonly.*without a cache"):
        SearXNGRetriever(searxng.url(""), cache=cache).search(["Dark Orbit"], 3)
    assert not cache.enabled
    SearXNGRetriever(searxng.url(""), cache=cache).search(["Dark Orbit"], 3)
    assert len(searxng.requests) == 2


def test_unwritable_cache_directory_runs_uncached_with_a_warning(searxng, tmp_path):
    (tmp_path / "file").write_text("a file where the cache directory should be")
    with pytest.warns(RuntimeWarning, match="cannot be used .*without a cache"):
        cache = WebCache(tmp_path / "file" / "web" / "c.sqlite")
    assert SearXNGRetriever(searxng.url(""), cache=cache).search(["Dark Orbit"], 3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_directory_by_permissions(searxng, tmp_path):
    WebCache(tmp_path / "c.sqlite").put("k", [1])
    tmp_path.chmod(0o555)
    (tmp_path / "c.sqlite").chmod(0o444)
    try:
        with pytest.warns(RuntimeWarning, match="without a cache"):
            cache = WebCache(tmp_path / "c.sqlite")
            SearXNGRetriever(searxng.url(""), cache=cache).search(["Dark Orbit"], 3)
    finally:
        tmp_path.chmod(0o755)


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("IGPO_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "web"
    assert WebCache().path == tmp_path / "web" / "search.sqlite" and WebCache().ttl == 7 * 24 * 3600


def _flaky(failures, retry_after="0"):
    state = {"n": 0}

    def handle(request):
        state["n"] += 1
        if state["n"] <= failures:
            return Response(429, "slow down", {"Retry-After": retry_after, "Content-Type": "text/plain"})
        return Response(200, json.dumps(searxng_json(request.query["q"][0])), {"Content-Type": "application/json"})

    return handle


def test_rate_limit_is_retried(cache):
    with LocalServer({"/search": _flaky(2)}) as server:
        results = SearXNGRetriever(server.url(""), cache=cache, max_retries=3, backoff=0.01).search(["Dark Orbit"], 2)
        assert len(results[0]) == 2 and len(server.requests) == 3


def test_retry_after_is_honoured(cache):
    with LocalServer({"/search": _flaky(1, retry_after="1")}) as server:
        start = time.monotonic()
        SearXNGRetriever(server.url(""), cache=cache, max_retries=2, backoff=0.01).search(["x"], 2)
        assert time.monotonic() - start >= 0.9 and len(server.requests) == 2


def test_rate_limit_retries_are_bounded(cache):
    with LocalServer({"/search": _flaky(100)}) as server:
        retriever = SearXNGRetriever(server.url(""), cache=cache, max_retries=2, backoff=0.01)
        with pytest.raises(RetrieverError, match="HTTP 429 .*after 2 retries"):
            retriever.search(["x"], 2)
        assert len(server.requests) == 3


def test_batch_is_concurrent(cache):
    barrier = threading.Barrier(3, timeout=10)  # only passes if three requests are in flight at once

    def handle(request):
        barrier.wait()
        return Response(200, json.dumps(searxng_json(request.query["q"][0])), {"Content-Type": "application/json"})

    with LocalServer({"/search": handle}) as server:
        retriever = SearXNGRetriever(server.url(""), cache=cache, max_workers=3, max_retries=0)
        results = retriever.search(["a", "b", "c"], 1)
        assert [r[0].title for r in results] == ["a - Wikipedia", "b - Wikipedia", "c - Wikipedia"]


def test_unreachable_search_names_the_endpoint(cache):
    with LocalServer({}) as server:
        base = server.url("")
    with pytest.raises(RetrieverError, match=f"searxng search at {base}/search failed"):
        SearXNGRetriever(base, cache=cache, max_retries=1, backoff=0.01).search(["x"], 3)


def test_repeated_queries_in_a_batch_are_fetched_once(searxng):
    retriever = SearXNGRetriever(searxng.url(""), cache=None)
    results = retriever.search(["Dark Orbit", "Marlo Vesk", "Dark Orbit", "Dark Orbit"], 2)
    assert results[0] == results[2] == results[3] != results[1]
    assert sorted(r.query["q"][0] for r in searxng.requests) == ["Dark Orbit", "Marlo Vesk"]


def test_cli_web_flags(monkeypatch, tmp_path):
    import argparse

    from igpo_envs.protocol import PROMPT_TEMPLATES, parse_action
    from igpo_envs.search.web import BROWSE_PROMPT_TEMPLATES, add_web_arguments, make_web_retriever, web_env_kwargs

    monkeypatch.setenv("IGPO_CACHE_DIR", str(tmp_path))
    parser = argparse.ArgumentParser()
    add_web_arguments(parser)
    assert web_env_kwargs(parser.parse_args([])) == {}
    args = parser.parse_args(["--web-search", "searxng:http://127.0.0.1:8888", "--browse"])
    kwargs = web_env_kwargs(args)
    assert isinstance(kwargs["retriever"], SearXNGRetriever) and kwargs["retriever"].endpoint.endswith(":8888/search")
    assert kwargs["tools"] == ("search", "browse") and isinstance(kwargs["browser"], Browser)
    assert kwargs["browser"].allow_private is False and kwargs["prompt_template"] == BROWSE_PROMPT_TEMPLATES["tag"]
    args.env_kwargs = {"protocol": "tool_call"}
    assert web_env_kwargs(args)["prompt_template"] == BROWSE_PROMPT_TEMPLATES["tool_call"]
    args.env_kwargs = {"prompt_template": "Q: {question}"}
    assert "prompt_template" not in web_env_kwargs(args)  # the user's template wins
    for protocol, template in BROWSE_PROMPT_TEMPLATES.items():
        assert "browse" in template and template != PROMPT_TEMPLATES[protocol] and "{question}" in template
    example = '<tool_call>{"name": "browse", "arguments": {"url": "https://x.org"}}</tool_call>'
    assert parse_action(example, "tool_call", ("search", "browse")).kind == "browse"
    monkeypatch.setenv("MY_SERPER", "k")
    assert isinstance(make_web_retriever("serper:MY_SERPER"), SerperRetriever)
    with pytest.raises(ValueError, match="unknown web search backend"):
        make_web_retriever("bing")
    with pytest.raises(ValueError, match="instance URL"):
        make_web_retriever("searxng")


def test_env_browse_tool_pages_and_refusals(pages, toy_items, toy_retriever):
    from igpo_envs.env import SearchQAEnv
    from igpo_envs.search.web import BROWSE_PROMPT_TEMPLATES

    for protocol, call in [("tag", "<browse> {} </browse>"),
                           ("tool_call", '<tool_call>{{"name": "browse", "arguments": {{"url": "{}"}}}}</tool_call>')]:
        env = SearchQAEnv(questions=toy_items, retriever=toy_retriever, protocol=protocol, tools=("search", "browse"),
                          browser=Browser(allow_private=["127.0.0.1/32"]),
                          prompt_template=BROWSE_PROMPT_TEMPLATES[protocol])
        prompt, _ = env.reset(options={"question_index": 0})
        assert "browse" in prompt
        observation, reward, terminated, _, _ = env.step(call.format(pages.url("/article")))
        assert "Dark Orbit is a 1987 science-fiction film directed by Marlo Vesk." in observation
        assert reward == 0.0 and not terminated
        observation, _, terminated, _, _ = env.step(call.format("http://169.254.169.254/latest/meta-data/"))
        assert "UnsafeURLError" in observation and "link-local" in observation and not terminated
        observation, _, _, _, _ = env.step(call.format(pages.url("/pdf")))
        assert "BrowseError" in observation and "application/pdf" in observation
