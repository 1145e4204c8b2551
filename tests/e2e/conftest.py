"""Fixtures for the stock-SDK suite: one real envd per session, SDK in debug mode.

`tests/run` builds envd and sets ENVD_BIN. The session fixture starts that binary
on a free 127.0.0.1 port, waits for `GET /health` == 204 and points the SDK at it
through its own environment variables (E2B_DEBUG, E2B_SANDBOX_URL): in debug mode
`Sandbox.create()` makes no REST call and talks to envd directly. Nothing stands
in for envd.

Run by hand (as root, with a login user `user`):
    ENVD_BIN=path/to/envd python -m pytest        # from tests/e2e, inside a venv
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Iterator, Optional

import pytest
from e2b import Sandbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from testkit import die_with_parent, free_port, poll_health, show_log_tail  # noqa: E402

API_KEY = "e2b_0123456789abcdef0123456789abcdef01234567"
DEFAULT_USER = "user"
HEALTH_DEADLINE_S = 30.0

_envd_log: Optional[Path] = None


@dataclass
class Envd:
    """The running envd under test."""

    url: str
    proc: subprocess.Popen
    log: Path

    def http(self, method: str, path: str, body: Optional[bytes] = None,
             headers: Optional[dict] = None) -> tuple[int, Message, bytes]:
        """A plain HTTP request to envd (no SDK). Returns (status, headers, body);
        header lookups on the result are case-insensitive."""
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                return res.status, res.headers, res.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def init(self, **fields) -> None:
        """POST /init (what the orchestrator does); asserts 204."""
        status, _, body = self.http("POST", "/init", json.dumps(fields).encode(),
                                    {"Content-Type": "application/json"})
        assert status == 204, f"/init answered {status}: {body!r}"


def _descendants(root: int) -> list[int]:
    """PIDs of every live descendant of `root` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    problem = poll_health(url + "/health", 204, proc, HEALTH_DEADLINE_S)
    if problem:
        pytest.fail(f"envd {problem}:\n{log.read_text(errors='replace')}", pytrace=False)


def _stop(proc: subprocess.Popen) -> None:
    kids = _descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Processes envd started for the tests must not outlive the session.
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def envd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Envd]:
    global _envd_log
    binary = os.environ.get("ENVD_BIN")
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail(f"ENVD_BIN must name the envd binary (got {binary!r}); "
                    "run the suite through tests/run", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the suite runs envd as root (it switches to the `user` account)",
                    pytrace=False)
    try:
        pwd.getpwnam(DEFAULT_USER)
    except KeyError:
        pytest.fail(f"login user {DEFAULT_USER!r} is missing (tests/run creates it)",
                    pytrace=False)

    log_dir = Path(os.environ.get("ENVD_LOG_DIR") or tmp_path_factory.mktemp("envd"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "envd.log"
    _envd_log = log

    for attempt in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [binary, "--listen", f"127.0.0.1:{port}"],
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info,envd=debug")},
                start_new_session=True, umask=0o022, preexec_fn=die_with_parent,
            )
        try:
            _wait_healthy(url, proc, log)
            break
        except pytest.fail.Exception:
            _stop(proc)
            # Another process may have taken the port between probe and bind.
            if attempt == 2 or "bind" not in log.read_text(errors="replace"):
                raise

    saved = {k: v for k, v in os.environ.items() if k.startswith("E2B_")}
    for k in saved:
        del os.environ[k]
    os.environ.update({
        "E2B_DEBUG": "true",
        "E2B_SANDBOX_URL": url,
        "E2B_API_KEY": API_KEY,
    })
    try:
        yield Envd(url=url, proc=proc, log=log)
    finally:
        for k in [k for k in os.environ if k.startswith("E2B_")]:
            del os.environ[k]
        os.environ.update(saved)
        _stop(proc)


@pytest.fixture(scope="session")
def base_dir(envd: Envd) -> Iterator[str]:
    """A fresh directory in the default user's home for this session's files."""
    user = pwd.getpwnam(DEFAULT_USER)
    path = Path(user.pw_dir) / f"e2e-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    os.chown(path, user.pw_uid, user.pw_gid)
    yield str(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def workdir(base_dir: str, request: pytest.FixtureRequest) -> str:
    """A not-yet-existing path unique to the test, under the session directory."""
    return f"{base_dir}/{request.node.name.replace('[', '_').replace(']', '')}"


@pytest.fixture
def sbx(envd: Envd) -> Sandbox:
    """A stock-SDK sandbox handle in debug mode (no REST call, envd direct)."""
    return Sandbox.create()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """On failure, show the tail of envd's log (the full file stays on disk)."""
    stats = terminalreporter.stats
    if _envd_log is not None and (stats.get("failed") or stats.get("error")):
        show_log_tail(terminalreporter, "envd log", _envd_log, 150)
