"""Consumer identity and key names: who holds which message (tasks/liveness.py, tasks/reaper.py).

Every consuming worker process has a consumer id of its own (hostname, pid and random bits: two
workers may share a Celery hostname). Its keys live next to kombu's unacked hash: same database,
same naming.
"""

from __future__ import annotations

import os
import secrets
import socket

_identity: tuple[int, str] | None = None


def consumer_id() -> str:
    """This process's consumer id (a new one after a fork)."""
    global _identity
    if _identity is None or _identity[0] != os.getpid():
        name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        _identity = (os.getpid(), name)
    return _identity[1]


class ConsumerKeys:
    """Key names, next to kombu's unacked hash (same database, same naming)."""

    def __init__(self, unacked_key: str) -> None:
        self.registry = f"{unacked_key}:consumers"
        self.missing = f"{unacked_key}:missing"
        self.lock = f"{unacked_key}:reaper"
        self.alive_prefix = f"{unacked_key}:alive:"
        self.taken_prefix = f"{unacked_key}:taken:"

    def alive(self, consumer: str) -> str:
        """The consumer's liveness key."""
        return self.alive_prefix + consumer

    def taken(self, consumer: str) -> str:
        """Hash of delivery tag -> source list, of the messages the consumer holds."""
        return self.taken_prefix + consumer
