"""envd benchmark through the stock E2B SDK (debug mode, straight to envd).

Prints a table: commands.run('true') latency next to a bare fork+exec+wait
of /bin/true on the same machine, and 256 MiB files.write / files.read
throughput next to a raw loopback TCP copy. Not a test: nothing asserts.

Usage: python envd_bench.py <envd-binary> [runs]
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from testkit import free_port, pct, time_ms  # noqa: E402


def spawn_ms(n: int, argv, env=None):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env if env is not None else {})
        os.waitpid(pid, 0)
        out.append((time.perf_counter() - t) * 1000)
    return out


def loopback_copy_mib_s(size: int) -> float:
    chunk = b"\0" * (1 << 20)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = [0]

    def sink():
        conn, _ = srv.accept()
        buf = bytearray(1 << 20)
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            got[0] += n
        conn.close()

    th = threading.Thread(target=sink)
    th.start()
    c = socket.create_connection(srv.getsockname())
    t = time.perf_counter()
    sent = 0
    while sent < size:
        c.sendall(chunk)
        sent += len(chunk)
    c.close()
    th.join()
    dt = time.perf_counter() - t
    srv.close()
    assert got[0] == size
    return size / (1 << 20) / dt


def main():
    envd = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="envd-bench-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [envd, "--listen", f"127.0.0.1:{port}", "--default-user", "root"],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.time() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 204:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("envd did not start")
            time.sleep(0.05)
        os.environ.update(
            E2B_DEBUG="true",
            E2B_SANDBOX_URL=f"http://127.0.0.1:{port}",
            E2B_API_KEY="e2b_0123456789abcdef0123456789abcdef01234567",
        )
        from e2b import Sandbox

        sbx = Sandbox.create()
        sdk = time_ms(lambda: sbx.commands.run("true"), runs)
        bare = spawn_ms(max(runs, 1000), ["/bin/true"])
        # What commands.run really asks for: a login shell running the command.
        # With the environment envd gives it (envd clears everything else).
        login = spawn_ms(
            runs,
            ["/bin/bash", "-l", "-c", "true"],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", "USER": "root", "LOGNAME": "root", "E2B_SANDBOX": "true"},
        )

        size = 256 << 20
        data = os.urandom(1 << 20) * 256
        path = tempfile.mkdtemp(prefix="envd-bench-") + "/blob.bin"
        t = time.perf_counter()
        sbx.files.write(path, data)
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        back = sbx.files.read(path, format="bytes")
        read_s = time.perf_counter() - t
        assert len(back) == size and back[:4096] == data[:4096]
        os.unlink(path)
        tcp = loopback_copy_mib_s(size)

        from importlib.metadata import version as pkg_version

        version = pkg_version("e2b")
        s50, s99 = pct(sdk, 0.5), pct(sdk, 0.99)
        b50, b99 = pct(bare, 0.5), pct(bare, 0.99)
        w, r = size / (1 << 20) / write_s, size / (1 << 20) / read_s
        print(f"envd benchmark (stock e2b SDK {version}, debug mode straight to envd, {runs} runs)")
        print("| metric | p50 | p99 | baseline p50 | ratio (p50) |")
        print("|---|---|---|---|---|")
        print(f"| commands.run('true') (ms) | {s50:.2f} | {s99:.2f} | fork+exec+wait /bin/true {b50:.2f} (p99 {b99:.2f}) | {s50 / b50:.1f}x |")
        l50, l99 = pct(login, 0.5), pct(login, 0.99)
        print(f"| same command spawned directly: bash -l -c true (ms) | {l50:.2f} | {l99:.2f} | | envd+SDK overhead {s50 - l50:.2f} ms |")
        print(f"| files.write 256 MiB (MiB/s) | {w:.0f} | | loopback TCP copy {tcp:.0f} | {tcp / w:.1f}x slower |")
        print(f"| files.read 256 MiB (MiB/s) | {r:.0f} | | loopback TCP copy {tcp:.0f} | {tcp / r:.1f}x slower |")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
