"""SSRF guard for the browse tool: which URLs an agent may make us fetch.

An agent's URL is untrusted input. `check_url` accepts only http(s) URLs whose host is, or resolves to, public
addresses; every other address class (loopback, private, link-local such as the 169.254.169.254 cloud metadata
service, multicast, reserved, unspecified, shared/CGNAT) is refused in every notation the resolver accepts: dotted,
short (``127.1``), decimal (``2130706433``), hex (``0x7f000001``), octal (``0177.0.0.1``), IPv6 with zone ids, and
IPv6 forms that embed an IPv4 address (``::ffff:127.0.0.1``, 6to4, Teredo, NAT64). IP literals are normalised
without any lookup; hostnames are resolved with ``getaddrinfo`` (a DNS lookup, never a connection) and *every*
address returned must pass, so a name with one public and one private record is refused.

`resolve_url` returns the checked addresses so the fetcher can connect to exactly those (no second DNS lookup, which
would let a rebinding DNS server swap in a private address between the check and the connection).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
AllowPrivate = bool | Iterable[str]

SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# NAT64 well-known prefix (RFC 6052): the low 32 bits are an IPv4 address the gateway will reach.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeURLError(ValueError):
    """The browse tool refuses this URL (bad scheme, or a host that is or resolves to a non-public address)."""


@dataclass(frozen=True)
class ResolvedURL:
    """A URL that passed `check_url`: its parts and the addresses its host was checked at."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def _parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` denotes if it is an IP literal in any notation the C resolver accepts, else None."""
    try:
        return ipaddress.ip_address(host)  # canonical IPv4, and IPv6 including "%zone" scope ids
    except ValueError:
        pass
    try:
        # inet_aton accepts the legacy forms that getaddrinfo and browsers also accept without DNS:
        # "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "0x7f.0.0.1".
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo client/server, NAT64)."""
    embedded = []
    if address.ipv4_mapped is not None:
        embedded.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        embedded.append(address.sixtofour)
    if address.teredo is not None:
        embedded.extend(address.teredo)
    if address in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return embedded


def address_problem(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address (e.g. "loopback"), or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket: judge the IPv4 address itself.
        problem = address_problem(address.ipv4_mapped)
        return problem and f"{problem}: it embeds the IPv4 address {address.ipv4_mapped}"
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(address):
            if problem := address_problem(inner):
                return f"{problem}: it embeds the IPv4 address {inner}"
    for label in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved", "site_local"):
        if getattr(address, f"is_{label}", False):
            return label.replace("_", "-")
    if not address.is_global:  # e.g. 100.64.0.0/10 shared address space (carrier-grade NAT)
        return "non-global"
    return None


def _allowed_networks(allow_private: AllowPrivate) -> list[IPNetwork] | None:
    """None = check everything; [] never happens; a list = these non-public networks are allowed."""
    if allow_private is True:
        return [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    if allow_private is False or allow_private is None:
        return None
    if isinstance(allow_private, str):
        allow_private = [allow_private]
    try:
        return [ipaddress.ip_network(net, strict=False) for net in allow_private]
    except ValueError as exc:
        raise ValueError(f"allow_private must be a bool or a list of networks like '127.0.0.0/8': {exc}") from None


def _split_host(url: str) -> tuple[str, str, int]:
    if not isinstance(url, str):
        raise UnsafeURLError(f"URL must be a string, got {type(url).__name__}")
    if any(ch.isspace() or ord(ch) < 32 or ch == "\\" for ch in url):
        # Parsers disagree on backslashes and embedded whitespace; such URLs are never needed, so refuse them.
        raise UnsafeURLError(f"URL contains whitespace, control characters or backslashes: {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"malformed URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        what = scheme or "a URL without a scheme"
        raise UnsafeURLError(f"only http and https URLs can be browsed, not {what}: {url!r}")
    host = unquote(parts.hostname or "")  # hostname drops userinfo ("user@"), brackets and case
    if not host:
        raise UnsafeURLError(f"URL has no host: {url!r}")
    return scheme, host.rstrip("."), port if port is not None else _DEFAULT_PORTS[scheme]


def _check_address(address: IPAddress, allowed: list[IPNetwork] | None, url: str, host: str, literal: bool) -> None:
    problem = address_problem(address)
    if problem is None:
        return
    plain = ipaddress.ip_address(str(address).split("%")[0])
    if allowed is not None and any(plain.version == net.version and plain in net for net in allowed):
        return
    how = "is the IP address" if literal else "resolves to"
    raise UnsafeURLError(f"refusing to browse {url!r}: host {host!r} {how} {address}, which is not public ({problem})")


def resolve_url(url: str, *, allow_private: AllowPrivate = False) -> ResolvedURL:
    """Check ``url`` like `check_url` and return the addresses it was checked at (literal, or every DNS answer).

    ``allow_private=True`` allows every address (local testing); a list of networks (``["127.0.0.0/8"]``) allows only
    those non-public ranges, so a test server on 127.0.0.1 can be browsed while redirects elsewhere are still refused.
    """
    allowed = _allowed_networks(allow_private)
    scheme, host, port = _split_host(url)
    literal = _parse_ip_literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UnsafeURLError(f"cannot resolve host {host!r} of {url!r}: {exc}") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise UnsafeURLError(f"host {host!r} of {url!r} resolved to no address")
    for address in addresses:
        _check_address(address, allowed, url, host, literal is not None)
    unique = tuple(dict.fromkeys(str(a) for a in addresses))
    return ResolvedURL(url=url, scheme=scheme, host=host, port=port, addresses=unique)


def check_url(url: str, *, allow_private: AllowPrivate = False) -> None:
    """Raise `UnsafeURLError` if the browse tool must refuse ``url``; return None if it may be fetched.

    Only http and https; the host (parsed with urllib, so ``http://good.com@127.0.0.1/`` is host 127.0.0.1) must be
    or resolve to public addresses only. Makes no connection: at most one DNS lookup.
    """
    resolve_url(url, allow_private=allow_private)
