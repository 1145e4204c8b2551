"""The SDK in debug mode reaches the envd under test (spec §1.3, §3.2)."""

from e2b import Sandbox


def test_debug_mode_targets_envd(sbx: Sandbox, envd):
    assert sbx.sandbox_id == "debug_sandbox_id"
    assert sbx.envd_api_url == envd.url


def test_is_running(sbx: Sandbox):
    assert sbx.is_running() is True


def test_health_is_204_without_body(envd):
    status, headers, body = envd.http("GET", "/health")
    assert status == 204
    assert body == b""
    assert headers.get("X-Envd-Version")
