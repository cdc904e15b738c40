"""SSRF rules of the browse tool: `check_url` refuses every non-public target, in any notation, before connecting.

No test here sends traffic anywhere but the test's own server on 127.0.0.1: every socket connect is intercepted and
fails the test if it targets anything else, and DNS answers for test host names come from a fake resolver.
"""

import socket

import pytest
from local_http import LocalServer, Response

from igpo_envs.search.web import BrowseError, Browser, UnsafeURLError, check_url, resolve_url

_real_getaddrinfo = socket.getaddrinfo

# Test host names and the DNS answers the fake resolver gives them.
FAKE_DNS = {
    "public.test": ["93.184.216.34"],
    "public6.test": ["2606:2800:220:1:248:1893:25c8:1946"],
    "intranet.test": ["10.1.2.3"],
    "metadata.test": ["169.254.169.254"],
    "loopback6.test": ["::1"],
    "mixed.test": ["93.184.216.34", "192.168.0.10"],  # one public, one private record: refused
    "mapped.test": ["::ffff:10.0.0.1"],
}


def _addrinfo(address, port):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sockaddr = (address, port or 0, 0, 0) if family == socket.AF_INET6 else (address, port or 0)
    return (family, socket.SOCK_STREAM, 6, "", sockaddr)


@pytest.fixture(autouse=True)
def no_outside_traffic(monkeypatch):
    """Fail on any connection except to 127.0.0.1; answer DNS for the test names; record connections."""
    connections = []
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        connections.append(address)
        if address[0] != "127.0.0.1":
            pytest.fail(f"a connection to {address} was attempted")
        return real_connect(sock, address)

    def fake_getaddrinfo(host, port, *args, **kwargs):
        if host in FAKE_DNS:
            return [_addrinfo(a, port) for a in FAKE_DNS[host]]
        if host == "localhost" or _is_numeric(host):
            return _real_getaddrinfo(host, port, *args, **kwargs)  # /etc/hosts or a literal: no network
        raise socket.gaierror(socket.EAI_NONAME, f"test resolver: unknown host {host}")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    return connections


def _is_numeric(host):
    try:
        _real_getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
        return True
    except socket.gaierror:
        return False


REFUSED = [
    # schemes
    ("file:///etc/passwd", "only http and https"),
    ("ftp://public.test/file", "only http and https"),
    ("gopher://public.test/", "only http and https"),
    ("javascript:alert(1)", "only http and https"),
    ("//public.test/no-scheme", "only http and https"),
    ("http:///no-host", "no host"),
    # IPv4 loopback in every notation
    ("http://127.0.0.1/", "loopback"),
    ("http://127.0.0.1:8080/admin", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://127.0.1/", "loopback"),
    ("http://2130706433/", "loopback"),  # decimal integer
    ("http://0x7f000001/", "loopback"),  # hex integer
    ("http://0x7f.0x0.0x0.0x1/", "loopback"),  # hex octets
    ("http://0177.0.0.1/", "loopback"),  # octal
    ("http://017700000001/", "loopback"),  # octal integer
    ("http://127.0.0.1./", "loopback"),  # trailing dot
    # other non-public IPv4 ranges
    ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
    ("http://0xa9fea9fe/", "link-local"),  # metadata, hex
    ("http://2852039166/", "link-local"),  # metadata, decimal
    ("http://10.0.0.1/", "private"),
    ("http://012.0.0.1/", "private"),  # octal 10.0.0.1
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://100.64.0.1/", "non-global"),  # carrier-grade NAT
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "not public"),
    ("http://255.255.255.255/", "not public"),
    # IPv6 literals
    ("http://[::1]/", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]:8000/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[::1%25lo]/", "loopback"),  # zone id
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[fc00::1]/", "private"),  # unique local
    ("http://[ff02::1]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "127.0.0.1"),  # IPv4-mapped
    ("http://[::ffff:7f00:1]/", "127.0.0.1"),
    ("http://[::ffff:169.254.169.254]/", "169.254.169.254"),
    ("http://[::ffff:10.0.0.1]/", "10.0.0.1"),
    ("http://[2002:7f00:1::]/", "127.0.0.1"),  # 6to4 around loopback
    ("http://[2002:a00:1::1]/", "10.0.0.1"),  # 6to4 around 10.0.0.1
    ("http://[64:ff9b::a9fe:a9fe]/", "169.254.169.254"),  # NAT64 around metadata
    ("http://[::127.0.0.1]/", "not public"),  # IPv4-compatible (deprecated)
    # userinfo and parser tricks
    ("http://public.test@127.0.0.1/", "loopback"),
    ("http://user:pass@10.0.0.1:80/", "private"),
    ("http://public.test:80@169.254.169.254/", "link-local"),
    ("http://127.0.0.1\\@public.test/", "backslash"),
    ("http://public.test /", "whitespace"),
    ("http://[::1/", "malformed"),
    ("http://%31%32%37.0.0.1/", "loopback"),  # percent-encoded host
    ("http://\u2460\u2461\u2466.0.0.1/", "refusing|malformed|cannot resolve"),  # circled digits (NFKC -> 127)
    ("http://127.0.0.1:99999/", "malformed"),
    # host names that resolve to non-public addresses
    ("http://localhost/", "loopback"),
    ("http://LOCALHOST./x", "loopback"),
    ("http://intranet.test/", "private"),
    ("http://metadata.test/", "link-local"),
    ("http://loopback6.test/", "loopback"),
    ("http://mixed.test/", "private"),
    ("http://mapped.test/", "10.0.0.1"),
    ("http://does-not-exist.test/", "cannot resolve"),
]

ACCEPTED = [
    "http://93.184.216.34/",
    "https://8.8.8.8:8443/path?q=1#frag",
    "http://[2606:4700:4700::1111]/",
    "http://public.test/",
    "HTTPS://PUBLIC.TEST/Upper",
    "http://public6.test/",
    "http://127.0.0.1@public.test/",  # userinfo is not the host
    "http://[::ffff:8.8.8.8]/",  # mapped public address
]


@pytest.mark.parametrize("url,reason", REFUSED)
def test_refused(url, reason, no_outside_traffic):
    with pytest.raises(UnsafeURLError, match=reason.replace("[", r"\[")) as info:
        check_url(url)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnsafeURLError):  # the browse tool refuses it before connecting
        Browser()(url)
    assert no_outside_traffic == []


@pytest.mark.parametrize("url", ACCEPTED)
def test_accepted(url, no_outside_traffic):
    assert check_url(url) is None
    assert no_outside_traffic == []  # checking is a DNS lookup at most, never a connection


def test_every_resolved_address_is_returned_for_pinning():
    assert resolve_url("http://public.test:8080/").addresses == ("93.184.216.34",)
    assert resolve_url("http://public.test:8080/").port == 8080
    assert resolve_url("http://0x08080808/").addresses == ("8.8.8.8",)


def test_allow_private():
    assert check_url("http://127.0.0.1:1/", allow_private=True) is None
    assert check_url("http://intranet.test/", allow_private=True) is None
    assert check_url("http://127.0.0.1:1/", allow_private=["127.0.0.0/8"]) is None
    with pytest.raises(UnsafeURLError, match="private"):
        check_url("http://10.0.0.1/", allow_private=["127.0.0.0/8"])
    with pytest.raises(UnsafeURLError, match="only http"):
        check_url("file:///etc/passwd", allow_private=True)  # schemes are never relaxed
    with pytest.raises(ValueError, match="allow_private"):
        check_url("http://127.0.0.1/", allow_private=["not-a-network"])


# --- redirects: every hop is checked before connecting ---------------------------------------------------------


def _redirect(location, status=302):
    return lambda request: Response(status, "", {"Location": location})


REDIRECT_TARGETS = {
    "/to-metadata": "http://169.254.169.254/latest/meta-data/iam/",
    "/to-metadata-hex": "http://0xa9fea9fe/latest/",
    "/to-private": "http://10.0.0.1/admin",
    "/to-private-name": "http://intranet.test/",
    "/to-mapped": "http://[::ffff:10.0.0.1]/",
    "/to-userinfo": "http://public.test@192.168.0.1/",
    "/to-file": "file:///etc/passwd",
}


@pytest.fixture(scope="module")
def redirect_server():
    routes = {path: _redirect(target) for path, target in REDIRECT_TARGETS.items()}
    routes["/page"] = lambda r: Response(200, "<html><title>Hi</title><body><p>hello there</p></body></html>",
                                         {"Content-Type": "text/html"})
    routes["/loop"] = _redirect("/loop")
    routes["/to-page"] = _redirect("/page", 307)
    routes["/chain2"] = _redirect("/to-page", 301)
    with LocalServer(routes) as server:
        yield server


@pytest.mark.parametrize("path", sorted(REDIRECT_TARGETS))
def test_redirect_into_private_range_is_refused_before_connecting(path, redirect_server, no_outside_traffic):
    browser = Browser(allow_private=["127.0.0.1/32"])  # the test server only
    with pytest.raises(UnsafeURLError, match="refusing|only http"):
        browser(redirect_server.url(path))
    assert no_outside_traffic == [("127.0.0.1", redirect_server.port)]  # the first hop only


def test_allowed_redirects_are_followed(redirect_server, no_outside_traffic):
    text = Browser(allow_private=["127.0.0.1/32"])(redirect_server.url("/chain2"))
    assert "hello there" in text and text.startswith("Title: Hi\nURL: " + redirect_server.url("/page"))
    assert len(no_outside_traffic) == 3


def test_redirect_cap(redirect_server):
    with pytest.raises(BrowseError, match="too many redirects"):
        Browser(allow_private=True, max_redirects=3)(redirect_server.url("/loop"))
    assert Browser(allow_private=True, max_redirects=2)(redirect_server.url("/chain2"))
    with pytest.raises(BrowseError, match="too many redirects"):
        Browser(allow_private=True, max_redirects=1)(redirect_server.url("/chain2"))


def test_local_server_is_refused_by_default(redirect_server, no_outside_traffic):
    with pytest.raises(UnsafeURLError, match="loopback"):
        Browser()(redirect_server.url("/page"))
    assert no_outside_traffic == []


def test_connection_is_pinned_to_the_checked_address(redirect_server, monkeypatch, no_outside_traffic):
    """DNS rebinding: the name resolves to an allowed address at check time and to a private one afterwards."""
    answers = iter([["127.0.0.1"]] + [["10.0.0.1"]] * 10)
    fake = socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.test":
            return [_addrinfo(a, port) for a in next(answers)]
        return fake(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    text = Browser(allow_private=["127.0.0.1/32"])(f"http://rebind.test:{redirect_server.port}/page")
    assert "hello there" in text
    assert no_outside_traffic == [("127.0.0.1", redirect_server.port)]
    assert redirect_server.requests[-1].headers["Host"] == f"rebind.test:{redirect_server.port}"  # name kept
