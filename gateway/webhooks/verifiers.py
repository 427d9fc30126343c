"""Each webhook source's verifier, bound once per process to its scheme's options and its secrets.

The sources file is read in core/sources.py (workers read it too, without secrets); only the API
verifies requests, so binding the scheme's function lives here, beside the schemes themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from core.sources import LoadedSource
from gateway.webhooks.signatures import (
    Verified,
    verify_github,
    verify_hmac,
    verify_standard,
    verify_stripe,
)

Verifier = Callable[[Mapping[str, str], bytes], Verified]


@dataclass(frozen=True)
class InboundSource(LoadedSource):
    """A source ready for requests: its config and its verifier bound to its secrets."""

    verify: Verifier = field(repr=False, kw_only=True)


def verifier(loaded: LoadedSource) -> Verifier:
    """The scheme's verifier with this source's secrets and options bound."""
    source, secrets = loaded.config, list(loaded.secrets)
    if source.scheme == "standard":
        return functools.partial(
            verify_standard, secrets=secrets, tolerance=source.tolerance or 300
        )
    if source.scheme == "stripe":
        return functools.partial(verify_stripe, secrets=secrets, tolerance=source.tolerance or 300)
    if source.scheme == "github":
        return functools.partial(verify_github, secrets=secrets)
    assert source.header is not None  # checked by Source._consistent
    return functools.partial(
        verify_hmac,
        secrets=secrets,
        header=source.header,
        algorithm=source.algorithm or "sha256",
        encoding=source.encoding or "hex",
        prefix=source.prefix or "",
        timestamp_header=source.timestamp_header,
        tolerance=source.tolerance,
        id_header=source.id_header,
    )


def inbound_sources(sources: Mapping[str, LoadedSource]) -> dict[str, InboundSource]:
    """The loaded sources, each with its verifier bound (built once, at startup)."""
    return {
        name: InboundSource(loaded.config, loaded.secrets, verify=verifier(loaded))
        for name, loaded in sources.items()
    }
