"""A throwaway OCI registry on 127.0.0.1 (Debian's `docker-registry`) and an
image made from the builtin guest rootfs (it has bash, which `commands.run`
needs): dumped with debugfs, packed with umoci, pushed with skopeo. Used by
the template tests and the template benchmark. Needs: docker-registry, umoci,
skopeo, debugfs (e2fsprogs)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from testkit import die_with_parent, free_port

REGISTRY_BIN = "/usr/bin/docker-registry"
TOOLS = (REGISTRY_BIN, "umoci", "skopeo", "debugfs")
REGISTRY_DEADLINE_S = 30.0
# An image push of ~350 MB of files, gzip on one core.
TOOL_TIMEOUT_S = 300


def missing_tools() -> list[str]:
    return [t for t in TOOLS if not shutil.which(t)]


def run_tool(argv: list[str], log: Path) -> None:
    """Runs one packaging tool, its output appended to `log`; raises on failure."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             timeout=TOOL_TIMEOUT_S)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {out.returncode}; see {log}:\n{log.read_text()[-3000:]}")


class Registry:
    """`docker-registry serve` with filesystem storage under `root`."""

    def __init__(self, root: Path) -> None:
        missing = missing_tools()
        if missing:
            raise RuntimeError(f"missing {missing}: apt-get install docker-registry umoci skopeo e2fsprogs")
        port = free_port()
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        self.log = root / "registry.log"
        self.host = f"127.0.0.1:{port}"
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent)
        deadline = time.monotonic() + REGISTRY_DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as res:
                    if res.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"registry not up after {REGISTRY_DEADLINE_S}s:\n{self.log.read_text()}")
            time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def push_rootfs_image(registry: str, rootfs: Path, work: Path, repo: str = "test/img:1",
                      extra_files: dict[str, str] | None = None) -> str:
    """The ext4 `rootfs` as a one-layer OCI image `registry/repo`, plus
    `extra_files` (path in the image → content); returns the reference."""
    log = work / "tools.log"
    layout, bundle = work / "layout", work / "bundle"
    tag = repo.rsplit(":", 1)[-1]
    run_tool(["umoci", "init", "--layout", str(layout)], log)
    run_tool(["umoci", "new", "--image", f"{layout}:{tag}"], log)
    run_tool(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)], log)
    tree = bundle / "rootfs"
    tree.mkdir(exist_ok=True)
    # debugfs reads the ext4 image without mounting it (no loop device).
    run_tool(["debugfs", "-R", f"rdump / {tree}", str(rootfs)], log)
    shutil.rmtree(tree / "lost+found", ignore_errors=True)
    for path, content in (extra_files or {}).items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    run_tool(["umoci", "repack", "--image", f"{layout}:{tag}", str(bundle)], log)
    run_tool(["umoci", "config", "--image", f"{layout}:{tag}",
              "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], log)
    reference = f"{registry}/{repo}"
    run_tool(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{reference}"],
             log)
    shutil.rmtree(bundle, ignore_errors=True)
    return reference
