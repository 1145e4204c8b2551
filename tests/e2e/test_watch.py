"""files.watch_dir (py: CreateWatcher + GetWatcherEvents polling), spec §4.4."""

import pytest
from e2b import FilesystemEventType, NotFoundException, Sandbox, SandboxException

from helpers import wait_until


def _collect_until(handle, done, timeout: float = 5.0):
    """Polls the watcher, accumulating events until `done(events)` holds."""
    events = []

    def poll():
        events.extend(handle.get_new_events())
        return done(events)

    wait_until(poll, timeout=timeout, what=f"watch events (got {events!r})")
    return events


def test_watch_new_file_events(sbx: Sandbox, workdir: str):
    sbx.files.make_dir(workdir)
    handle = sbx.files.watch_dir(workdir)
    try:
        sbx.files.write(f"{workdir}/w.txt", "watched")
        events = _collect_until(
            handle, lambda ev: any(e.type == FilesystemEventType.WRITE for e in ev))
        # A new file uploaded through /files: created, chowned, written (§4.4).
        assert [(e.type, e.name) for e in events] == [
            (FilesystemEventType.CREATE, "w.txt"),
            (FilesystemEventType.CHMOD, "w.txt"),
            (FilesystemEventType.WRITE, "w.txt"),
        ]
        assert handle.get_new_events() == []
    finally:
        handle.stop()


def test_watch_sees_remove_and_rename(sbx: Sandbox, workdir: str):
    sbx.files.write(f"{workdir}/a.txt", "a")
    sbx.files.write(f"{workdir}/b.txt", "b")
    handle = sbx.files.watch_dir(workdir)
    try:
        sbx.files.rename(f"{workdir}/a.txt", f"{workdir}/c.txt")
        sbx.files.remove(f"{workdir}/b.txt")
        events = _collect_until(
            handle, lambda ev: any(e.type == FilesystemEventType.REMOVE for e in ev))
        seen = {(e.type, e.name) for e in events}
        assert (FilesystemEventType.RENAME, "a.txt") in seen
        assert (FilesystemEventType.CREATE, "c.txt") in seen
        assert (FilesystemEventType.REMOVE, "b.txt") in seen
    finally:
        handle.stop()


def test_watch_recursive(sbx: Sandbox, workdir: str):
    sbx.files.make_dir(f"{workdir}/sub")
    handle = sbx.files.watch_dir(workdir, recursive=True)
    try:
        sbx.files.write(f"{workdir}/sub/deep.txt", "deep")
        events = _collect_until(
            handle, lambda ev: any(e.type == FilesystemEventType.WRITE for e in ev))
        assert events[0].type == FilesystemEventType.CREATE
        assert events[0].name == "sub/deep.txt"
    finally:
        handle.stop()


def test_watch_missing_dir(sbx: Sandbox, workdir: str):
    with pytest.raises(NotFoundException):
        sbx.files.watch_dir(f"{workdir}/missing")


def test_watch_a_file_is_refused(sbx: Sandbox, workdir: str):
    sbx.files.write(f"{workdir}/plain.txt", "x")
    with pytest.raises(SandboxException):
        sbx.files.watch_dir(f"{workdir}/plain.txt")
