"""`Template.build` from the stock SDK, end to end: an OCI base image in a local
registry → the appliance's build API (upload, build VM, publish) → a sandbox
started from the new template.

The base image is the builtin guest rootfs (it has bash, which `commands.run`
needs) dumped with debugfs, packed with umoci and pushed with skopeo to
Debian's `docker-registry` on 127.0.0.1 (plain HTTP, which the appliance
allows for local registries only). Needs: docker-registry, umoci, skopeo,
debugfs (`apt-get install docker-registry umoci skopeo e2fsprogs`).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from e2b import BuildException, Template

from helpers import HOME
from registry import Registry, push_rootfs_image

@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway registry on 127.0.0.1; yields its `host:port`."""
    try:
        reg = Registry(tmp_path_factory.mktemp("registry"))
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield reg.host
    finally:
        reg.close()


@pytest.fixture(scope="module")
def base_image(appliance, registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The builtin rootfs as a one-layer OCI image in `registry`; returns its reference."""
    manifest = Path(appliance.manifest)
    rootfs = manifest.parent / json.loads(manifest.read_text())["rootfs"]["file"]
    return push_rootfs_image(registry, rootfs, tmp_path_factory.mktemp("oci"))


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def test_build_from_image_then_start_a_sandbox(appliance, sandboxes, base_image, tmp_path) -> None:
    tag = _tag()
    alias = f"sdk-built-{tag}"
    content = f"copied {tag}\n"
    (tmp_path / "f.txt").write_text(content)
    assert not Template.exists(alias)

    template = (
        Template(file_context_path=str(tmp_path))
        .from_image(base_image)
        .run_cmd("echo built > /etc/built-marker")
        # A RUN with its own user switches for that command only (/tmp is a
        # tmpfs at boot, so the note goes to the home directory).
        .run_cmd(f"id -un > {HOME}/run-as", user="user")
        .copy("f.txt", f"{HOME}/f.txt")
    )
    logs = []
    info = Template.build(template, alias=alias, on_build_logs=logs.append)
    assert info.template_id == alias
    assert Template.exists(alias)
    assert any("step" in str(e.message).lower() for e in logs), [str(e) for e in logs]

    sbx = sandboxes.create(template=alias, timeout=120)
    marker = sbx.commands.run("cat /etc/built-marker")
    assert marker.exit_code == 0 and marker.stdout.strip() == "built", marker
    assert sbx.commands.run(f"cat {HOME}/run-as").stdout.strip() == "user"
    copied = sbx.commands.run(f"cat {HOME}/f.txt")
    assert copied.stdout == content, copied
    # The RUN-as-user did not change the sandbox's default user.
    assert sbx.commands.run("id -un").stdout.strip() == "user"
    sbx.kill()

    # A template built on top of that one starts from its disk.
    child = f"{alias}-child"
    Template.build(
        Template().from_template(alias).run_cmd("cat /etc/built-marker > /etc/child-marker"),
        alias=child,
    )
    sbx = sandboxes.create(template=child, timeout=120)
    assert sbx.commands.run("cat /etc/child-marker").stdout.strip() == "built"
    assert sbx.commands.run(f"cat {HOME}/f.txt").stdout == content

    # API-built templates can be deleted through the API; running sandboxes
    # keep going, new ones cannot start from it.
    assert appliance.api("DELETE", f"/templates/{child}").status == 204
    assert appliance.api("POST", "/v2/sandboxes", {"templateID": child}).status == 404
    assert sbx.commands.run("cat /etc/child-marker").stdout.strip() == "built"
    assert appliance.api("DELETE", f"/templates/{child}").status == 404
    # A template defined in files is the repository's, not the API's.
    assert appliance.api("DELETE", "/templates/base").status == 409
    sbx.kill()


def test_failing_step_raises_build_exception(appliance) -> None:
    alias = f"sdk-fail-{_tag()}"
    template = (
        # E2B's default base image (`e2bdev/base`) is the builtin `base` here.
        Template()
        .from_base_image()
        .run_cmd("echo fine")
        .run_cmd("echo boom >&2; exit 3")
    )
    with pytest.raises(BuildException) as err:
        Template.build(template, alias=alias)
    message = str(err.value)
    # The SDK's numbering: the second instruction, whatever our builder made of it.
    assert "step 2" in message and "exit code 3" in message, message


def test_invalid_name_is_a_400(appliance) -> None:
    res = appliance.api("POST", "/v3/templates", {"name": "not a name", "cpuCount": 2})
    assert res.status == 400, res
    body = res.json()
    assert body["code"] == 400 and isinstance(body["message"], str), body
    with pytest.raises(BuildException) as err:
        Template.build(Template().from_image("127.0.0.1:1/x:1"), alias="Bad Name")
    assert str(err.value).startswith("400: "), err.value


@pytest.mark.restarts_daemon
def test_api_built_templates_survive_a_daemon_restart(appliance, sandboxes, restart_daemon) -> None:
    """An API-built template has no definition file: it is persisted, and a
    restarted daemon serves it again from its build."""
    alias = f"sdk-keep-{_tag()}"
    Template.build(Template().from_base_image().run_cmd("echo kept > /etc/kept-marker"), alias=alias)
    restart_daemon()
    assert Template.exists(alias)
    sbx = sandboxes.create(template=alias, timeout=120)
    assert sbx.commands.run("cat /etc/kept-marker").stdout.strip() == "kept"
    sbx.kill()
    assert appliance.api("DELETE", f"/templates/{alias}").status == 204
    restart_daemon()
    assert not Template.exists(alias), "a deleted template must stay deleted after a restart"
