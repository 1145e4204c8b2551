"""Sandbox timeouts: expiry kills by default, pauses with on_timeout="pause"
(autoPause on the wire). Two VMs."""

from __future__ import annotations

import uuid
from datetime import timedelta

from e2b import NotFoundException, Sandbox, SandboxState

from helpers import (CLOCK_SLACK_S, HOME, assert_not_found_on_envd, bg_sleep,
                     has_process, now, wait_until)


def _gone(sid: str) -> bool:
    try:
        Sandbox.get_info(sid)
        return False
    except NotFoundException:
        return True


def test_timeout_kills(appliance, sandboxes) -> None:
    t0 = now()
    sbx = sandboxes.create(timeout=5)
    sid = sbx.sandbox_id
    try:
        info = Sandbox.get_info(sid)
        assert info.end_at <= t0 + timedelta(seconds=5 + CLOCK_SLACK_S), \
            f"endAt {info.end_at} ignores timeout=5 (created {t0})"
    except NotFoundException:
        pass  # already expired: fine, that is what we wait for below

    wait_until(lambda: _gone(sid), timeout=30, interval=0.5, what=f"{sid} to expire")
    assert sid not in {s["sandboxID"] for s in appliance.list_all()}
    assert sbx.is_running() is False
    assert_not_found_on_envd(appliance.envd(sid, "GET", "/health"))
    assert Sandbox.kill(sid) is False


def test_timeout_pauses_with_on_timeout_pause(appliance, sandboxes) -> None:
    sbx = sandboxes.create(timeout=120, lifecycle={"on_timeout": "pause"})
    sid = sbx.sandbox_id
    path, content = f"{HOME}/autopause-{uuid.uuid4().hex[:8]}.txt", "kept across auto-pause\n"
    sbx.files.write(path, content)
    pid = bg_sleep(sbx)

    sbx.set_timeout(5)
    wait_until(lambda: Sandbox.get_info(sid).state == SandboxState.PAUSED, timeout=40,
               interval=0.5, what=f"{sid} to auto-pause at its timeout")
    assert sbx.is_running() is False
    info = Sandbox.get_info(sid)
    if info.lifecycle is not None:  # optional in the API; when present it must be right
        assert info.lifecycle["on_timeout"] == "pause", info.lifecycle

    resumed = Sandbox.connect(sid, timeout=120)
    assert resumed.files.read(path) == content
    assert has_process(resumed, pid, "sleep 600")
    assert Sandbox.get_info(sid).state == SandboxState.RUNNING
    assert resumed.kill() is True
    assert _gone(sid)
