"""Template benchmark: git push → template Ready, through a real appliance
(`lelantos serve` with a git source), real builds in build VMs.

Prints a markdown table: one-line changes on a cached base (the builtin
image), the same on a cold OCI base (first pull from a local registry:
download, unpack, envd injection, mkfs, then the build) and on that base once
cached, and the build cache hit ratio over the whole sequence (reverting to
content built before is a hit: builds are keyed by content).

    LELANTOS_BIN=... LELANTOS_IMAGE_MANIFEST=... python templates_bench.py [changes]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "appliance"))
sys.path.insert(0, str(ROOT / "tests" / "lib"))
from gitops_kit import Repo, wait_status  # noqa: E402
from harness import Appliance  # noqa: E402
from registry import Registry, push_rootfs_image  # noqa: E402
from testkit import pct  # noqa: E402

POLL_S = 1


def definition(name: str, marker: str, base: str = "builtin") -> str:
    return f"version: 1\nname: {name}\nbase: {base}\nsteps:\n  - run: echo {marker} > /etc/bench-marker\n"


def push_and_wait(app: Appliance, repo: Repo, name: str, text: str) -> tuple[float, str]:
    """Pushes `text` as `name`'s definition; returns (ms until Ready, reason)."""
    repo.write(f"{name}.yaml", text)
    t0 = time.monotonic()
    rev = repo.push(f"{name}: change")
    row = wait_status(app, name, lambda r: r["revision"] == f"git:{rev}" and r["phase"] in ("Ready", "Stalled"),
                      "Ready at the pushed revision", timeout=600)
    if row["phase"] != "Ready":
        raise RuntimeError(f"{name} stalled: {row['message']}")
    return (time.monotonic() - t0) * 1000, row["reason"]


def main() -> None:
    changes = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    work = Path(tempfile.mkdtemp(prefix="lel-tbench-"))
    repo = Repo(work)
    app = Appliance.from_env(log_dir=work / "logs")
    app.config = repo.config(work / "lelantos.yaml", POLL_S)
    reasons: list[str] = []
    warm, cold, cold_warm, revert = [], [], [], []
    registry = None
    try:
        repo.push("base only")
        app.start()
        wait_status(app, "base", lambda r: r["phase"] == "Ready", "base Ready")

        for i in range(changes):
            ms, reason = push_and_wait(app, repo, "bench-warm", definition("bench-warm", f"v{i}"))
            warm.append(ms)
            reasons.append(reason)
        ms, reason = push_and_wait(app, repo, "bench-warm", definition("bench-warm", "v0"))
        revert.append(ms)
        reasons.append(reason)

        registry = Registry(work)
        manifest = Path(app.manifest)
        rootfs = manifest.parent / json.loads(manifest.read_text())["rootfs"]["file"]
        (work / "oci").mkdir()
        reference = push_rootfs_image(registry.host, rootfs, work / "oci", "bench/base:1")
        base = "{image: \"" + reference + "\"}"
        ms, reason = push_and_wait(app, repo, "bench-cold", definition("bench-cold", "c0", base))
        cold.append(ms)
        reasons.append(reason)
        for i in range(1, changes):
            ms, reason = push_and_wait(app, repo, "bench-cold", definition("bench-cold", f"c{i}", base))
            cold_warm.append(ms)
            reasons.append(reason)
    finally:
        app.close()
        if registry is not None:
            registry.close()

    hits = reasons.count("BuildCached")
    print(f"template benchmark (lelantos serve, git source on file://, poll {POLL_S} s, "
          f"{changes} changes per row; build VMs under the host's accelerator; log {app.log})")
    print("| metric | p50 | max | runs |")
    print("|---|---|---|---|")

    def row(name: str, values: list[float]) -> None:
        if values:
            print(f"| {name} | {pct(values, 0.5):.0f} | {max(values):.0f} | {len(values)} |")

    row("git push → Ready, one-line change, cached base (builtin) (ms)", warm)
    row("git push → Ready, revert to a built version: cache hit (ms)", revert)
    row("git push → Ready, cold OCI base: pull + unpack + mkfs + build (ms)", cold)
    row("git push → Ready, one-line change on that OCI base, now cached (ms)", cold_warm)
    print(f"| build cache hit ratio | {hits}/{len(reasons)} = {hits / len(reasons):.0%} | | {len(reasons)} |")


if __name__ == "__main__":
    main()
