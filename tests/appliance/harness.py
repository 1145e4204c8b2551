"""Runs a real `lelantos serve` for the appliance suite and the appliance bench.

No pytest in here (tests/bench/appliance_bench.py imports it too). One
`Appliance` owns one data dir, one port and one daemon process at a time:
`start()` creates an API key with the CLI on first use, spawns the daemon with
its stderr appended to a log file and waits for `GET /health` == 200;
`restart_daemon()` SIGTERMs it, waits for exit 0 and starts it again on the same
port and data dir (sandbox VMs keep running across that and are re-adopted);
`close()` kills every sandbox still listed, stops the daemon and removes the
data dir.

Inputs (environment):
    LELANTOS_BIN             the `lelantos` binary (required)
    LELANTOS_IMAGE_MANIFEST  guest image manifest from `lelantos-image build` (required)
    LELANTOS_TEMPLATES_DIR   template specs (default: the repo's templates.d)
    LELANTOS_LOG_DIR         where lelantos.log goes (default: a temp dir)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from testkit import die_with_parent, free_port, poll_health  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HEALTH_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0
KEY_RE = re.compile(r"\Alel_([0-9a-f]{40})\Z")
ENVD_PORT = 49983
# Sentinel: "send this appliance's own API key".
OWN_KEY = object()

class HarnessError(Exception):
    """The appliance could not be started or stopped as the contract says."""


@dataclass
class Response:
    """A plain HTTP answer; header lookups are case-insensitive."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body[:300]!r})"


@dataclass
class Appliance:
    """One `lelantos serve` under test. See the module doc."""

    binary: str
    manifest: str
    templates_dir: Path
    data_dir: Path
    log: Path
    port: int = 0
    metrics_port: int = 0  # the Prometheus listener (`--metrics-listen`)
    key: str = ""        # `e2b_<hex>`, what the SDK gets
    raw_key: str = ""    # `lel_<hex>`, what the CLI printed
    proc: Optional[subprocess.Popen] = None
    # A daemon config file (`--config`), e.g. one naming a git source.
    config: Optional[Path] = None
    starts: int = 0
    _stopped_pids: set[int] = field(default_factory=set)
    # sd_notify messages the daemon sent (we play systemd's NOTIFY_SOCKET).
    notifications: list[str] = field(default_factory=list)
    _notify_sock: Optional[socket.socket] = None

    # --- construction -------------------------------------------------------

    @classmethod
    def from_env(cls, log_dir: Optional[Path] = None) -> "Appliance":
        binary = os.environ.get("LELANTOS_BIN", "")
        if not binary or not os.access(binary, os.X_OK):
            raise HarnessError(f"LELANTOS_BIN must name the lelantos binary (got {binary!r})")
        manifest = os.environ.get("LELANTOS_IMAGE_MANIFEST", "")
        if not manifest or not os.path.isfile(manifest):
            raise HarnessError(
                f"LELANTOS_IMAGE_MANIFEST must name the guest image manifest (got {manifest!r})")
        templates = Path(os.environ.get("LELANTOS_TEMPLATES_DIR") or ROOT / "templates.d")
        if not templates.is_dir():
            raise HarnessError(f"templates dir {templates} does not exist")
        env_log_dir = os.environ.get("LELANTOS_LOG_DIR")
        if env_log_dir:
            log_dir = Path(env_log_dir)
        elif log_dir is None:
            log_dir = Path(tempfile.mkdtemp(prefix="lel-log-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        # Short path: the daemon puts unix sockets (QMP, serial) under it.
        data_dir = Path(tempfile.mkdtemp(prefix="lel-data-", dir="/tmp"))
        return cls(binary=binary, manifest=manifest, templates_dir=templates,
                   data_dir=data_dir, log=log_dir / "lelantos.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def scrape(self) -> str:
        """The daemon's Prometheus page."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            assert r.status == 200, r.status
            assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
            return r.read().decode()

    def sdk_env(self) -> dict[str, str]:
        """The E2B_* variables that point the stock SDK at this appliance."""
        return {
            "E2B_API_KEY": self.key,
            "E2B_API_URL": self.url,
            "E2B_SANDBOX_URL": self.url,
        }

    def _log_marker(self, text: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"\n===== harness: {text} ({time.strftime('%H:%M:%S')}) =====\n")

    def create_key(self, name: str = "appliance-suite") -> None:
        out = subprocess.run(
            [self.binary, "keys", "--data-dir", str(self.data_dir), "create", "--name", name],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        with open(self.log, "a") as f:
            f.write(f"$ lelantos keys create (exit {out.returncode})\n{out.stderr}")
        if out.returncode != 0:
            raise HarnessError(f"`lelantos keys create` exited {out.returncode}:\n{out.stderr}")
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        m = KEY_RE.match(lines[-1]) if lines else None
        if not m:
            raise HarnessError(f"`lelantos keys create` did not end with lel_<40 hex>:\n{out.stdout}")
        self.raw_key = lines[-1]
        self.key = "e2b_" + m.group(1)

    # --- daemon process -----------------------------------------------------

    def _notify_socket(self) -> str:
        """Binds the datagram socket systemd would offer as NOTIFY_SOCKET and
        collects what arrives on it."""
        path = str(self.data_dir / "notify.sock")
        if self._notify_sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(path)
            self._notify_sock = sock

            def collect() -> None:
                while True:
                    try:
                        data = sock.recv(4096)
                    except OSError:
                        return
                    self.notifications.extend(data.decode(errors="replace").splitlines())

            threading.Thread(target=collect, daemon=True).start()
        return path

    def _spawn(self) -> subprocess.Popen:
        self.starts += 1
        self._log_marker(f"start #{self.starts} on 127.0.0.1:{self.port}")
        argv = [
            self.binary, "serve",
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            "--templates-dir", str(self.templates_dir),
            "--image-manifest", self.manifest,
        ]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        # systemd names the watched process in WATCHDOG_PID; the shell's pid
        # is the daemon's after `exec`.
        argv = ["sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"', *argv]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"),
               "NOTIFY_SOCKET": self._notify_socket(),
               # systemd's watchdog contract: ping at least every 2 s.
               "WATCHDOG_USEC": "2000000"}
        with open(self.log, "ab") as f:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, umask=0o022, preexec_fn=die_with_parent,
            )

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        problem = poll_health(self.url + "/health", 200, self.proc, HEALTH_DEADLINE_S, 0.1)
        if problem:
            raise HarnessError(f"lelantos serve {problem} (log: {self.log}):\n{self.log_tail(60)}")

    def start(self) -> None:
        """Starts the daemon; on the first start also picks the port and makes the key."""
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError("daemon already running")
        if not self.key:
            self.create_key()
        if self.port:
            self.proc = self._spawn()
            self._wait_healthy()
            return
        for attempt in range(3):
            self.port, self.metrics_port = free_port(), free_port()
            self.proc = self._spawn()
            try:
                self._wait_healthy()
                return
            except HarnessError:
                self._kill_daemon()
                # Another process may have taken the port between probe and bind.
                tail = self.log_tail(40).lower()
                if attempt == 2 or not any(w in tail for w in ("bind", "address already in use")):
                    raise

    def stop(self) -> int:
        """SIGTERM, wait; returns the exit status (kills it and raises on a hang)."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            self._log_marker("SIGTERM")
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self._kill_daemon()
                raise HarnessError(f"lelantos serve ignored SIGTERM for {STOP_DEADLINE_S}s")
        self._stopped_pids.add(proc.pid)
        return proc.returncode

    def _kill_daemon(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart_daemon(self) -> None:
        """SIGTERM, wait for exit 0, start again on the same port and data dir."""
        rc = self.stop()
        if rc != 0:
            raise HarnessError(f"lelantos serve exited {rc} on SIGTERM (want 0):\n{self.log_tail(40)}")
        self.proc = None
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- HTTP ---------------------------------------------------------------

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[dict] = None, timeout: float = 60) -> Response:
        """A plain HTTP request to the appliance (no auth added)."""
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as res:
                return Response(res.status, res.headers, res.read())
        except urllib.error.HTTPError as e:
            return Response(e.code, e.headers, e.read())

    def api(self, method: str, path: str, json_body: Any = None, api_key: Any = OWN_KEY,
            query: Optional[dict] = None, timeout: float = 60) -> Response:
        """A REST call as the SDK makes it (`X-API-Key`, JSON body).
        api_key=None sends no key; any string sends that key."""
        headers = {"Accept": "application/json"}
        key = self.key if api_key is OWN_KEY else api_key
        if key is not None:
            headers["X-API-Key"] = key
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        if query:
            path += "?" + urllib.parse.urlencode(query)
        return self.request(method, path, body, headers, timeout)

    def envd(self, sandbox_id: str, method: str, path: str, body: Optional[bytes] = None,
             headers: Optional[dict] = None, timeout: float = 30) -> Response:
        """An envd request through the proxy, routed by the SDK's headers."""
        h = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(ENVD_PORT), **(headers or {})}
        return self.request(method, path, body, h, timeout)

    def list_all(self, query: Optional[dict] = None) -> list[dict]:
        """Every sandbox `GET /v2/sandboxes` lists (all pages)."""
        out: list[dict] = []
        q = dict(query or {})
        for _ in range(1000):
            res = self.api("GET", "/v2/sandboxes", query=q)
            if res.status != 200:
                raise HarnessError(f"GET /v2/sandboxes answered {res!r}")
            out.extend(res.json())
            token = res.headers.get("X-Next-Token")
            if not token:
                return out
            q["nextToken"] = token
        raise HarnessError("GET /v2/sandboxes paginated forever")

    # --- teardown -----------------------------------------------------------

    def kill_all_sandboxes(self) -> list[str]:
        """DELETEs every listed sandbox; returns the ids it found."""
        ids = [s["sandboxID"] for s in self.list_all()]
        for sid in ids:
            self.api("DELETE", f"/sandboxes/{sid}")
        return ids

    def _leftover_pids(self) -> list[int]:
        """Processes whose command line names our data dir (VMs the daemon did
        not stop), excluding anything we already reaped."""
        needle = str(self.data_dir).encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline:
                pids.append(int(entry))
        return pids

    def close(self) -> list[str]:
        """Kills listed sandboxes, stops the daemon, kills leftover VM
        processes (by pid) and removes the data dir. Returns notes for the
        log: sandboxes that were still listed, processes that had to be killed."""
        notes: list[str] = []
        if self.alive():
            try:
                left = self.kill_all_sandboxes()
                if left:
                    notes.append(f"killed {len(left)} sandbox(es) still listed at teardown: {left}")
            except Exception as e:  # noqa: BLE001 - teardown must go on
                notes.append(f"listing/killing sandboxes at teardown failed: {e!r}")
        try:
            rc = self.stop()
            if rc != 0:
                notes.append(f"lelantos serve exited {rc} on SIGTERM")
        except HarnessError as e:
            notes.append(str(e))
        stray = self._leftover_pids()
        for pid in stray:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if stray:
            notes.append(f"SIGKILLed {len(stray)} leftover process(es) naming {self.data_dir}: {stray}")
            time.sleep(0.5)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if notes:
            self._log_marker("teardown notes: " + " | ".join(notes))
        return notes

    def log_tail(self, n: int = 150) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])
