"""Templates as code: a local bare git repository is the appliance's
template source. Commits are picked up within the poll interval, built in a
build VM, and served; a change serves a new version while old sandboxes keep
running; a broken step stalls the template with the error while the previous
version keeps serving; a deletion drains and removes it.

Runs its own daemon (a config naming the git source), so it does not disturb
the session's. Real git, real builds, real VMs."""

from __future__ import annotations

import os

import pytest
from e2b import Sandbox

from gitops_kit import Repo, git, status_of, wait_status
from harness import Appliance
from helpers import wait_until

POLL_S = 2
NAME = "gitops-t"


def definition(marker: str, extra_step: str = "") -> str:
    return (f"version: 1\nname: {NAME}\nsteps:\n"
            f"  - run: echo {marker} > /etc/gitops-marker\n"
            f"  - copy: {{src: files/hello.txt, dest: /home/user/hello.txt, user: user, mode: \"0640\"}}\n"
            f"{extra_step}")


@pytest.fixture(scope="module")
def gitops(tmp_path_factory, appliance):
    base = tmp_path_factory.mktemp("gitops")
    repo = Repo(base)
    (repo.work / "templates.d" / "files").mkdir()
    (repo.work / "templates.d" / "files" / "hello.txt").write_text("hello from git\n")
    config = repo.config(base / "lelantos.yaml", POLL_S)
    repo.write(f"{NAME}.yaml", definition("v1"))
    repo.push("v1")
    app = Appliance.from_env(log_dir=base / "logs")
    app.config = config
    app.start()
    saved = {k: os.environ.get(k) for k in ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL")}
    os.environ.update(app.sdk_env())
    try:
        yield app, repo
    finally:
        for note in app.close():
            print(f"\ngitops teardown: {note}")
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v


def test_push_build_change_break_delete(gitops) -> None:
    app, repo = gitops
    rev1 = git(repo.work, "rev-parse", "HEAD")

    # --- a new template: built and served within the poll interval -------
    st = wait_status(app, NAME, lambda r: r["phase"] == "Ready" and r["revision"] == f"git:{rev1}",
                     "Ready at the first commit")
    build1 = st["build_id"]
    old = Sandbox.create(template=NAME, timeout=300)
    assert old.commands.run("cat /etc/gitops-marker").stdout.strip() == "v1"
    hello = old.commands.run("stat -c '%U %a' /home/user/hello.txt; cat /home/user/hello.txt").stdout
    assert hello.split("\n")[:2] == ["user 640", "hello from git"], hello
    assert status_of(app, "")["phase"] == "Ready"

    # --- a change: a new build serves, the old sandbox keeps running -----
    repo.write(f"{NAME}.yaml", definition("v2"))
    rev2 = repo.push("v2")
    st = wait_status(app, NAME, lambda r: r["phase"] == "Ready" and r["revision"] == f"git:{rev2}"
                     and r["build_id"] != build1, "Ready with a new build")
    build2 = st["build_id"]
    new = Sandbox.create(template=NAME, timeout=300)
    assert new.commands.run("cat /etc/gitops-marker").stdout.strip() == "v2"
    assert old.commands.run("cat /etc/gitops-marker").stdout.strip() == "v1", \
        "a sandbox of the old version must keep running unchanged"

    # --- a broken step: Stalled with the error, v2 still serves ----------
    repo.write(f"{NAME}.yaml", definition("v3", "  - run: echo broken-step >&2; exit 3\n"))
    rev3 = repo.push("broken")
    st = wait_status(app, NAME, lambda r: r["phase"] == "Stalled" and r["revision"] == f"git:{rev3}",
                     "Stalled after a broken commit")
    assert st["reason"] == "BuildFailed", st
    assert "exit code 3" in st["message"] and "step 2" in st["message"], st
    assert st["build_id"] == build2, "the previous build must keep serving"
    still = Sandbox.create(template=NAME, timeout=120)
    assert still.commands.run("cat /etc/gitops-marker").stdout.strip() == "v2"
    still.kill()

    # An invalid file stalls the source and changes nothing.
    repo.write(f"{NAME}.yaml", "version: 1\nname: gitops-t\nstepz: []\n")
    rev4 = repo.push("invalid")
    src = wait_status(app, "", lambda r: r["phase"] == "Stalled" and r["revision"] == f"git:{rev4}",
                      "the source Stalled on an invalid file")
    assert "stepz" in src["message"] and f"{NAME}.yaml" in src["message"], src
    assert status_of(app, NAME)["build_id"] == build2

    # --- delete: drained while sandboxes run, then gone ------------------
    repo.remove(f"{NAME}.yaml")
    rev5 = repo.push("delete")
    wait_status(app, NAME, lambda r: r["phase"] == "Draining" and r["revision"] == f"git:{rev5}",
                "Draining while its sandboxes run")
    res = app.api("POST", "/v2/sandboxes", {"templateID": NAME})
    assert res.status == 404, f"no new sandboxes from a removed template: {res!r}"
    assert old.commands.run("cat /etc/gitops-marker").stdout.strip() == "v1"
    old.kill()
    new.kill()
    app.api("POST", "/reconcile")
    wait_until(lambda: status_of(app, NAME) is None, timeout=60, interval=0.5,
               what="the drained template to be removed")
    # base (from the same repository) is untouched throughout.
    assert status_of(app, "base")["phase"] == "Ready"
