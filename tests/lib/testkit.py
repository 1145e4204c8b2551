"""What the Python suites (tests/e2e, tests/appliance) and the benchmarks share:
polling, ports, child-process hygiene, timing. Plain functions, no pytest."""

from __future__ import annotations

import ctypes
import signal
import socket
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Polls `predicate` until it returns something truthy; fails at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """`preexec_fn` for a server child: SIGKILL it if the test process dies
    without cleaning up (e.g. killed by an outer timeout)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def show_log_tail(terminalreporter, title: str, log: Path, n: int) -> None:
    """For `pytest_terminal_summary`: the last `n` lines of a server log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return
    terminalreporter.write_sep("=", f"{title} (last {n} of {len(lines)} lines): {log}")
    for line in lines[-n:]:
        terminalreporter.write_line(line)


def pct(values: list[float], p: float) -> float:
    """The `p` quantile (0..1) of `values`, nearest rank."""
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * p))]


def time_ms(fn: Callable[[], object], runs: int, warmup: int = 10) -> list[float]:
    """Wall time of `runs` calls of `fn` in milliseconds, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def poll_health(url: str, want: int, proc, deadline_s: float, interval: float = 0.05) -> str | None:
    """Polls `GET url` until it answers `want` while `proc` (a Popen) lives.
    Returns None when healthy, else why not (for the caller's failure)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + deadline_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode} before {url} answered {want}"
        try:
            with urllib.request.urlopen(url, timeout=2) as res:
                if res.status == want:
                    return None
                last = f"status {res.status}"
        except urllib.error.HTTPError as e:
            last = f"status {e.code}"
        except OSError as e:
            last = repr(e)
        time.sleep(interval)
    return f"{url} did not answer {want} within {deadline_s}s ({last})"
