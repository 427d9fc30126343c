"""Where outbound requests may go: the policy, the address classifier, the submit-time check."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

import httpx
from pydantic import BaseModel, Field, field_validator

from handlers.errors import PermanentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""An async ``(host, port) -> [ip literal, ...]``; injectable so tests can play DNS."""

MIB = 1024 * 1024

# Named so a refusal says which rule fired. The ipaddress properties below back these up,
# but their exact ranges move between Python releases, so the ranges we promise are spelled out.
_BLOCKED_V4 = [
    (ipaddress.IPv4Network(net), name)
    for net, name in [
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ]
]
_BLOCKED_V6 = [
    (ipaddress.IPv6Network(net), name)
    for net, name in [
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UrlRejected(PermanentError):
    """The URL may not be requested: malformed, a scheme not allowed, or a blocked address."""

    code = "url_rejected"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail, code=code)


class OutboundPolicy(BaseModel):
    """Where outbound requests may go and how long and large they may be."""

    allow_hosts: list[str] = Field(default_factory=list)
    allow_networks: list[str] = Field(default_factory=list)
    allow_http: bool = False
    connect_timeout: float = 5
    timeout: float = 15
    max_response_bytes: int = MIB
    # Redirects are never followed: a 3xx could point anywhere, including inside the network.
    max_redirects: int = Field(default=0, ge=0, le=0)
    # None: no pool-wide cap, so 1000+ concurrent deliveries in one process never queue on the pool.
    # (aiohttp's pool keeps no separate cap on idle connections; they close after 5 s unused.)
    max_connections: int | None = None

    @field_validator("allow_hosts")
    @classmethod
    def _normalise_hosts(cls, hosts: list[str]) -> list[str]:
        return [normalise_host(h) for h in hosts]

    @field_validator("allow_networks")
    @classmethod
    def _valid_networks(cls, networks: list[str]) -> list[str]:
        for net in networks:
            ipaddress.ip_network(net, strict=False)
        return networks

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` is named in ``allow_hosts`` and so skips the address checks."""
        return normalise_host(host) in self.allow_hosts

    def address_allowed(self, ip: IPAddress) -> bool:
        """Whether ``ip`` falls inside one of ``allow_networks``."""
        ip = _unmap(ip)
        for net in self.allow_networks:
            network = ipaddress.ip_network(net, strict=False)
            if ip.version == network.version and ip in network:
                return True
        return False


def normalise_host(host: str) -> str:
    """Lower-case a hostname and drop IPv6 brackets and a trailing root dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def _unmap(ip: IPAddress) -> IPAddress:
    # The kernel dials ::ffff:a.b.c.d as plain IPv4, so judge it as the IPv4 address it is.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public destination (e.g. ``"loopback"``), or None if it is public."""
    ip = _unmap(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        # NAT64 and 6to4 carry an IPv4 destination inside; a gateway would deliver to that one.
        if ip in _NAT64:
            inner = blocked_reason(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            return f"NAT64 of {inner}" if inner else None
        if ip.sixtofour is not None and (inner := blocked_reason(ip.sixtofour)):
            return f"6to4 of {inner}"
        if ip.teredo is not None:
            return "Teredo"
        ranges: list[tuple[ipaddress.IPv4Network, str]] | list[tuple[ipaddress.IPv6Network, str]]
        ranges = _BLOCKED_V6
    else:
        ranges = _BLOCKED_V4
    for net, name in ranges:
        if ip in net:
            return name
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private or not ip.is_global:
        return "private"
    return None


def check_address(host: str, address: str, policy: OutboundPolicy) -> IPAddress:
    """Parse one resolved ``address`` of ``host`` and refuse it unless the policy allows it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise UrlRejected(
            "url_unresolvable", f"{host!r} resolved to a non-IP {address!r}"
        ) from None
    if policy.host_allowed(host) or policy.address_allowed(ip):
        return ip
    reason = blocked_reason(ip)
    if reason is not None:
        raise UrlRejected("url_blocked_address", f"{host!r} resolves to {ip} ({reason})")
    return ip


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the event loop's getaddrinfo; every address, first-answer order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_checked(
    host: str, port: int, policy: OutboundPolicy, resolver: Resolver | None
) -> list[IPAddress]:
    """Resolve ``host`` and check every answer: one blocked answer refuses the whole name."""
    host = normalise_host(host)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        # An IP literal is its own answer; asking a resolver would only give it a chance to lie.
        return [check_address(host, host, policy)]
    try:
        async with asyncio.timeout(policy.connect_timeout):
            answers = await (resolver or system_resolver)(host, port)
    except (OSError, UnicodeError, TimeoutError) as exc:
        raise UrlRejected("url_unresolvable", f"cannot resolve {host!r}: {exc}") from None
    if not answers:
        raise UrlRejected("url_unresolvable", f"{host!r} has no addresses")
    # Every answer is checked, not just the first: the connector may try any of them.
    return [check_address(host, a, policy) for a in answers]


def parse_url(url: str | httpx.URL, policy: OutboundPolicy) -> httpx.URL:
    """Check a URL's shape and scheme against the policy, without touching the network."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UrlRejected("url_invalid", f"not a valid URL: {exc}") from None
    if not parsed.scheme:
        raise UrlRejected("url_invalid", "URL is not absolute")
    if parsed.scheme not in ("http", "https"):
        raise UrlRejected("url_scheme_not_allowed", f"scheme {parsed.scheme!r} is not allowed")
    if not parsed.host:
        raise UrlRejected("url_invalid", "URL has no host")
    if parsed.userinfo:
        # Credentials in a URL end up in logs and job records; callers use headers instead.
        raise UrlRejected("url_invalid", "URL must not contain user info")
    if parsed.scheme == "http" and not policy.allow_http:
        raise UrlRejected("url_scheme_not_allowed", "plain http is not allowed; use https")
    return parsed


async def check_url(url: str, policy: OutboundPolicy, *, resolver: Resolver | None = None) -> None:
    """Refuse ``url`` at submit time unless its shape, scheme and every resolved address pass."""
    parsed = parse_url(url, policy)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = parsed.raw_host.decode("ascii")
    await resolve_checked(host, port, policy, resolver)


def redact_url(url: str | httpx.URL) -> str:
    """The URL without user info, query or fragment, which may carry tokens: safe for errors."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"
    return str(parsed.copy_with(userinfo=b"", query=None, fragment=None))
