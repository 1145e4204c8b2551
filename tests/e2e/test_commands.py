"""commands.*: foreground runs, exit codes, env, cwd, users, timeouts,
background handles, list/connect/kill and stdin (spec §4.2, §4.3)."""

import time
import uuid

import pytest
from e2b import (
    CommandExitException,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    TimeoutException,
)

from helpers import wait_until


def _running(sbx: Sandbox, marker: str):
    """Processes envd lists whose command line contains `marker`."""
    return [p for p in sbx.commands.list() if marker in " ".join(p.args)]


def _assert_gone(sbx: Sandbox, pid: int) -> None:
    """The OS process `pid` no longer exists (polled: teardown may be asynchronous)."""
    sbx.commands.run(f"for i in $(seq 50); do kill -0 {pid} 2>/dev/null || exit 0; "
                     "sleep 0.1; done; exit 1", user="root")


def test_run_stdout(sbx: Sandbox):
    r = sbx.commands.run("echo hello")
    assert r.exit_code == 0
    assert r.stdout == "hello\n"
    assert r.stderr == ""
    assert r.error is None


def test_run_stderr(sbx: Sandbox):
    r = sbx.commands.run("echo oops >&2")
    assert r.exit_code == 0
    assert r.stdout == ""
    assert r.stderr == "oops\n"


def test_large_output_is_complete(sbx: Sandbox):
    r = sbx.commands.run("head -c 200000 /dev/zero | tr '\\0' x")
    assert r.stdout == "x" * 200000


def test_nonzero_exit_raises(sbx: Sandbox):
    with pytest.raises(CommandExitException) as info:
        sbx.commands.run("echo out; echo err >&2; exit 3")
    e = info.value
    assert e.exit_code == 3
    assert e.stdout == "out\n"
    assert e.stderr == "err\n"
    assert e.error == "exit status 3"


def test_envs(sbx: Sandbox):
    r = sbx.commands.run('echo "$FOO|$BAR"', envs={"FOO": "foo value", "BAR": "b=1"})
    assert r.stdout == "foo value|b=1\n"


def test_sandbox_env_is_set(sbx: Sandbox):
    r = sbx.commands.run('echo "$E2B_SANDBOX"')
    assert r.stdout == "true\n"


def test_cwd(sbx: Sandbox):
    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"


def test_default_cwd_is_home(sbx: Sandbox):
    assert sbx.commands.run("pwd").stdout == "/home/user\n"


def test_missing_cwd_is_invalid_argument(sbx: Sandbox):
    with pytest.raises(InvalidArgumentException):
        sbx.commands.run("pwd", cwd="/nonexistent-e2e-dir")


def test_default_user(sbx: Sandbox):
    r = sbx.commands.run('whoami; echo "$HOME"')
    assert r.stdout == "user\n/home/user\n"


def test_root_user(sbx: Sandbox):
    r = sbx.commands.run('whoami; echo "$HOME"', user="root")
    assert r.stdout == "root\n/root\n"


def test_timeout_raises(sbx: Sandbox):
    start = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - start < 10


def test_timeout_kills_the_process(sbx: Sandbox):
    marker = f"e2e-{uuid.uuid4().hex[:8]}"
    with pytest.raises(TimeoutException):
        sbx.commands.run(f"sleep 30 # {marker}", timeout=1)
    wait_until(lambda: not _running(sbx, marker), timeout=5,
               what="envd to end the process at its deadline")


def test_background_list_kill_wait(sbx: Sandbox):
    marker = f"e2e-{uuid.uuid4().hex[:8]}"
    h = sbx.commands.run(f"sleep 120 # {marker}", background=True)
    try:
        assert h.pid > 0
        listed = _running(sbx, marker)
        assert [p.pid for p in listed] == [h.pid]
        assert listed[0].cmd == "/bin/bash"
        assert listed[0].args == ["-l", "-c", f"sleep 120 # {marker}"]
        assert h.kill() is True
        with pytest.raises(CommandExitException) as info:
            h.wait()
        assert info.value.exit_code == -1
        assert "signal: killed" in (info.value.error or "")
        wait_until(lambda: not _running(sbx, marker), what="killed process to leave the list")
        _assert_gone(sbx, h.pid)
    finally:
        sbx.commands.kill(h.pid)


def test_background_wait_collects_output(sbx: Sandbox):
    h = sbx.commands.run("echo one; sleep 0.2; echo two >&2; echo three", background=True)
    r = h.wait()
    assert r.exit_code == 0
    assert r.stdout == "one\nthree\n"
    assert r.stderr == "two\n"


def test_connect_reattaches(sbx: Sandbox, workdir: str):
    gate = f"{workdir}/go"
    sbx.commands.run(f"mkdir -p {workdir}")
    h = sbx.commands.run(
        f"echo before; "
        f"while [ ! -e {gate} ]; do sleep 0.05; done; echo after-$((40+2))",
        background=True,
    )
    try:
        h.disconnect()
        again = sbx.commands.connect(h.pid)
        assert again.pid == h.pid
        sbx.commands.run(f"touch {gate}")
        r = again.wait()
        assert r.exit_code == 0
        assert "after-42\n" in r.stdout
    finally:
        sbx.commands.kill(h.pid)


def test_connect_unknown_pid(sbx: Sandbox):
    with pytest.raises(NotFoundException):
        sbx.commands.connect(4_000_000)


def test_kill_unknown_pid_is_false(sbx: Sandbox):
    assert sbx.commands.kill(4_000_000) is False


def test_send_stdin_then_close(sbx: Sandbox):
    h = sbx.commands.run("cat", background=True, stdin=True, timeout=20)
    try:
        sbx.commands.send_stdin(h.pid, "hello\n")
        h.send_stdin("world ✓\n")
        sbx.commands.close_stdin(h.pid)
        r = h.wait()
        assert r.exit_code == 0
        assert r.stdout == "hello\nworld ✓\n"
    finally:
        sbx.commands.kill(h.pid)


def test_send_stdin_streams_output(sbx: Sandbox):
    h = sbx.commands.run("cat", background=True, stdin=True, timeout=20)
    try:
        sbx.commands.send_stdin(h.pid, "ping")
        for stdout, _, _ in h:
            assert stdout == "ping"
            break
    finally:
        sbx.commands.kill(h.pid)


def test_without_stdin_reads_eof(sbx: Sandbox):
    r = sbx.commands.run("cat; echo done", stdin=False, timeout=10)
    assert r.stdout == "done\n"
