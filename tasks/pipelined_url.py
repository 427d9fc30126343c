"""Where PipelinedRedis connects, read from a Redis URL exactly as redis-py reads it.

redis-py's ``parse_url`` does the parsing, so both clients of the API agree on a URL. Every form it
accepts is honoured here (``redis://``, ``rediss://`` with its ``ssl_*`` options, ``unix://``,
username, password, db, ``client_name``); an option this connection cannot honour is refused when
the process starts, with its name, rather than silently dropped.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

# Options tuning redis-py's own pool and sockets; this connection has its own timeout, no pool.
_IGNORED = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "retry_on_timeout",
        "max_connections",
        "health_check_interval",
        "timeout",
    }
)
_TLS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)
_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


@dataclass
class Address:
    """How to reach Redis and what to say first (AUTH, SELECT, CLIENT SETNAME)."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    setup: list[tuple[Any, ...]] = field(default_factory=list)


def address_of(url: str) -> Address:
    """The Address for ``url``; ValueError naming what cannot be honoured."""
    options: dict[str, Any] = dict(parse_url(url))
    connection_class = options.pop("connection_class", None)
    address = Address()
    if connection_class is UnixDomainSocketConnection:
        address.path = str(options.pop("path"))
    else:
        address.host = str(options.pop("host", "127.0.0.1"))
        address.port = int(options.pop("port", 6379))
    tls_options = {name: options.pop(name) for name in list(options) if name in _TLS}
    if connection_class is SSLConnection:
        address.tls = _tls_context(tls_options)
        address.server_hostname = address.host
    elif tls_options:
        raise ValueError(f"Redis URL: {', '.join(sorted(tls_options))} need a rediss:// URL")
    password = options.pop("password", None)
    username = options.pop("username", None)
    if password:
        address.setup.append(("AUTH", username, password) if username else ("AUTH", password))
    elif username:
        raise ValueError("Redis URL: a username needs a password")
    db = int(options.pop("db", 0) or 0)
    if db:
        address.setup.append(("SELECT", db))
    client_name = options.pop("client_name", None)
    if client_name:
        address.setup.append(("CLIENT", "SETNAME", client_name))
    if int(options.pop("protocol", 2) or 2) != 2:
        raise ValueError("Redis URL: protocol=3 (RESP3) is not supported by the API's connection")
    unknown = sorted(name for name in options if name not in _IGNORED)
    if unknown:
        raise ValueError(f"Redis URL: option(s) not supported: {', '.join(unknown)}")
    return address


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """An SSLContext from redis-py's ``ssl_*`` URL options, with redis-py's defaults."""
    context = ssl.create_default_context(
        cafile=options.get("ssl_ca_certs"),
        capath=options.get("ssl_ca_path"),
        cadata=options.get("ssl_ca_data"),
    )
    reqs = str(options.get("ssl_cert_reqs", "required")).lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"Redis URL: ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
    check = str(options.get("ssl_check_hostname", "true")).lower() in ("1", "true", "yes")
    context.check_hostname = check and _CERT_REQS[reqs] != ssl.CERT_NONE
    context.verify_mode = _CERT_REQS[reqs]
    if options.get("ssl_certfile"):
        context.load_cert_chain(
            options["ssl_certfile"], options.get("ssl_keyfile"), options.get("ssl_password")
        )
    if options.get("ssl_min_version"):
        name = str(options["ssl_min_version"]).upper().replace(".", "_")
        try:
            context.minimum_version = ssl.TLSVersion[name]
        except KeyError:
            raise ValueError(f"Redis URL: unknown ssl_min_version {name}") from None
    if options.get("ssl_ciphers"):
        context.set_ciphers(str(options["ssl_ciphers"]))
    return context
