"""pty.*: create, send_stdin, resize, kill (spec §4.3)."""

import pytest
from e2b import CommandExitException, PtySize, Sandbox


def _run_pty(sbx: Sandbox, script: bytes, size=PtySize(rows=24, cols=80), resize_to=None) -> str:
    """Opens a PTY, optionally resizes it, types `script` and waits for the shell to exit."""
    term = sbx.pty.create(size, timeout=30)
    try:
        if resize_to is not None:
            sbx.pty.resize(term.pid, resize_to)
        sbx.pty.send_stdin(term.pid, script)
        chunks: list[bytes] = []
        result = term.wait(on_pty=chunks.append)
        assert result.exit_code == 0
        return b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        sbx.pty.kill(term.pid)


def test_pty_runs_an_interactive_shell(sbx: Sandbox):
    out = _run_pty(sbx, b"[ -t 0 ] && echo tty-$((6*7)); echo \"term=$TERM\"; exit\n")
    assert "tty-42" in out
    assert "term=xterm-256color" in out


def test_pty_size(sbx: Sandbox):
    out = _run_pty(sbx, b"stty size; tput cols; exit\n", size=PtySize(rows=24, cols=80))
    assert "24 80" in out
    assert "\n80" in out.replace("\r", "")


def test_pty_resize(sbx: Sandbox):
    out = _run_pty(sbx, b"stty size; exit\n", size=PtySize(rows=24, cols=80),
                   resize_to=PtySize(rows=30, cols=100))
    assert "30 100" in out
    assert "24 80" not in out


def test_pty_kill(sbx: Sandbox):
    term = sbx.pty.create(PtySize(rows=24, cols=80), timeout=30)
    assert sbx.pty.kill(term.pid) is True
    with pytest.raises(CommandExitException) as info:
        term.wait()
    assert info.value.exit_code == -1
    # The shell itself is gone, not just the stream (teardown may be asynchronous).
    sbx.commands.run(f"for i in $(seq 50); do kill -0 {term.pid} 2>/dev/null || exit 0; "
                     "sleep 0.1; done; exit 1", user="root")


def test_pty_kill_unknown_pid_is_false(sbx: Sandbox):
    assert sbx.pty.kill(4_000_000) is False
