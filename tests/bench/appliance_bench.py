"""Appliance benchmark through the stock E2B SDK against a real `lelantos serve`.

Prints a markdown table (not a test: nothing asserts):
  - API create → envd ready: wall time of `Sandbox.create()` (REST create, VM
    boot, envd healthy), over N creates;
  - `commands.run('true')` through the appliance's proxy vs straight to envd:
    the direct numbers come from a child Python process started with
    `ip netns exec <the sandbox's netns>`, talking to the guest at
    169.254.0.21:49983. Inside the namespace the REST API is unreachable, so
    the child does not call `Sandbox.connect`: it builds the handle for the
    same sandbox id from the envd token and version this process got, which
    is exactly what `connect` would hand it;
  - in-RAM pause (`sbx.pause()`) and resume (`Sandbox.connect` on the paused
    sandbox), and resume → first command done.
With a handful of runs p99 is the maximum.

Usage (as root; same environment as tests/appliance):
    LELANTOS_BIN=... LELANTOS_IMAGE_MANIFEST=... python appliance_bench.py [creates] [runs]
creates (default 5) also sets the number of pause/resume cycles; runs (default
100) is the number of timed commands.run calls per path.
Optional: LELANTOS_TEMPLATES_DIR, LELANTOS_LOG_DIR (the daemon log is kept there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "appliance"))
sys.path.insert(0, str(ROOT / "tests" / "lib"))
from testkit import pct, time_ms  # noqa: E402

GUEST_ENVD = "http://169.254.0.21:49983"
NETNS_PREFIX = "lel-"
WARMUP = 5


def time_runs(sbx, runs: int) -> list[float]:
    return time_ms(lambda: sbx.commands.run("true"), runs, warmup=WARMUP)


def direct_child() -> None:
    """`--direct`: runs inside the sandbox's netns; prints the timings as JSON."""
    from e2b import Sandbox
    from e2b.connection_config import ConnectionConfig
    from packaging.version import Version

    sid = os.environ["BENCH_SANDBOX_ID"]
    token = os.environ.get("BENCH_ENVD_TOKEN") or None
    headers = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983"}
    if token:
        headers["X-Access-Token"] = token
    config = ConnectionConfig(sandbox_url=os.environ["E2B_SANDBOX_URL"],
                              extra_sandbox_headers=headers)
    sbx = Sandbox(sandbox_id=sid, sandbox_domain=None,
                  envd_version=Version(os.environ["BENCH_ENVD_VERSION"]),
                  envd_access_token=token, traffic_access_token=None,
                  connection_config=config)
    runs = int(os.environ["BENCH_RUNS"])
    host, port = GUEST_ENVD.removeprefix("http://").split(":")
    print(json.dumps({"run": time_runs(sbx, runs),
                      "health": health_runs(host, int(port), headers, runs)}))


def health_runs(host: str, port: int, headers: dict, runs: int) -> list[float]:
    """`GET /health` on one kept-alive connection: the transport alone."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=10)

    def one() -> None:
        conn.request("GET", "/health", headers=headers)
        res = conn.getresponse()
        res.read()
        assert res.status == 204, res.status

    try:
        return time_ms(one, runs, warmup=WARMUP)
    finally:
        conn.close()


def only_netns(deadline_s: float = 20) -> str:
    """The one `lel-` namespace (waits for killed sandboxes' namespaces to go)."""
    last: list[str] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
        last = [line.split()[0] for line in out.stdout.splitlines()
                if line.startswith(NETNS_PREFIX)]
        if len(last) == 1:
            return last[0]
        time.sleep(0.2)
    raise RuntimeError(f"want exactly one {NETNS_PREFIX}* netns, found {last}")


def direct_runs(sbx, runs: int) -> dict:
    ns = only_netns()
    env = {
        **os.environ,
        "E2B_SANDBOX_URL": GUEST_ENVD,
        "BENCH_SANDBOX_ID": sbx.sandbox_id,
        "BENCH_ENVD_TOKEN": sbx._envd_access_token or "",
        "BENCH_ENVD_VERSION": str(sbx._envd_version),
        "BENCH_RUNS": str(runs),
    }
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--direct"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"direct child exited {out.returncode}: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def envd_headers(sbx) -> dict:
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
    if sbx._envd_access_token:
        headers["X-Access-Token"] = sbx._envd_access_token
    return headers


def main() -> None:
    creates = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 100

    from harness import Appliance

    app = Appliance.from_env()
    app.start()
    for k in [k for k in os.environ if k.startswith("E2B_")]:
        del os.environ[k]
    os.environ.update(app.sdk_env())
    from e2b import Sandbox

    create_ms, pause_ms, resume_ms, first_ms = [], [], [], []
    direct: dict = {}
    direct_note = ""
    try:
        sbx = None
        for i in range(creates):
            t = time.perf_counter()
            s = Sandbox.create()
            create_ms.append((time.perf_counter() - t) * 1000)
            if i < creates - 1:
                s.kill()
            else:
                sbx = s
        assert sbx is not None

        # Proxy, direct, proxy again: the two proxy halves bracket the direct
        # runs, so drift (guest caches, host load) does not favour either path.
        half = max(1, runs // 2)
        proxy_ms = time_runs(sbx, half)
        proxy_health = health_runs("127.0.0.1", app.port, envd_headers(sbx), half)
        try:
            direct = direct_runs(sbx, runs)
        except Exception as e:  # noqa: BLE001 - report, don't abort the bench
            direct_note = f"skipped: {e}"
        proxy_ms += time_runs(sbx, half)
        proxy_health += health_runs("127.0.0.1", app.port, envd_headers(sbx), half)

        for _ in range(creates):
            t = time.perf_counter()
            sbx.pause()
            pause_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            sbx = Sandbox.connect(sbx.sandbox_id)
            resume_ms.append((time.perf_counter() - t) * 1000)
            sbx.commands.run("true")
            first_ms.append((time.perf_counter() - t) * 1000)
        sbx.kill()
    finally:
        notes = app.close()

    from importlib.metadata import version as pkg_version

    print(f"appliance benchmark (stock e2b SDK {pkg_version('e2b')}, lelantos serve on "
          f"127.0.0.1, {creates} creates and pause/resume cycles, {runs} commands per path; "
          f"daemon log {app.log})")
    print("| metric | p50 | p99 | notes |")
    print("|---|---|---|---|")

    def row(name: str, values: list[float], note: str = "") -> None:
        print(f"| {name} | {pct(values, 0.5):.1f} | {pct(values, 0.99):.1f} | {note} |")

    row("API create → envd ready: Sandbox.create (ms)", create_ms, f"{creates} runs")
    row("commands.run('true') through the proxy (ms)", proxy_ms, f"{len(proxy_ms)} runs")
    if direct:
        p50, d50 = pct(proxy_ms, 0.5), pct(direct["run"], 0.5)
        row("commands.run('true') straight to envd in the netns (ms)", direct["run"],
            f"proxy/direct p50 ratio {p50 / d50:.2f}x, proxy adds {p50 - d50:.1f} ms")
    else:
        print(f"| commands.run('true') straight to envd in the netns (ms) | | | {direct_note} |")
    row("GET /health, kept-alive connection, through the proxy (ms)", proxy_health,
        f"{len(proxy_health)} runs")
    if direct:
        p50, d50 = pct(proxy_health, 0.5), pct(direct["health"], 0.5)
        row("GET /health, kept-alive connection, straight to envd (ms)", direct["health"],
            f"proxy/direct p50 ratio {p50 / d50:.2f}x, proxy adds {p50 - d50:.2f} ms")
    row("pause, in RAM: sbx.pause() (ms)", pause_ms, f"{creates} runs")
    row("resume: Sandbox.connect on paused (ms)", resume_ms, f"{creates} runs")
    row("resume → first commands.run('true') done (ms)", first_ms, "includes the resume")
    for note in notes:
        print(f"\nteardown: {note}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--direct"]:
        direct_child()
    else:
        main()
