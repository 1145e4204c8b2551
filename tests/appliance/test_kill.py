"""Killing a sandbox under an in-flight command stream (spec §4.7): the stream
must break at the transport level so the SDK reports the kill. One VM."""

from __future__ import annotations

import threading
import time

from e2b import Sandbox

from helpers import OLD_SDK, SDK_VERSION, wait_until


def test_kill_during_run(appliance, sandboxes) -> None:
    sbx = sandboxes.create(timeout=300)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = sbx.commands.run("sleep 60")
        except BaseException as e:  # noqa: BLE001 - recorded for the assertions
            outcome["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    # The stream is in flight once envd lists the sleep.
    wait_until(lambda: any("sleep 60" in " ".join([p.cmd, *p.args])
                           for p in sbx.commands.list()),
               timeout=20, what="`sleep 60` to be running")

    t = time.monotonic()
    assert Sandbox.kill(sbx.sandbox_id) is True
    th.join(timeout=45)
    assert not th.is_alive(), "commands.run kept waiting after the sandbox was killed"
    broke_after = time.monotonic() - t
    assert broke_after < 30, f"the run ended {broke_after:.1f}s after the kill"

    assert "result" not in outcome, f"the run ended cleanly: {outcome.get('result')!r}"
    err = outcome["error"]
    assert type(err).__module__.startswith("e2b"), f"not an SDK exception: {err!r}"
    if OLD_SDK:
        assert "was killed" in str(err), \
            f"e2b {SDK_VERSION}: want the 'was killed' message (TCP RST + 502 on /health), got {err!r}"
