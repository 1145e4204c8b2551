"""A template repository the way an operator has one (a bare repository the
appliance fetches, a work tree that is edited and pushed) and status polling.
Shared by test_gitops.py and the template benchmark."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from testkit import wait_until

ROOT = Path(__file__).resolve().parents[2]


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                              "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    assert out.returncode == 0, f"git {args}: {out.stderr}"
    return out.stdout.strip()


class Repo:
    """`templates.git` (bare) and `work/` under `base`; definitions live in
    `templates.d/`, starting with the repository's `base.yaml`."""

    def __init__(self, base: Path) -> None:
        self.bare = base / "templates.git"
        self.work = base / "work"
        git(base, "init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git(base, "clone", "--quiet", str(self.bare), str(self.work))
        git(self.work, "checkout", "--quiet", "-b", "main")
        (self.work / "templates.d").mkdir()
        shutil.copy(ROOT / "templates.d" / "base.yaml", self.work / "templates.d" / "base.yaml")

    def write(self, name: str, text: str) -> None:
        path = self.work / "templates.d" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def remove(self, name: str) -> None:
        (self.work / "templates.d" / name).unlink()

    def push(self, message: str) -> str:
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "-m", message)
        git(self.work, "push", "--quiet", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")

    def config(self, path: Path, poll_s: int) -> Path:
        """A daemon config naming this repository as the template source."""
        path.write_text(
            "version: 1\n"
            "templates_git:\n"
            f"  url: file://{self.bare}\n"
            "  branch: main\n"
            "  path: templates.d\n"
            f"  poll_interval_s: {poll_s}\n")
        return path


def status_of(app, name: str) -> dict | None:
    """The `GET /status` row of `name` ('' is the source), or None."""
    res = app.api("GET", "/status")
    assert res.status == 200, res
    return next((r for r in res.json()["rows"] if r["name"] == name), None)


def wait_status(app, name: str, pred, what: str, timeout: float = 180) -> dict:
    """Polls until `name`'s status row satisfies `pred`; returns it."""
    def check():
        row = status_of(app, name)
        return row if row is not None and pred(row) else None
    return wait_until(check, timeout=timeout, interval=0.25, what=f"{name}: {what}")
