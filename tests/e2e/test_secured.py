"""Access tokens and signed /files URLs (spec §3.1, §3.3).

In a real deployment the control plane sets envd's token through `POST /init` and
hands the same token to the SDK in the create response. In debug mode the SDK makes
no REST call and so never learns a token: `Sandbox.create()`/`Sandbox.connect()`
always return token-less handles. The only way to give the stock SDK a token is the
`Sandbox(...)` constructor (public, marked deprecated in its docstring), called the
way the SDK's own connect path calls it after a REST answer: the token as
`envd_access_token` (used to sign URLs) plus the matching `X-Access-Token` header in
the ConnectionConfig. Both keyword sets exist unchanged in 2.45.1 and 2.63.0.
"""

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from e2b import AuthenticationException, ConnectionConfig, Sandbox
from packaging.version import Version

DEBUG_SANDBOX_ID = "debug_sandbox_id"  # what debug mode's Sandbox.create() uses


@pytest.fixture(scope="module")
def token(envd):
    tok = f"e2e-{uuid.uuid4().hex}"
    envd.init(accessToken=tok)
    try:
        yield tok
    finally:
        envd.init()  # no accessToken: envd stops requiring one
        status, _, body = envd.http(
            "POST", "/process.Process/List", b"{}",
            {"Content-Type": "application/json", "Connect-Protocol-Version": "1"})
        assert status != 401, f"token not cleared: List answered {status} {body!r}"


@pytest.fixture
def secured(envd, token) -> Sandbox:
    """A stock-SDK handle that holds the envd access token."""
    _, headers, _ = envd.http("GET", "/health")
    version = headers.get("X-Envd-Version")
    assert version, "envd answers carry X-Envd-Version"
    config = ConnectionConfig(extra_sandbox_headers={
        "E2b-Sandbox-Id": DEBUG_SANDBOX_ID,
        "E2b-Sandbox-Port": str(ConnectionConfig.envd_port),
        "X-Access-Token": token,
    })
    return Sandbox(
        sandbox_id=DEBUG_SANDBOX_ID,
        sandbox_domain=None,
        envd_version=Version(version),
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=config,
    )


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post_multipart(url: str, filename: str, data: bytes) -> tuple[int, bytes]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _with_query(url: str, **changes: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.update(changes)
    return parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote)).geturl()


UNAUTHORIZED = {
    "code": 401,
    "message": "unauthorized access, please provide a valid access token or method signing if supported",
}


def test_rpc_without_token_is_refused(sbx: Sandbox, token):
    with pytest.raises(AuthenticationException):
        sbx.commands.run("true")
    with pytest.raises(AuthenticationException):
        sbx.files.list("/home/user")


def test_rpc_with_wrong_token_is_refused(envd, token):
    status, _, body = envd.http(
        "POST", "/process.Process/List", b"{}",
        {"Content-Type": "application/json", "X-Access-Token": token + "x"})
    assert status == 401
    assert json.loads(body) == UNAUTHORIZED


def test_token_holder_can_run_and_write(secured: Sandbox, workdir: str):
    assert secured.commands.run("echo ok").stdout == "ok\n"
    secured.files.write(f"{workdir}/t.txt", "with token")
    assert secured.files.read(f"{workdir}/t.txt") == "with token"


def test_files_without_token_or_signature_is_refused(sbx: Sandbox, secured: Sandbox, envd, workdir: str):
    path = f"{workdir}/private.txt"
    secured.files.write(path, "secret")
    with pytest.raises(AuthenticationException):
        sbx.files.read(path)
    status, _ = _get(f"{envd.url}/files?path={urllib.parse.quote(path)}")
    assert status == 401


@pytest.mark.parametrize("user", [None, "user"])
def test_signed_download_url(secured: Sandbox, envd, workdir: str, user):
    path = f"{workdir}/dl.txt"
    secured.files.write(path, "signed download")
    url = secured.download_url(path, user)
    assert url.startswith(envd.url + "/files?")
    assert "signature=v1_" in url
    assert _get(url) == (200, b"signed download")


def test_signed_download_url_with_expiration(secured: Sandbox, workdir: str):
    path = f"{workdir}/dl-exp.txt"
    secured.files.write(path, "not yet expired")
    url = secured.download_url(path, "user", use_signature_expiration=120)
    assert "signature_expiration=" in url
    assert _get(url) == (200, b"not yet expired")


def test_expired_signature(secured: Sandbox, workdir: str):
    path = f"{workdir}/dl-expired.txt"
    secured.files.write(path, "too late")
    url = secured.download_url(path, "user", use_signature_expiration=-120)
    status, body = _get(url)
    assert status == 401
    assert json.loads(body) == {"code": 401, "message": "signature is already expired"}


def test_wrong_signature(secured: Sandbox, workdir: str):
    path = f"{workdir}/dl-wrong.txt"
    other = f"{workdir}/other.txt"
    secured.files.write(path, "guarded")
    secured.files.write(other, "other")
    url = secured.download_url(path, "user")
    sig = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["signature"]

    # Tampered signature.
    status, _ = _get(_with_query(url, signature=sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")))
    assert status == 401
    # A valid signature for another path.
    status, _ = _get(_with_query(url, path=other))
    assert status == 401
    # A write signature does not allow reading.
    status, _ = _get(secured.upload_url(path, "user"))
    assert status == 401
    # Signed for one user, presented for another.
    status, _ = _get(_with_query(url, username="root"))
    assert status == 401


def test_signed_upload_url(secured: Sandbox, workdir: str):
    path = f"{workdir}/up/uploaded.bin"
    url = secured.upload_url(path, "user")
    payload = b"uploaded via signed url \x00\xff"
    status, body = _post_multipart(url, "uploaded.bin", payload)
    assert status == 200, body
    entries = json.loads(body)
    assert [e["path"] for e in entries] == [path]
    assert bytes(secured.files.read(path, format="bytes")) == payload
    assert secured.files.get_info(path).owner == "user"


def test_upload_with_read_signature_is_refused(secured: Sandbox, workdir: str):
    path = f"{workdir}/up-wrong.txt"
    status, _ = _post_multipart(secured.download_url(path, "user"), "x", b"x")
    assert status == 401
