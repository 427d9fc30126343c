"""`gateway dev`, the README's first command: everything starts (embedded Redis when REDIS_URL is
unset), the example works through it, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.embedded import free_port
from tests.conftest import ROOT, api_ready, wait_for


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def assert_streams_unbuffered(base: str, auth: dict[str, str]) -> None:
    """A job's stream through the dev server: its first event comes at once, long before the job
    ends (nothing on the way buffers it), and the last says it succeeded."""
    body = {"message": "dev", "sleep_ms": 2000}
    job_id = httpx.post(f"{base}/v1/jobs/echo", json=body, headers=auth, timeout=5).json()["id"]
    arrived: list[tuple[float, str]] = []
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/stream", headers=auth, timeout=30) as sse:
        assert sse.status_code == 200
        arrived.extend((time.monotonic(), line) for line in sse.iter_lines() if line)
    first_job = next(at for at, line in arrived if line == "event: job")
    assert arrived[-2][1] == "event: end", arrived
    assert arrived[-1][1] == 'data: {"status":"succeeded"}', arrived
    assert arrived[-1][0] - first_job > 1.0, arrived


def test_dev_starts_everything_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(DATA_DIR=str(tmp_path / "var"), API_KEYS="dev-test-key")
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "dev", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(base), timeout=60)
        task_id = httpx.get(f"{base}/add/2/5", timeout=5).json()["task_id"]
        done = wait_for(
            lambda: (
                (r := httpx.get(f"{base}/result/{task_id}", timeout=5).json())["status"]
                == "completed"
                and r
            ),
            timeout=60,
        )
        assert done["result"] == 7
        assert_streams_unbuffered(base, {"Authorization": "Bearer dev-test-key"})
        tree = descendants(dev.pid)
        assert len(tree) >= 9  # redis, api, six workers, beat (and pool processes)
    except AssertionError as exc:
        dev.kill()
        raise AssertionError(f"{exc}\n{(tmp_path / 'dev.log').read_text()[-4000:]}") from None

    dev.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert dev.wait(40) == 0
    left = [pid for pid in tree if alive(pid)]
    assert not left, (left, (tmp_path / "dev.log").read_text()[-3000:])
    output = (tmp_path / "dev.log").read_text()
    # which Redis runs is said (6.2 cannot read what a 7.x wrote: README)
    assert re.search(r"embedded Redis \d+\.\d+\.\d+ at redis://127\.0\.0\.1:", output)
    # API_KEYS was set: the dev key is not accepted, and no key is printed
    assert "dev-test-key" not in output and "change-me-dev-key" not in output


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def worker_child(dev_pid: int, queue: str) -> int | None:
    """The live `gateway worker <queue>` process that `gateway dev` started."""
    for pid in descendants(dev_pid):
        if f"gateway.cli worker {queue}" in command_line(pid) and alive(pid):
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == dev_pid:
                return pid
    return None


def test_dev_restarts_a_killed_worker_and_work_still_completes(tmp_path: Path) -> None:
    port = free_port()
    unset = ("REDIS_URL", "API_KEYS", "SMTP_HOST", "ENVIRONMENT")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(DATA_DIR=str(tmp_path / "var"))
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "dev", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer change-me-dev-key"}  # API_KEYS unset: the README's key
    try:
        wait_for(lambda: api_ready(base), timeout=90)
        first = wait_for(lambda: worker_child(dev.pid, "default"), timeout=30)
        os.kill(first, signal.SIGKILL)
        wait_for(
            lambda: "worker default exited (signal SIGKILL); restarting" in log_path.read_text()
        )
        second = wait_for(lambda: worker_child(dev.pid, "default"), timeout=60)
        assert second != first and not alive(first)
        accepted = httpx.post(f"{base}/v1/jobs/echo", json={"message": "after"}, headers=auth)
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()["id"]
        done = wait_for(
            lambda: (
                (r := httpx.get(f"{base}/v1/jobs/{job}", headers=auth, timeout=5).json())["status"]
                == "succeeded"
                and r
            ),
            timeout=90,
        )
        assert done["result"]["message"] == "after"
        assert dev.poll() is None  # the stack went on
        tree = descendants(dev.pid)
    except AssertionError as exc:
        dev.kill()
        raise AssertionError(f"{exc}\n{log_path.read_text()[-4000:]}") from None
    dev.send_signal(signal.SIGINT)
    assert dev.wait(40) == 0
    left = [pid for pid in tree if alive(pid)]
    assert not left, (left, log_path.read_text()[-3000:])
    output = log_path.read_text()
    assert "API key 'change-me-dev-key' is accepted" in output
    assert "whsec_" not in output  # the dev signing secret, like every secret, is never printed
