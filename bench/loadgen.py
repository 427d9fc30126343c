"""A small HTTP/1.1 load generator on raw asyncio sockets, for when `wrk` is missing, for signed
webhooks (a fresh Standard Webhooks signature per request, which wrk's Lua cannot compute), and
for constant-rate runs (`--rate`, wrk2-style: latency is counted from when a request was *due*, so
a stalled server is not hidden by the client waiting politely).

Run it in its own process (bench_ingest.py does), so it does not share an interpreter with the
server:  python bench/loadgen.py --port 8000 --path /v1/jobs/echo --body-file body.json \
             --header 'Authorization: Bearer k' --connections 64 --duration 10 --warmup 2
Prints one JSON object: requests, seconds, rps, p50_ms, p99_ms, max_ms, non2xx, errors.

Bounded: it stops at warm-up + duration seconds or after --max-requests, whichever comes first.
Keep-alive, one request in flight per connection, no pipelining.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
import uuid
from pathlib import Path


def standard_webhooks_headers(key: bytes, body: bytes) -> list[tuple[str, str]]:
    """webhook-id / -timestamp / -signature for ``body`` (Standard Webhooks, HMAC-SHA256)."""
    msg_id = f"msg_{uuid.uuid4().hex}"
    ts = str(int(time.time()))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    sig = "v1," + base64.b64encode(mac).decode()
    return [("webhook-id", msg_id), ("webhook-timestamp", ts), ("webhook-signature", sig)]


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    encoded = secret.removeprefix("whsec_").strip()
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


class RequestFactory:
    """Request bytes: fixed, or freshly signed for every request."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        body: bytes,
        headers: list[tuple[str, str]],
        sign_key: bytes | None,
    ) -> None:
        self.body = body
        self.sign_key = sign_key
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
        head += [f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers]
        self.head = "\r\n".join(head)
        self.fixed = (self.head + "\r\n\r\n").encode() + body

    def __call__(self) -> bytes:
        if self.sign_key is None:
            return self.fixed
        extra = "".join(
            f"\r\n{k}: {v}" for k, v in standard_webhooks_headers(self.sign_key, self.body)
        )
        return (self.head + extra + "\r\n\r\n").encode() + self.body


class Conn(asyncio.Protocol):
    """One keep-alive connection; resolves a future with the status of each response."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionResetError("closed by server")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            self.waiter.set_exception(RuntimeError("response without Content-Length"))
            return
        total = end + 4 + length
        if len(self.buf) < total:
            return
        del self.buf[:total]
        self.waiter.set_result(status)

    async def request(self, data: bytes) -> int:
        if self.lost is not None or self.transport is None:
            raise ConnectionResetError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []  # seconds, measured window only
        self.non2xx = 0
        self.errors = 0
        self.sent = 0


async def worker(
    idx: int,
    args: argparse.Namespace,
    make: RequestFactory,
    stats: Stats,
    t_measure: float,
    t_end: float,
) -> None:
    loop = asyncio.get_running_loop()
    conn: Conn | None = None
    interval = args.connections / args.rate if args.rate else 0.0
    due = time.perf_counter() + (idx * interval / args.connections if interval else 0.0)
    while stats.sent < args.max_requests:
        if interval:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        start = due if interval else time.perf_counter()
        if start >= t_end:
            break
        if conn is None or conn.lost is not None:
            try:
                _, conn = await loop.create_connection(Conn, args.host, args.port)
            except OSError:
                stats.errors += 1
                conn = None
                await asyncio.sleep(0.01)
                continue
        stats.sent += 1
        try:
            status = await asyncio.wait_for(conn.request(make()), args.timeout)
        except (OSError, RuntimeError, TimeoutError):
            if start >= t_measure:
                stats.errors += 1
            if conn.transport is not None:
                conn.transport.close()
            conn = None
            if interval:
                due += interval
            continue
        done = time.perf_counter()
        if start >= t_measure:
            stats.latencies.append(done - start)
            if not 200 <= status < 300:
                stats.non2xx += 1
        if interval:
            due += interval
    if conn is not None and conn.transport is not None:
        conn.transport.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = Path(args.body_file).read_bytes()
    headers = [tuple(part.strip() for part in h.split(":", 1)) for h in args.header]
    key = decode_secret(args.sign_secret) if args.sign_secret else None
    make = RequestFactory(args.host, args.port, args.path, body, headers, key)  # type: ignore[arg-type]
    stats = Stats()
    t0 = time.perf_counter()
    t_measure = t0 + args.warmup
    t_end = t_measure + args.duration
    tasks = [
        asyncio.create_task(worker(i, args, make, stats, t_measure, t_end))
        for i in range(args.connections)
    ]
    # hard stop: a wedged server cannot keep us here past the deadline plus one timeout
    await asyncio.wait(tasks, timeout=args.warmup + args.duration + args.timeout + 5)
    for task in tasks:
        task.cancel()
    measured = min(time.perf_counter(), t_end) - t_measure
    lat = sorted(stats.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000 if lat else float("nan")

    return {
        "requests": len(lat),
        "seconds": round(measured, 3),
        "rps": len(lat) / measured if measured > 0 else 0.0,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": lat[-1] * 1000 if lat else float("nan"),
        "non2xx": stats.non2xx,
        "errors": stats.errors,
        "rate": args.rate,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--sign-secret", help="whsec_... : sign every request (Standard Webhooks)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=0.0, help="req/s in total; 0 = closed loop")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=5_000_000)
    args = parser.parse_args()
    if args.rate and args.rate < 0:
        parser.error("--rate must be > 0")
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
