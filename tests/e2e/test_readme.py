"""The README as a user reads it: its links stay inside the repository, and every command of
"Try it" and of the email, LLM and file examples runs as printed, in bash, against a live
`gateway dev`.

Substituted, as a user would: the port (a free one instead of 8000), photo.jpg (made here). The LLM
server is the repository's OpenAI-compatible stub at LLM_BASE_URL. A status command is re-run, as a
user re-runs it, until its status is final; it must then be the one the README's comment shows.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from gateway.embedded import free_port
from tests.conftest import ROOT, api_ready, wait_for
from tests.handlers.llm_stub import LlmStub

README = (ROOT / "README.md").read_text()
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FINAL = ("succeeded", "failed", "dead", "completed")


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of ``markdown``."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return found


@pytest.mark.parametrize(
    "doc", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]
)
def test_every_link_resolves_inside_the_repository(doc: str) -> None:
    path = ROOT / doc if doc == "README.md" else ROOT / "docs" / doc
    text = path.read_text()
    for target in LINK.findall(text):
        assert "://" not in target, f"{doc} links outside the repository: {target}"
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        assert resolved.is_relative_to(ROOT), f"{doc}: {target} leaves the repository"
        assert resolved.exists(), f"{doc}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved.read_text()), f"{doc}: no heading for #{anchor}"


def test_the_design_page_is_linked_from_the_readme() -> None:
    assert "](docs/design.md)" in README
    assert "../shared" not in README


def section(title: str) -> str:
    """The README's text under ``## title``, up to the next ``## `` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def bash_blocks(text: str) -> list[str]:
    """The ```bash blocks of ``text``, unindented (list items indent theirs)."""
    blocks = re.findall(r"^( *)```bash\n(.*?)^\1```", text, re.M | re.S)
    return ["\n".join(line[len(indent) :] for line in body.splitlines()) for indent, body in blocks]


@dataclass
class Command:
    """One shell command of a block, and the comment lines printed after it (its output)."""

    text: str
    comment: str


def commands(block: str) -> list[Command]:
    """Split a block into commands: backslash continuations and open quotes join lines."""
    found: list[Command] = []
    pending = ""
    attach = False  # comment lines right below a command describe its output
    for line in block.splitlines():
        if not pending and line.lstrip().startswith("#"):
            if attach:
                found[-1].comment += line.lstrip("# ") + "\n"
            continue
        if not pending and not line.strip():
            attach = False
            continue
        pending += line + "\n"
        if line.endswith("\\"):
            continue
        try:
            shlex.split(pending.replace("\\\n", " "), comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        found.append(Command(pending.rstrip("\n"), ""))
        pending = ""
        attach = True
    assert not pending, f"unfinished command: {pending}"
    return found


class Shell:
    """One bash, as in a terminal: variables set by one command are there for the next."""

    def __init__(self, cwd: Path) -> None:
        # stderr apart, as a terminal keeps it: curl draws its progress meter there when its
        # output is not a terminal
        self.stderr = cwd / "stderr.log"
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                ["bash", "--noprofile", "--norc"],
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run ``command``; its exit status and output."""
        assert self.proc.stdin and self.proc.stdout
        marker = "__readme_done__"
        self.proc.stdin.write(f"{command}\nprintf '\\n{marker} %s\\n' $?\n".encode())
        self.proc.stdin.flush()
        out = b""
        fd = self.proc.stdout.fileno()
        while (found := re.search(rf"\n{marker} (\d+)\n".encode(), out)) is None:
            ready, _, _ = select.select([fd], [], [], timeout)
            assert ready, f"no answer within {timeout}s from: {command}\n{out.decode()}"
            chunk = os.read(fd, 65536)
            assert chunk, f"bash exited during: {command}\n{out.decode()}\n{self.errors()}"
            out += chunk
        return int(found.group(1)), out[: found.start()].decode()

    def errors(self) -> str:
        """What the commands wrote to stderr."""
        return self.stderr.read_text(errors="replace")[-2000:]

    def close(self) -> None:
        """End the shell."""
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


@dataclass
class Dev:
    """A running `gateway dev`: its port, data directory and log."""

    port: int
    data_dir: Path
    log: Path
    llm: LlmStub

    def output(self) -> str:
        """What gateway dev and its children printed."""
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    """`gateway dev` as README command 1 starts it: no REDIS_URL, API_KEYS or SMTP_HOST."""
    tmp = tmp_path_factory.mktemp("readme")
    port = free_port()
    unset = ("REDIS_URL", "API_KEYS", "SMTP_HOST", "SMTP_PORT", "ENVIRONMENT", "LLM_DEFAULT_MODEL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    with LlmStub(delay=0) as llm:
        env.update(DATA_DIR=str(tmp / "var"), LLM_BASE_URL=llm.base_url)
        log = tmp / "dev.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "dev", "--port", str(port)],
                cwd=tmp,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        running = Dev(port, tmp / "var", log, llm)
        try:
            wait_for(lambda: api_ready(f"http://127.0.0.1:{port}"), timeout=90)
            yield running
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{running.output()[-4000:]}") from None
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_block(dev: Dev, block: str, cwd: Path) -> list[tuple[Command, str]]:
    """Run every command of ``block`` in one shell; check each as the README describes it."""
    shell = Shell(cwd)
    ran = []
    try:
        for command in commands(block):
            text = command.text.replace("localhost:8000", f"localhost:{dev.port}")
            code, out = shell.run(text)
            assert code == 0, f"exit {code}: {command.text}\n{out}\n{shell.errors()}"
            assigned = re.match(r"(\w+)=\$\(", text)
            if assigned:  # an id taken from the answer: there must be one
                value = shell.run(f'printf %s "${assigned.group(1)}"')[1]
                assert value and value != "null", f"{command.text} gave no id"
            expected = re.findall(r'"status": "(\w+)"', command.comment)
            if expected and not assigned:  # a status shown: the final one must come
                out = wait_for(lambda t=text: final(shell.run(t)[1]), timeout=90, interval=0.5)
                answer = json.loads(out)
                assert answer["status"] == expected[-1], (command.text, out)
                if '"result": 7' in command.comment:
                    assert answer["result"] == 7
            elif out.strip().startswith("{"):  # no error shape where the README shows none
                assert "code" not in json.loads(out), (command.text, out)
            ran.append((command, out))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- gateway dev:\n{dev.output()[-3000:]}") from None
    finally:
        shell.close()
    return ran


def final(out: str) -> str | None:
    """The answer if it shows a final status, else None (run it again)."""
    try:
        status = json.loads(out).get("status")
    except ValueError:
        return None
    return out if status in FINAL else None


@pytest.mark.e2e
def test_try_it_runs_as_printed(dev: Dev, tmp_path: Path) -> None:
    (block,) = bash_blocks(section("Try it"))
    ran = run_block(dev, block, tmp_path)
    # the example's result and the echo job's status, as the user sees them in the end
    shown = [json.loads(out) for _, out in ran if out.startswith("{")]
    assert [(a["status"], a["result"]) for a in shown] == [
        ("completed", 7),
        ("succeeded", {"message": "hello", "attempt": 1}),
    ]
    assert "API key 'change-me-dev-key' is accepted" in dev.output()


@pytest.mark.e2e
def test_the_stream_example_ends_with_the_final_status(dev: Dev, tmp_path: Path) -> None:
    (block,) = bash_blocks(section("Wait for a job without polling"))
    _, (_, stream) = run_block(dev, block, tmp_path)
    events = [line for line in stream.splitlines() if line.startswith("event: ")]
    assert events[0] == "event: job" and events[-1] == "event: end", stream
    assert stream.rstrip().endswith('data: {"status":"succeeded"}'), stream


def example(kind: str) -> str:
    """The bash block of the ``kind`` example under "Email, LLM and file jobs"."""
    found = [b for b in bash_blocks(section("Email, LLM and file jobs")) if f"/v1/jobs/{kind}" in b]
    assert len(found) == 1, kind
    return found[0]


@pytest.mark.e2e
def test_the_email_example_ends_succeeded_in_the_mail_catcher(dev: Dev, tmp_path: Path) -> None:
    run_block(dev, example("email"), tmp_path)
    saved = list((dev.data_dir / "mail").glob("*.eml"))
    assert saved, dev.output()[-3000:]
    message = saved[-1].read_text()
    assert "Subject: Hi" in message and "a@example.com" in message
    line = wait_for(
        lambda: re.search(r"mail to a@example.com subject 'Hi' saved as .*\.eml", dev.output())
    )
    assert Path(line.group(0).rsplit(" ", 1)[1]).exists()


@pytest.mark.e2e
def test_the_llm_example_names_a_model_and_ends_succeeded(dev: Dev, tmp_path: Path) -> None:
    ((_, answer),) = [r for r in run_block(dev, example("llm"), tmp_path) if '"status"' in r[1]]
    result = json.loads(answer)["result"]
    assert result["model"] == "llama3.2"
    assert result["text"] == "Say hello"  # the stub echoes the prompt: it was the one asked


@pytest.mark.e2e
def test_the_file_example_uploads_then_runs_a_job_on_its_id(dev: Dev, tmp_path: Path) -> None:
    Image.new("RGB", (640, 480), (200, 30, 30)).save(tmp_path / "photo.jpg", "JPEG")
    run_block(dev, example("file"), tmp_path)
    with Image.open(tmp_path / "thumbnail.png") as thumb:
        assert thumb.format == "PNG" and max(thumb.size) <= 128
