"""A TCP proxy on loopback in front of a real Redis that can lose one reply on purpose.

Armed with a predicate over commands, it forwards the first matching command to Redis, waits
until Redis starts answering (so the command surely ran), then drops both sides of that
connection without relaying the reply: what a client sees when Redis stops or the network
resets in that instant. Every other byte is relayed as is, and new connections are accepted
throughout, so the client reconnects.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

Command = list[bytes]


def parse_commands(buffer: bytearray) -> list[tuple[Command, bytes]]:
    """Take the complete RESP commands (arrays of bulk strings) off the front of ``buffer``."""
    out: list[tuple[Command, bytes]] = []
    while True:
        parsed = _parse_one(bytes(buffer))
        if parsed is None:
            return out
        command, size = parsed
        out.append((command, bytes(buffer[:size])))
        del buffer[:size]


def _parse_one(data: bytes) -> tuple[Command, int] | None:
    if not data.startswith(b"*"):
        if data:
            raise ValueError(f"not a RESP array: {data[:20]!r}")
        return None
    end = data.find(b"\r\n")
    if end < 0:
        return None
    count, pos, args = int(data[1:end]), end + 2, []
    for _ in range(count):
        end = data.find(b"\r\n", pos)
        if end < 0:
            return None
        length = int(data[pos + 1 : end])
        start = end + 2
        if len(data) < start + length + 2:
            return None
        args.append(data[start : start + length])
        pos = start + length + 2
    return args, pos


class LosingProxy:
    """Relays 127.0.0.1:<port> to Redis; ``arm(match)`` loses the reply of the next match."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.match: Callable[[Command], bool] | None = None
        self.lost = threading.Event()  # set once a reply was lost
        self.lost_command: Command | None = None

    @property
    def url(self) -> str:
        """redis:// URL through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LosingProxy:
        """Accept connections in a thread of its own."""
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def arm(self, match: Callable[[Command], bool]) -> None:
        """Lose the reply of the next command ``match`` accepts (once)."""
        with self.lock:
            self.match = match

    def close(self) -> None:
        """Stop accepting (open connections end with their peers)."""
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            losing = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, losing), daemon=True).start()
            threading.Thread(
                target=self._down, args=(upstream, client, losing), daemon=True
            ).start()

    def _take_match(self, command: Command) -> bool:
        with self.lock:
            if self.match is not None and self.match(command):
                self.match = None
                self.lost_command = command
                return True
        return False

    def _up(self, client: socket.socket, upstream: socket.socket, losing: threading.Event) -> None:
        buffer = bytearray()
        try:
            while data := client.recv(65536):
                buffer += data
                for command, raw in parse_commands(buffer):
                    if self._take_match(command):
                        losing.set()  # before the command leaves: its reply is never relayed
                    upstream.sendall(raw)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _down(
        self, upstream: socket.socket, client: socket.socket, losing: threading.Event
    ) -> None:
        try:
            while data := upstream.recv(65536):
                if losing.is_set():
                    break  # Redis ran the command and answered: the answer is lost
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)
            if losing.is_set():
                self.lost.set()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
