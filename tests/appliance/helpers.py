"""Small helpers shared by the appliance tests."""

from __future__ import annotations

from datetime import datetime, timezone
from importlib.metadata import version as _pkg_version
from typing import Optional

from e2b import Sandbox, SandboxQuery
from packaging.version import Version

from harness import Response
from testkit import wait_until  # noqa: F401  (tests/lib, put on sys.path by harness)

SDK_VERSION = Version(_pkg_version("e2b"))
# py 2.45.x: the SDK generation that talks to /sandboxes (v1 create/connect) and
# reports a sandbox killed under an in-flight stream as "...was killed or reached
# its end of life..." (spec §4.7); 2.63 has other wordings/exception types.
OLD_SDK = SDK_VERSION < Version("2.63")
HOME = "/home/user"
# How far apart two clocks on this one machine may read (request latency, rounding).
CLOCK_SLACK_S = 10


def now() -> datetime:
    return datetime.now(timezone.utc)


def list_sdk(query: Optional[SandboxQuery] = None, **kwargs) -> list:
    """Every SandboxInfo `Sandbox.list` yields, all pages."""
    pager = Sandbox.list(query=query, **kwargs)
    out = []
    while pager.has_next:
        out.extend(pager.next_items())
    return out


def assert_error(res: Response, status: int) -> dict:
    """The response is `status` with E2B's error body `{"code": status, "message": str}`."""
    assert res.status == status, f"want {status}, got {res!r}"
    ctype = res.headers.get("Content-Type", "")
    assert "json" in ctype, f"error body is not JSON (Content-Type {ctype!r}): {res!r}"
    body = res.json()
    assert body.get("code") == status, f"error body code != {status}: {body!r}"
    assert isinstance(body.get("message"), str) and body["message"], f"no message: {body!r}"
    return body


def assert_not_found_on_envd(res: Response) -> None:
    """What the proxy answers for a paused/killed/unknown sandbox (spec §4.7)."""
    assert res.status == 502, f"want 502 from the proxy, got {res!r}"
    body = res.json()
    assert "was not found" in body.get("message", ""), body
    assert body.get("code") == 502, body


def bg_sleep(sbx: Sandbox, seconds: int = 600):
    """Starts `sleep <seconds>` as a background envd process with no stream
    deadline (timeout=0: the default 60 s would end the process, spec §5.10);
    waits until envd lists it. Returns its pid."""
    handle = sbx.commands.run(f"sleep {seconds}", background=True, timeout=0)
    pid = handle.pid
    wait_until(lambda: has_process(sbx, pid, f"sleep {seconds}"), timeout=10,
               what=f"pid {pid} in commands.list()")
    return pid


def has_process(sbx: Sandbox, pid: int, needle: str) -> bool:
    for p in sbx.commands.list():
        if p.pid == pid:
            text = " ".join([p.cmd, *p.args])
            assert needle in text, f"pid {pid} runs {text!r}, not {needle!r}"
            return True
    return False


def prom_values(page: str, name: str) -> dict[str, float]:
    """`{sandbox id: value}` of one per-sandbox family on a Prometheus page."""
    out = {}
    for line in page.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels, _, value = line[len(name) + 1:].rpartition("} ")
        fields = dict(part.split("=", 1) for part in labels.split(","))
        out[fields["sandbox"].strip('"')] = float(value)
    return out
