"""schemathesis against the live API (`gateway api`, real Redis) and its own /openapi.json: over a
thousand generated requests, valid and invalid, and not one server error; every answer matches
the schema (status codes, content types, headers, bodies: 422 is ErrorBody, not FastAPI's shape),
invalid requests are refused and valid ones accepted (declared constraints are the enforced ones),
and a 405's Allow names the methods the document gives the URL.

Job submissions (POST /v1/jobs/{echo,email,llm,file}) are fuzzed with their kinds' real request
schemas, with two allowances, both about what JSON Schema cannot say about a pydantic model:
schema-valid data may still be refused (400/422) for rules it cannot state (an RFC 5322 address, a
callback_url the outbound policy accepts, base64 that decodes), and schema-invalid data may be
taken (202) where pydantic's lax mode converts it (0/1 for a bool, "5" or 5.0 for an int), as the
API always has. Every other check holds there too: never a 5xx, every answer as documented.
Endpoints (/v1/endpoints...) have the first allowance too: a URL the outbound policy refuses (400),
an extra header the gateway sets itself (422), an id that names no endpoint (404).
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

CONFIG = """
[[operations]]
include-path-regex = "^/v1/jobs/(echo|email|llm|file)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "409", "422"]
checks.negative_data_rejection.expected-statuses = ["202", "400", "401", "409", "413", "415", "422"]

[[operations]]
include-path-regex = "^/v1/endpoints"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "422"]

[[operations]]
include-path-regex = "/stream$"
# a job's event stream lasts until the job is final, and no worker runs here: read its first event
max-stream-events = 1
"""


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
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{live_api}/openapi.json",
        "--header",
        f"Authorization: Bearer {API_KEY}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "80",
        # one thread: CPython 3.11.7's ast.parse is not safe across threads, and hypothesis parses
        # lambdas' source while describing strategies ("AST constructor recursion depth
        # mismatch" in the full run); the suite runs in two processes anyway
        "--workers",
        "1",
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
