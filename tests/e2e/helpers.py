"""Small helpers shared by the e2e tests."""

from __future__ import annotations

from testkit import wait_until  # noqa: F401  (tests/lib, on sys.path via conftest)
