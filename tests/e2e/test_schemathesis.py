"""schemathesis against the live API (`gateway api`, real Redis) and its own /openapi.json: over a
thousand generated requests, valid and invalid, and not one server error; every answer matches
the schema (status codes, content types, headers, bodies: 422 is ErrorBody, not FastAPI's shape),
invalid requests are refused and valid ones accepted (declared constraints are the enforced ones).

allow_header_conformance is left out: POST /v1/jobs/{kind} and GET /v1/jobs/{job_id} share one
URL shape, so a 405's Allow rightly names both methods, which a per-template check calls extra.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.embedded import free_port
from tests.conftest import API_KEY, Processes, api_ready, process_env, wait_for

MIN_CASES = 1000


@pytest.fixture
def own_api(quiet_redis_url: str, prefix: str, tmp_path: Path) -> Iterator[str]:
    """`gateway api` of this test's own: the files it is sent land in its temporary directory."""
    procs = Processes(tmp_path)
    port = free_port()
    env = process_env(quiet_redis_url, prefix, DATA_DIR=str(tmp_path / "data"))
    procs.start(["api", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        yield base
    finally:
        procs.stop()


@pytest.mark.timeout(240)
def test_the_api_matches_its_openapi_under_generated_requests(own_api: str, tmp_path: Path) -> None:
    live_api = own_api
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{live_api}/openapi.json",
        "--header",
        f"Authorization: Bearer {API_KEY}",
        "--checks",
        "all",
        "--exclude-checks",
        "allow_header_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "80",
        "--workers",
        "2",
        "--seed",
        "20261201",
        "--request-timeout",
        "10",
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=220)
    output = run.stdout + run.stderr

    assert run.returncode == 0, output[-8000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated and int(generated.group(1)) >= MIN_CASES, output[-3000:]
