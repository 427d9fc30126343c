"""The operator console at /console: server-rendered pages for queues, dead letters and jobs.

Why this shape:

- Server-rendered Jinja2 templates with autoescape on: every value a caller or a third party
  supplied (payloads, errors, URLs) reaches the page through one escaping path, and the pages
  work without JavaScript. Jinja2 is the template engine Starlette and FastAPI document.
- One small vanilla script (static/console.js, no framework, no CDN, no build step) for what must
  change without a reload: the overview listens to a server-sent events stream and sets cells'
  textContent, never innerHTML. SSE rather than polling or WebSockets: one long GET, reconnects
  built into the browser's EventSource, plain HTTP through any proxy, and it is what the job
  progress stream of issue 14 will use too. htmx was considered and left out: the live parts are
  one table, and plain forms do every action. The overview's chart is SVG drawn on the server
  (chart.py) and redrawn from the same stream by static/overview_chart.js: no chart library.
  The jobs page's rows follow their jobs from a stream of their own (jobs.py, static/jobs.js).
- A Content-Security-Policy without 'unsafe-inline' on every response (web.py): even if escaping
  failed somewhere, an injected <script> or onerror= would not run.
- Sign-in with an admin key (session.py): the key is checked once, then a random session id in an
  HttpOnly, SameSite=Strict cookie names a record in Redis (with its CSRF token) that expires.

Routes go onto the app itself, like the API's (gateway/main.py says why).
"""

from __future__ import annotations

from fastapi import FastAPI

from gateway.console import dead_letters, endpoints, events, job_live, jobs, pages


def install(app: FastAPI) -> None:
    """Serve the console under /console on ``app`` (admins: ``app.state.admin_key_hashes``)."""
    app.router.routes.extend(dead_letters.router.routes)
    app.router.routes.extend(endpoints.router.routes)
    # before pages: /console/jobs and /console/jobs/stream, not pages' /console/jobs/{job_id}
    app.router.routes.extend(jobs.router.routes)
    app.router.routes.extend(events.router.routes)
    # the job page's live stream, /console/jobs/{id}/stream (job_live.py)
    app.router.routes.extend(job_live.router.routes)
    # pages last: it ends with the catch-all that answers unknown /console paths
    app.router.routes.extend(pages.router.routes)
