"""Restarting the daemon does not touch running sandboxes: SIGTERM leaves the
VMs running and the next start re-adopts them (runs last, see conftest). One VM."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import pytest
from e2b import Sandbox, SandboxQuery, SandboxState

from helpers import HOME, bg_sleep, has_process, list_sdk, wait_until

pytestmark = pytest.mark.restarts_daemon


def test_sandbox_survives_daemon_restart(appliance, sandboxes, restart_daemon) -> None:
    tag = uuid.uuid4().hex[:12]
    sbx = sandboxes.create(timeout=300, metadata={"restart": tag})
    sid = sbx.sandbox_id
    path, content = f"{HOME}/restart-{tag}.txt", f"written before the restart {tag}\n"
    sbx.files.write(path, content)
    pid = bg_sleep(sbx)
    end_before = sbx.get_info().end_at
    # Started under a NOTIFY_SOCKET and WATCHDOG_USEC (as systemd would), the
    # daemon said READY and keeps feeding the watchdog.
    assert "READY=1" in appliance.notifications, appliance.notifications
    wait_until(lambda: "WATCHDOG=1" in appliance.notifications, timeout=5, what="a watchdog ping")
    sent_before = len(appliance.notifications)

    restart_daemon()

    # It told "systemd" it was stopping, and the new one that it is ready
    # (the datagram may trail /health by a moment).
    wait_until(lambda: "READY=1" in appliance.notifications[sent_before:], timeout=5,
               what="READY=1 from the new daemon")
    after = appliance.notifications[sent_before:]
    assert "STOPPING=1" in after, after
    assert after.index("STOPPING=1") < after.index("READY=1"), after

    listed = list_sdk(SandboxQuery(metadata={"restart": tag}))
    assert [s.sandbox_id for s in listed] == [sid]
    assert listed[0].state == SandboxState.RUNNING
    info = Sandbox.get_info(sid)
    assert abs((info.end_at - end_before).total_seconds()) <= 1, \
        f"the restart must keep the sandbox's deadline: {end_before} -> {info.end_at}"

    # The old handle (same envd token) still works through the new proxy.
    assert sbx.commands.run("echo alive").stdout.strip() == "alive"
    assert sbx.files.read(path) == content
    assert has_process(sbx, pid, "sleep 600"), "the background process died with the daemon"

    assert sbx.kill() is True
    assert sid not in {s["sandboxID"] for s in appliance.list_all()}


def test_a_vm_that_died_while_the_daemon_was_down_is_failed_with_a_reason(
        appliance, sandboxes, restart_daemon) -> None:
    """Nothing disappears silently: the row is marked failed, its logs say why,
    and what the VM held on the host (directory, namespace) is cleaned up."""
    sbx = sandboxes.create(timeout=300)
    sid = sbx.sandbox_id
    appliance.stop()
    # The guest's kernel command line names the sandbox (envd.hostname=<id>).
    out = subprocess.run(["pgrep", "-f", f"envd.hostname={sid}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, f"expected one VMM for {sid}: {out.stdout!r}"
    os.kill(pids[0], signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{pids[0]}"), timeout=10, what="the VMM to exit")
    appliance.proc = None
    appliance.start()

    assert appliance.api("GET", f"/sandboxes/{sid}").status == 404
    assert sid not in {s["sandboxID"] for s in appliance.list_all()}
    logs = appliance.api("GET", f"/v2/sandboxes/{sid}/logs").json()["logs"]
    failed = [e for e in logs if e["fields"].get("event") == "failed"]
    assert failed and "gone" in failed[-1]["message"], logs[-5:]
    assert failed[-1]["level"] == "error", failed[-1]
    # Its VM directory and network namespace are gone; live sandboxes keep theirs.
    live = len(appliance.list_all())
    vm_dirs = os.listdir(appliance.data_dir / "vms")
    assert len(vm_dirs) == live, (vm_dirs, live)
