"""The API's start-up check of every webhook destination against the outbound guard, by address.

The sources loader (core/sources.py) checks each URL's shape without the network; this resolves
them, so it runs once in the API's lifespan, not in every process that reads the file.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.sources import LoadedSource, SourcesError
from handlers.outbound import OutboundPolicy, UrlRejected, check_url, redact_url


async def check_destinations(sources: Mapping[str, LoadedSource], policy: OutboundPolicy) -> None:
    """Refuse destinations that resolve to blocked addresses (the guard checks again on connect).

    A name that does not resolve yet is allowed: DNS may come up after the gateway does, and a
    delivery to it fails visibly and is retried.
    """
    for name, loaded in sources.items():
        for route in loaded.config.routes:
            for url in route.urls():
                try:
                    await check_url(url, policy)
                except UrlRejected as exc:
                    if exc.code != "url_unresolvable":
                        raise SourcesError(
                            f"source {name!r}: {redact_url(url)} refused ({exc.code}: {exc.detail})"
                        ) from None
