"""REST details the SDK hides (exact status codes, error bodies), auth, unknown
ids and signed file URLs. One VM for the module."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from e2b import AuthenticationException, NotFoundException, Sandbox
from packaging.version import Version

from helpers import HOME, assert_error, assert_not_found_on_envd

SANDBOX_REQUIRED = ("templateID", "sandboxID", "clientID", "envdVersion")
WRONG_KEY = "e2b_" + "0" * 40


@pytest.fixture(scope="module")
def shared(appliance):
    sbx = Sandbox.create(timeout=300, secure=True, metadata={"suite": "appliance-rest"})
    try:
        yield sbx
    finally:
        try:
            Sandbox.kill(sbx.sandbox_id)
        except Exception:  # noqa: BLE001 - the session teardown kills leftovers too
            pass


def _ensure_running(appliance, sid: str) -> None:
    """Tests may run alone (-k): bring the shared sandbox back if a previous
    test left it paused."""
    res = appliance.api("POST", f"/sandboxes/{sid}/connect", {"timeout": 300})
    assert res.status in (200, 201), res


def _check_sandbox_body(body: dict, sid: str, token: str) -> None:
    for key in SANDBOX_REQUIRED:
        assert isinstance(body.get(key), str) and body[key], f"{key} missing: {body!r}"
    assert body["sandboxID"] == sid
    assert Version(body["envdVersion"]) >= Version("0.6.4"), body
    assert body.get("envdAccessToken") == token, "connect must return the same envd token"


def test_pause_and_connect_status_codes(appliance, shared) -> None:
    sid, token = shared.sandbox_id, shared._envd_access_token
    assert token, "a secure sandbox must come with an envdAccessToken"
    _ensure_running(appliance, sid)

    # v1 SDK pause body; then pausing again is a conflict.
    res = appliance.api("POST", f"/sandboxes/{sid}/pause", {"memory": True})
    assert res.status == 204, res
    assert_error(appliance.api("POST", f"/sandboxes/{sid}/pause", {"memory": True}), 409)
    detail = appliance.api("GET", f"/sandboxes/{sid}")
    assert detail.status == 200 and detail.json()["state"] == "paused", detail

    # v1 connect: 201 when it resumed, 200 when it was already running.
    res = appliance.api("POST", f"/sandboxes/{sid}/connect", {"timeout": 300})
    assert res.status == 201, res
    _check_sandbox_body(res.json(), sid, token)
    res = appliance.api("POST", f"/sandboxes/{sid}/connect", {"timeout": 300})
    assert res.status == 200, res
    _check_sandbox_body(res.json(), sid, token)

    # v2 bodies (py 2.63 / js 2.51): pause `{}`, connect `{}`.
    res = appliance.api("POST", f"/sandboxes/{sid}/pause", {})
    assert res.status == 204, res
    res = appliance.api("POST", f"/v2/sandboxes/{sid}/connect", {})
    assert res.status == 201, res
    _check_sandbox_body(res.json(), sid, token)
    res = appliance.api("POST", f"/v2/sandboxes/{sid}/connect", {})
    assert res.status == 200, res

    assert shared.commands.run("echo back").stdout.strip() == "back"


def test_signed_urls(appliance, shared) -> None:
    _ensure_running(appliance, shared.sandbox_id)
    data = os.urandom(64 << 10)
    path = f"{HOME}/signed-{uuid.uuid4().hex[:8]}.bin"
    shared.files.write(path, data)

    url = shared.download_url(path)
    assert url.startswith(appliance.url + "/files?"), url
    assert "signature=" in url, f"a secure sandbox gives signed URLs: {url}"
    with urllib.request.urlopen(url, timeout=30) as res:  # no headers at all
        assert res.status == 200
        assert res.read() == data

    # A tampered signature is refused (whatever routes it).
    bad = url.replace("signature=", "signature=x")
    try:
        with urllib.request.urlopen(bad, timeout=30) as res:
            pytest.fail(f"tampered signature answered {res.status}")
    except urllib.error.HTTPError as e:
        assert 400 <= e.code < 600, e.code

    # Upload through a signed URL, multipart as the E2B tests do it.
    up_path = f"{HOME}/signed-up-{uuid.uuid4().hex[:8]}.bin"
    up_url = shared.upload_url(up_path)
    assert "signature=" in up_url, up_url
    payload = os.urandom(16 << 10)
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{up_path}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    body += payload + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(up_url, data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as res:
        assert res.status == 200
    assert shared.files.read(up_path, format="bytes") == payload


def test_auth(appliance) -> None:
    before = {s["sandboxID"] for s in appliance.list_all()}

    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key=WRONG_KEY).next_items()
    with pytest.raises(AuthenticationException):
        Sandbox.get_info("whatever", api_key=WRONG_KEY)
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key=WRONG_KEY)
    assert {s["sandboxID"] for s in appliance.list_all()} == before, \
        "a refused create must not leave a sandbox behind"

    assert_error(appliance.api("GET", "/v2/sandboxes", api_key=WRONG_KEY), 401)
    assert_error(appliance.api("GET", "/v2/sandboxes", api_key=None), 401)
    assert_error(appliance.api("POST", "/sandboxes", {"templateID": "base"}, api_key=WRONG_KEY), 401)
    assert_error(appliance.api("GET", "/sandboxes/whatever", api_key=None), 401)

    # Both spellings of our key work; /health needs none.
    assert appliance.api("GET", "/v2/sandboxes", api_key=appliance.key).status == 200
    assert appliance.api("GET", "/v2/sandboxes", api_key=appliance.raw_key).status == 200
    assert appliance.request("GET", "/health").status == 200


def test_unknown_sandbox(appliance) -> None:
    sid = "nosuchsandbox" + uuid.uuid4().hex[:8]

    with pytest.raises(NotFoundException):
        Sandbox.connect(sid)
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sid)
    with pytest.raises(NotFoundException):
        Sandbox.pause(sid)
    with pytest.raises(NotFoundException):
        Sandbox.set_timeout(sid, 60)
    assert Sandbox.kill(sid) is False

    enc = urllib.parse.quote(sid, safe="")
    assert_error(appliance.api("GET", f"/sandboxes/{enc}"), 404)
    assert_error(appliance.api("DELETE", f"/sandboxes/{enc}"), 404)
    assert_error(appliance.api("POST", f"/sandboxes/{enc}/pause", {"memory": True}), 404)
    assert_error(appliance.api("POST", f"/sandboxes/{enc}/connect", {"timeout": 60}), 404)
    assert_error(appliance.api("POST", f"/v2/sandboxes/{enc}/connect", {}), 404)
    assert_error(appliance.api("POST", f"/sandboxes/{enc}/timeout", {"timeout": 60}), 404)
    assert_error(appliance.api("GET", f"/sandboxes/{enc}/metrics"), 404)

    # envd traffic for an unknown sandbox: the proxy's 502 "not found".
    assert_not_found_on_envd(appliance.envd(sid, "GET", "/health"))


def test_resources_per_create_override(appliance, sandboxes) -> None:
    """`cpuCount`/`memoryMB` in the create body (a Lelantos extension the stock
    SDK never sends) override the template's 1 vCPU / 512 MiB, within limits."""
    res = appliance.api("POST", "/v2/sandboxes",
                        {"templateID": "base", "cpuCount": 2, "memoryMB": 256, "timeout": 120})
    assert res.status == 201, res
    sid = sandboxes.track(res.json()["sandboxID"])
    detail = appliance.api("GET", f"/sandboxes/{sid}").json()
    assert (detail["cpuCount"], detail["memoryMB"]) == (2, 256), detail
    # The guest really has them: envd's view, through the proxy.
    sbx = Sandbox.connect(sid)
    out = sbx.commands.run("nproc; awk '/MemTotal/ {print $2}' /proc/meminfo").stdout.split()
    assert out[0] == "2", out
    assert 200 * 1024 < int(out[1]) <= 256 * 1024, out
    assert_error(appliance.api("POST", "/v2/sandboxes", {"templateID": "base", "cpuCount": 9}), 400)
    assert_error(appliance.api("POST", "/v2/sandboxes", {"templateID": "base", "memoryMB": 100}), 400)
    assert_error(appliance.api("POST", "/v2/sandboxes", {"templateID": "nope"}), 404)
