"""README command 1 on a fresh machine: its install alone, in a new virtualenv, then `gateway dev`.

The test extra brings packages (pytest brings `packaging`) that can hide a missing runtime
dependency, so this installs exactly what README.md's command 1 installs, read from README.md so the
two cannot drift, into an empty virtualenv built from the base interpreter, and runs the
`gateway` it installed: the example and the README's echo job must complete through it.
Needs pip to reach its index (PyPI or the configured mirror).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.embedded import free_port
from tests.conftest import ROOT, api_ready, wait_for
from tests.e2e.test_dev_command import alive, descendants

pytestmark = pytest.mark.e2e

DEV_KEY = "change-me-dev-key"


def readme_command_1() -> tuple[str, list[str]]:
    """README command 1 split into its install part (shell) and the command it then runs."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^# 1\..*?\n(?:#.*\n)*(?P<cmd>\S.*)$", text, re.MULTILINE)
    assert match, "README.md has no command 1"
    steps = match["cmd"].split(" && ")
    assert steps[-1].startswith("gateway "), steps
    return " && ".join(steps[:-1]), shlex.split(steps[-1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus this test run's virtualenv, Python path and Redis."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "REDIS_URL", "API_KEYS", "SMTP_HOST")
        and not k.startswith(("PYTEST_", "COV_"))
    }
    here = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != here)
    env.update(extra)
    return env


@pytest.mark.timeout(420)
def test_readme_command_1_alone_installs_a_gateway_dev_that_runs_the_examples(
    tmp_path: Path,
) -> None:
    install, run = readme_command_1()
    venv = tmp_path / "venv"
    # the README's `.venv` (relative to the checkout) becomes one of this test's own
    install = re.sub(r"(?<![\w/])\.venv\b", str(venv), install)
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", install],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert done.returncode == 0, f"{install}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    install_seconds = time.monotonic() - started
    # nothing of the test extra came along: the proof is about the runtime set alone
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    assert "pytest==" not in listed

    port = free_port()
    # API_KEYS and SMTP_HOST unset, as on a newcomer's machine: the dev key and mail catcher
    env = clean_env(DATA_DIR=str(tmp_path / "var"), ENVIRONMENT="dev")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(venv)
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        dev = subprocess.Popen(
            [str(venv / "bin" / run[0]), *run[1:], "--port", str(port)],
            cwd=tmp_path,  # not the checkout: no .env of the developer's, no import from cwd
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    tree: set[int] = set()
    try:
        wait_for(lambda: dev.poll() is not None or api_ready(base), timeout=60)
        assert dev.poll() is None, "gateway dev exited"
        task_id = httpx.get(f"{base}/add/2/5", timeout=5).json()["task_id"]

        def result() -> dict[str, object] | None:
            assert dev.poll() is None, "gateway dev exited"
            body: dict[str, object] = httpx.get(f"{base}/result/{task_id}", timeout=5).json()
            return body if body["status"] == "completed" else None

        assert wait_for(result, timeout=60) == {
            "task_id": task_id,
            "status": "completed",
            "result": 7,
        }

        headers = {"Authorization": f"Bearer {DEV_KEY}", "Idempotency-Key": "order-42"}
        accepted = httpx.post(
            f"{base}/v1/jobs/echo", json={"message": "hello"}, headers=headers, timeout=5
        )
        assert accepted.status_code == 202, accepted.text
        status_url = base + accepted.json()["status_url"]

        def job_final() -> dict[str, object] | None:
            assert dev.poll() is None, "gateway dev exited"
            view: dict[str, object] = httpx.get(status_url, headers=headers, timeout=5).json()
            return view if view["status"] in ("succeeded", "failed", "dead") else None

        assert wait_for(job_final, timeout=60)["status"] == "succeeded"
        tree = descendants(dev.pid)
    except Exception as exc:  # e.g. refused connections once gateway dev has stopped
        for pid in descendants(dev.pid):
            _kill(pid)
        dev.kill()
        dev.wait()
        log = log_path.read_text(errors="replace")
        raise AssertionError(f"{exc!r}\n{log[-5000:]}") from None

    dev.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert dev.wait(40) == 0, log_path.read_text(errors="replace")[-3000:]
    left = [pid for pid in tree if alive(pid)]
    assert not left, (left, log_path.read_text(errors="replace")[-3000:])
    print(f"README command 1's install took {install_seconds:.0f} s")


def _kill(pid: int) -> None:
    """SIGKILL a process this test started, if it is still there."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
