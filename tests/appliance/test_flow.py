"""One sandbox through its whole life, the way an SDK user drives it:
create → run → files → list → set_timeout → pause → resume → info → metrics →
logs → kill. One VM for the whole module."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from e2b import (NotFoundException, Sandbox, SandboxQuery, SandboxState,
                 TimeoutException)

from helpers import (CLOCK_SLACK_S, HOME, assert_error, assert_not_found_on_envd,
                     bg_sleep, has_process, list_sdk, now, prom_values, wait_until)

LOG_ENTRY_KEYS = {"timestamp", "message", "level", "fields"}


def _log_text(entries: list[dict]) -> str:
    """Messages and field values of LogEntry objects, lowercased."""
    parts = []
    for e in entries:
        assert LOG_ENTRY_KEYS <= e.keys(), f"LogEntry misses {LOG_ENTRY_KEYS - e.keys()}: {e!r}"
        assert e["level"] in ("debug", "info", "warn", "error"), e
        parts.append(str(e["message"]))
        parts.extend(str(v) for v in (e["fields"] or {}).values())
    return "\n".join(parts).lower()


def test_full_lifecycle(appliance, sandboxes) -> None:
    tag = uuid.uuid4().hex[:12]
    meta = {"suite": "appliance", "flow": tag}

    # --- create, envs, commands, files ------------------------------------
    sbx = sandboxes.create(timeout=120, metadata=meta, envs={"FOO": f"bar-{tag}"})
    sid = sbx.sandbox_id
    res = sbx.commands.run("echo $FOO")
    assert res.exit_code == 0 and res.stdout.strip() == f"bar-{tag}", res
    who = sbx.commands.run("id -un; id -u; echo $HOME")
    assert who.stdout.split() == ["user", "1000", HOME], who

    path, content = f"{HOME}/flow-{tag}.txt", f"hello {tag}\nsecond line\n"
    sbx.files.write(path, content)
    assert sbx.files.read(path) == content

    # --- listing: running, metadata filter --------------------------------
    listed = list_sdk(SandboxQuery(metadata={"flow": tag}))
    assert [s.sandbox_id for s in listed] == [sid]
    assert listed[0].state == SandboxState.RUNNING
    assert listed[0].metadata == meta
    assert listed[0].template_id  # required field, whatever the id is
    running = list_sdk(SandboxQuery(metadata={"flow": tag}, state=[SandboxState.RUNNING]))
    assert [s.sandbox_id for s in running] == [sid]
    assert list_sdk(SandboxQuery(metadata={"flow": tag + "-other"})) == []

    # --- set_timeout moves endAt ------------------------------------------
    end_before = sbx.get_info().end_at
    t0 = now()
    sbx.set_timeout(400)
    info = sbx.get_info()
    assert info.end_at > end_before
    assert abs(info.end_at - (t0 + timedelta(seconds=400))) < timedelta(seconds=CLOCK_SLACK_S), \
        (info.end_at, t0)

    # --- a background process to carry through the pause -----------------
    pid = bg_sleep(sbx)

    # --- pause --------------------------------------------------------------
    assert sbx.pause() is True
    paused = list_sdk(SandboxQuery(metadata={"flow": tag}, state=[SandboxState.PAUSED]))
    assert [s.sandbox_id for s in paused] == [sid]
    assert paused[0].state == SandboxState.PAUSED
    assert list_sdk(SandboxQuery(metadata={"flow": tag}, state=[SandboxState.RUNNING])) == []
    assert Sandbox.get_info(sid).state == SandboxState.PAUSED
    assert sbx.is_running() is False
    with pytest.raises(TimeoutException):  # envd answers 502 "not found" while paused
        sbx.files.read(path)
    assert_not_found_on_envd(appliance.envd(sid, "GET", "/health"))

    # --- resume by connect: memory, files and processes intact ------------
    t1 = now()
    resumed = Sandbox.connect(sid, timeout=500)
    assert resumed.sandbox_id == sid
    assert resumed.files.read(path) == content
    assert has_process(resumed, pid, "sleep 600"), \
        f"background sleep (pid {pid}) did not survive the in-RAM pause"
    # Same envd token after resume: the old handle keeps working.
    assert sbx.commands.run("echo still-here").stdout.strip() == "still-here"
    assert sbx.is_running() is True

    info = resumed.get_info()
    assert info.sandbox_id == sid
    assert info.state == SandboxState.RUNNING
    assert info.metadata == meta
    assert info.cpu_count == 1 and info.memory_mb == 512, info
    assert info.end_at >= t1 + timedelta(seconds=500 - CLOCK_SLACK_S), (info.end_at, t1)

    # --- metrics ------------------------------------------------------------
    metrics = wait_until(resumed.get_metrics, timeout=20, interval=1,
                         what="at least one metrics sample")
    m = metrics[-1]
    assert m.cpu_count == 1, m
    assert 0 <= m.cpu_used_pct <= 100 * m.cpu_count, m
    assert 0 < m.mem_used <= m.mem_total, m
    assert 256 << 20 < m.mem_total <= 512 << 20, f"guest has 512 MiB: {m}"
    assert 0 <= m.disk_used <= m.disk_total, m

    # --- the operator's view: host and guest figures per sandbox ---------------
    def page_with_guest_figures() -> str | None:
        page = appliance.scrape()
        return page if sid in prom_values(page, "lelantos_sandbox_guest_memory_used_bytes") else None

    page = wait_until(page_with_guest_figures, timeout=20, interval=1,
                      what="the sandbox's series on the Prometheus page")
    rss = prom_values(page, "lelantos_sandbox_vmm_rss_bytes")[sid]
    assert 64 << 20 < rss < 2 << 30, f"QEMU's RSS for a 512 MiB guest: {rss}"
    assert prom_values(page, "lelantos_sandbox_vmm_cpu_seconds_total")[sid] > 0
    assert prom_values(page, "lelantos_sandbox_disk_read_bytes_total")[sid] > 0
    assert 0 < prom_values(page, "lelantos_sandbox_guest_memory_used_bytes")[sid] <= 512 << 20
    assert 'lelantos_sandbox_creates_total{outcome="ok"}' in page, page[:2000]

    # --- logs: lifecycle events --------------------------------------------
    v1 = appliance.api("GET", f"/sandboxes/{sid}/logs")
    assert v1.status == 200, v1
    body = v1.json()
    assert isinstance(body.get("logs"), list) and isinstance(body.get("logEntries"), list), body
    for line in body["logs"]:
        assert {"timestamp", "line"} <= line.keys(), line
    v1_text = ("\n".join(str(line["line"]) for line in body["logs"]).lower()
               + "\n" + _log_text(body["logEntries"]))
    v2 = appliance.api("GET", f"/v2/sandboxes/{sid}/logs")
    assert v2.status == 200, v2
    v2_text = _log_text(v2.json()["logs"])
    # Lifecycle events merged with the guest's console output, in time order.
    v2_logs = v2.json()["logs"]
    sources = {e["fields"].get("source") for e in v2_logs}
    assert {"lifecycle", "console"} <= sources, sources
    stamps = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in v2_logs]
    assert stamps == sorted(stamps), "logs are not time-ordered"
    for name, text in (("/sandboxes/{id}/logs", v1_text), ("/v2/sandboxes/{id}/logs", v2_text)):
        assert "creat" in text, f"{name} has no creation event:\n{text}"
        assert "paus" in text, f"{name} has no pause event:\n{text}"

    # --- kill -----------------------------------------------------------------
    assert resumed.kill() is True
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sid)
    assert Sandbox.kill(sid) is False
    assert_error(appliance.api("GET", f"/sandboxes/{sid}"), 404)
    assert sid not in {s["sandboxID"] for s in appliance.list_all()}
    assert sbx.is_running() is False
    assert_not_found_on_envd(appliance.envd(sid, "GET", "/health"))
    # Its series leave the operator's page with it (a paused one keeps them:
    # its VMM still holds the guest's memory).
    assert sid not in prom_values(appliance.scrape(), "lelantos_sandbox_vmm_rss_bytes")
