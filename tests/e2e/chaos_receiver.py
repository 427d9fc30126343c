"""The chaos suite's callback receiver, a process of its own: an aiohttp server on loopback that
verifies every request with `standardwebhooks` and appends one JSON line per request to a file.

A process, not a thread of the test: thousands of callbacks and forwards arrive at once when it
comes back up, and a threaded server inside the test's process would share one GIL with the
client threads and slow the very deliveries being measured. Stopping it is taking it down.

    python -m tests.e2e.chaos_receiver PORT OUT_FILE DELAY_SECONDS   (secret in CHAOS_SIGNING)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from aiohttp import web
from standardwebhooks.webhooks import Webhook


def make_app(out_path: str, delay: float, secret: str) -> web.Application:
    """Answer 200 after ``delay`` s to every POST, recording (path, webhook-id, subject, ok)."""
    verifier = Webhook(secret)
    out = open(out_path, "a", buffering=1)  # open for the app's lifetime

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        line: dict[str, object] = {
            "path": request.path,
            "id": request.headers.get("webhook-id"),
            "subject": None,
        }
        try:
            payload = verifier.verify(body, dict(request.headers))
            subject = payload["event_id"] if request.path == "/fwd" else payload["data"]["id"]
            line.update(subject=str(subject), ok=True)
        except Exception as exc:  # a failure is a finding: recorded
            line.update(ok=False, error=repr(exc))
        out.write(json.dumps(line) + "\n")
        await asyncio.sleep(delay)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    return app


def main() -> None:
    """Serve until terminated."""
    port, out_path, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    app = make_app(out_path, delay, os.environ["CHAOS_SIGNING"])
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        backlog=1024,
        shutdown_timeout=1,
    )


if __name__ == "__main__":
    main()
