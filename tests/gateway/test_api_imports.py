"""The API process loads the request half of the job kinds only: none of the worker's libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Celery and kombu (the worker and its broker), Pillow (file jobs), aiosmtplib (email),
# greenlet (the loop pool), aiohttp (the outbound and LLM clients' pool)
WORKER_ONLY = ("celery", "kombu", "billiard", "PIL", "aiosmtplib", "greenlet", "aiohttp")

PROBE = """
import json, sys
import gateway.main
app = gateway.main.create_app()
app.openapi()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {names!r})))
"""


def test_the_api_imports_no_worker_library() -> None:
    # a fresh interpreter: this test process has imported everything already
    probe = PROBE.format(names=set(WORKER_ONLY))
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.splitlines()[-1]) == []


def test_the_probe_sees_a_worker_library_when_one_is_loaded() -> None:
    probe = "import tasks.runners\n" + PROBE.format(names=set(WORKER_ONLY))
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = {name.split(".")[0] for name in json.loads(run.stdout.splitlines()[-1])}
    assert {"PIL", "aiosmtplib", "aiohttp"} <= loaded
