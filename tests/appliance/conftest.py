"""Fixtures for the appliance suite: the stock E2B SDK against a real `lelantos serve`.

One daemon per session (harness.Appliance): a fresh data dir, a free 127.0.0.1
port, an API key made with `lelantos keys create`, REST API and sandbox proxy
on that one listener. The SDK is pointed at it through its own environment
variables (E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL; E2B_DEBUG unset), so every
SDK call goes through the control plane and every sandbox is a real microVM.

Run by hand (as root, after `bash tests/run` built the binary and the image):
    LELANTOS_BIN=.../lelantos LELANTOS_IMAGE_MANIFEST=.../manifest.json \
        python -m pytest                       # from tests/appliance, inside an e2b venv
Optional: LELANTOS_TEMPLATES_DIR (default: the repo's templates.d),
LELANTOS_LOG_DIR (default: a pytest temp dir), RUST_LOG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

import pytest
from e2b import Sandbox

from harness import Appliance, HarnessError
from testkit import show_log_tail

_appliance: Optional[Appliance] = None


def pytest_collection_modifyitems(config, items) -> None:
    """Tests that restart the daemon run last: if the restart breaks it, only
    they (and nothing after them) see a broken appliance."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_daemon") is not None)


@pytest.fixture(scope="session")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    global _appliance
    try:
        app = Appliance.from_env(log_dir=tmp_path_factory.mktemp("lelantos"))
    except HarnessError as e:
        pytest.fail(f"{e}; run the suite with LELANTOS_BIN and LELANTOS_IMAGE_MANIFEST set",
                    pytrace=False)
    _appliance = app
    saved = {k: v for k, v in os.environ.items() if k.startswith("E2B_")}
    try:
        try:
            app.start()
        except HarnessError as e:
            pytest.fail(str(e), pytrace=False)
        for k in saved:
            del os.environ[k]
        os.environ.update(app.sdk_env())
        yield app
    finally:
        for k in [k for k in os.environ if k.startswith("E2B_")]:
            del os.environ[k]
        os.environ.update(saved)
        for note in app.close():
            print(f"\nappliance teardown: {note}")


@pytest.fixture
def restart_daemon(appliance: Appliance):
    """SIGTERM the daemon, wait for exit 0, start it again (same port, data dir)."""
    return appliance.restart_daemon


class Tracker:
    """Creates sandboxes through the SDK and kills them at teardown, even when
    the test failed half-way (tests kill what they can themselves; this is the
    safety net that keeps VMs from piling up on a 2-core machine)."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def create(self, **kwargs) -> Sandbox:
        sbx = Sandbox.create(**kwargs)
        self.ids.append(sbx.sandbox_id)
        return sbx

    def track(self, sandbox_id: str) -> str:
        self.ids.append(sandbox_id)
        return sandbox_id

    def kill_all(self) -> None:
        for sid in self.ids:
            try:
                Sandbox.kill(sid)
            except Exception:  # noqa: BLE001 - best effort; the session teardown follows
                pass
        self.ids.clear()


@pytest.fixture
def sandboxes(appliance: Appliance) -> Iterator[Tracker]:
    tracker = Tracker()
    try:
        yield tracker
    finally:
        tracker.kill_all()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """On failure, show the tail of the daemon's log (the full file stays on disk)."""
    stats = terminalreporter.stats
    if _appliance is not None and (stats.get("failed") or stats.get("error")):
        show_log_tail(terminalreporter, "lelantos log", _appliance.log, 200)
