"""Web tools for the search envs: web search backends, the ``browse`` tool, and the SSRF guard they rely on.

* `check_url` / `UnsafeURLError` (the public safety contract) live in `igpo_envs.search.url_safety`.
* `Browser` (``browser(url) -> str``) lives in `igpo_envs.search.browse`.
* `SearXNGRetriever`, `SerperRetriever` and their disk cache `WebCache` live in `igpo_envs.search.web_search`.

Typical use::

    from igpo_envs.search.web import Browser, SearXNGRetriever
    env = SearchQAEnv(..., retriever=SearXNGRetriever("http://127.0.0.1:8888"), tools=("search", "browse"),
                      browser=Browser(max_tokens=1500))
"""

from igpo_envs.protocol import PROMPT_TEMPLATES
from igpo_envs.search.browse import BrowseError, Browser, extract_text, truncate_tokens
from igpo_envs.search.url_safety import UnsafeURLError, address_problem, check_url, resolve_url
from igpo_envs.search.web_search import (
    DEFAULT_CACHE_TTL,
    SearXNGRetriever,
    SerperRetriever,
    WebCache,
    WebSearchRetriever,
    default_cache_dir,
)


def make_web_retriever(spec: str, **kwargs) -> WebSearchRetriever:
    """A web search backend from a spec: ``searxng:<base url>``, ``serper`` or ``serper:<API key env var>``."""
    name, _, argument = spec.partition(":")
    if name == "searxng":
        if not argument:
            raise ValueError("searxng needs the instance URL: --web-search searxng:http://127.0.0.1:8888")
        return SearXNGRetriever(argument, **kwargs)
    if name == "serper":
        return SerperRetriever(argument or "SERPER_API_KEY", **kwargs)
    raise ValueError(f"unknown web search backend {spec!r}; expected 'searxng:<url>', 'serper' or 'serper:<ENV_VAR>'")


def add_web_arguments(parser) -> None:
    """The ``igpo-eval`` flags that put the env on the web: a search backend and the browse tool."""
    group = parser.add_argument_group("web search and browsing")
    group.add_argument("--web-search", default=None, metavar="BACKEND",
                       help="search the web instead of a local corpus: searxng:<url>, serper (key in $SERPER_API_KEY)")
    group.add_argument("--browse", action="store_true",
                       help="give the agent the browse tool (<browse> url </browse>; public http(s) pages only)")
    group.add_argument("--browse-max-tokens", type=int, default=2000, help="words of page text per browse (2000)")


# Task prompts that also announce the browse tool (the default prompts only describe search).
_SEARCH_CALL = PROMPT_TEMPLATES["tool_call"]
_BROWSE_CALL = '<tool_call>{"name": "browse", "arguments": {"url": "the page URL"}}</tool_call>'
BROWSE_PROMPT_TEMPLATES = {
    "tag": PROMPT_TEMPLATES["tag"].replace(
        "Search as often as you need.",
        "To read a web page from the results, write <browse> its URL </browse>; its text comes back inside "
        "<information> </information>. Search and browse as often as you need.",
    ),
    "tool_call": _SEARCH_CALL.replace(
        "Call it as often as you need, one call per turn.",
        f"To read a web page from the results, call\n{_BROWSE_CALL}\nCall the tools as often as you need, one call "
        "per turn.",
    ),
}


def web_env_kwargs(args) -> dict:
    """Env arguments (``retriever``, ``tools``, ``browser``, a prompt announcing browse) for the parsed web flags.

    Returns {} when no web flag is set; a ``prompt_template`` given in ``--env-kwargs`` is left alone.
    """
    kwargs: dict = {}
    if getattr(args, "web_search", None):
        kwargs["retriever"] = make_web_retriever(args.web_search)
    if getattr(args, "browse", False):
        env_kwargs = getattr(args, "env_kwargs", None) or {}
        kwargs["tools"] = ("search", "browse")
        kwargs["browser"] = Browser(max_tokens=args.browse_max_tokens)
        if "prompt_template" not in env_kwargs:
            kwargs["prompt_template"] = BROWSE_PROMPT_TEMPLATES[env_kwargs.get("protocol", "tag")]
    return kwargs


__all__ = [
    "BROWSE_PROMPT_TEMPLATES",
    "add_web_arguments",
    "make_web_retriever",
    "web_env_kwargs",
    "DEFAULT_CACHE_TTL",
    "Browser",
    "BrowseError",
    "SearXNGRetriever",
    "SerperRetriever",
    "UnsafeURLError",
    "WebCache",
    "WebSearchRetriever",
    "address_problem",
    "check_url",
    "default_cache_dir",
    "extract_text",
    "resolve_url",
    "truncate_tokens",
]
