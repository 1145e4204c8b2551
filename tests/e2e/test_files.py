"""files.*: write/read through /files, and the filesystem RPCs (spec §3.2, §4.4)."""

import hashlib
import os

import pytest
from e2b import FileNotFoundException, FileType, NotFoundException, Sandbox


def test_write_read_text(sbx: Sandbox, workdir: str):
    path = f"{workdir}/hello.txt"
    content = "hello from the stock SDK ✓\nsecond line\n"
    info = sbx.files.write(path, content)
    assert info.path == path
    assert info.name == "hello.txt"
    assert info.type == FileType.FILE
    assert sbx.files.read(path) == content
    # Cross-check inside the sandbox, not through /files.
    assert sbx.commands.run(f"cat {path}").stdout == content


def test_write_relative_path_lands_in_home(sbx: Sandbox, workdir: str):
    rel = workdir.removeprefix("/home/user/") + "/rel.txt"
    info = sbx.files.write(rel, "relative")
    assert info.path == f"/home/user/{rel}"
    assert sbx.files.read(f"/home/user/{rel}") == "relative"


def test_binary_round_trip_10mib(sbx: Sandbox, workdir: str):
    path = f"{workdir}/random.bin"
    data = os.urandom(10 * 1024 * 1024)
    sbx.files.write(path, data)
    back = sbx.files.read(path, format="bytes")
    assert len(back) == len(data)
    assert bytes(back) == data
    digest = sbx.commands.run(f"sha256sum {path}").stdout.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()
    assert sbx.files.get_info(path).size == len(data)


def test_write_overwrites(sbx: Sandbox, workdir: str):
    path = f"{workdir}/over.txt"
    sbx.files.write(path, "a much longer first version")
    sbx.files.write(path, "short")
    assert sbx.files.read(path) == "short"


def test_write_files(sbx: Sandbox, workdir: str):
    entries = [
        {"path": f"{workdir}/one.txt", "data": "first"},
        {"path": f"{workdir}/nested/deeper/two.bin", "data": b"\x00\x01\x02\xff"},
        {"path": f"{workdir}/three.txt", "data": "third ✓"},
    ]
    infos = sbx.files.write_files(entries)
    assert sorted(i.path for i in infos) == sorted(e["path"] for e in entries)
    assert sbx.files.read(entries[0]["path"]) == "first"
    assert bytes(sbx.files.read(entries[1]["path"], format="bytes")) == b"\x00\x01\x02\xff"
    assert sbx.files.read(entries[2]["path"]) == "third ✓"


def test_read_missing_file(sbx: Sandbox, workdir: str):
    with pytest.raises(FileNotFoundException):
        sbx.files.read(f"{workdir}/missing.txt")


def test_list_depth(sbx: Sandbox, workdir: str):
    sbx.files.write_files([
        {"path": f"{workdir}/a.txt", "data": "a"},
        {"path": f"{workdir}/sub/b.txt", "data": "b"},
        {"path": f"{workdir}/sub/deeper/c.txt", "data": "c"},
    ])
    one = sbx.files.list(workdir)
    assert [(e.name, e.type) for e in one] == [("a.txt", FileType.FILE), ("sub", FileType.DIR)]
    assert [e.path for e in one] == [f"{workdir}/a.txt", f"{workdir}/sub"]

    two = sbx.files.list(workdir, depth=2)
    # Lexical pre-order: a directory comes before its children.
    assert [e.path for e in two] == [
        f"{workdir}/a.txt",
        f"{workdir}/sub",
        f"{workdir}/sub/b.txt",
        f"{workdir}/sub/deeper",
    ]
    assert [e.type for e in two] == [FileType.FILE, FileType.DIR, FileType.FILE, FileType.DIR]


def test_list_missing_dir(sbx: Sandbox, workdir: str):
    with pytest.raises(NotFoundException):
        sbx.files.list(f"{workdir}/nope")


def test_exists(sbx: Sandbox, workdir: str):
    path = f"{workdir}/exists.txt"
    assert sbx.files.exists(path) is False
    sbx.files.write(path, "x")
    assert sbx.files.exists(path) is True
    assert sbx.files.exists(workdir) is True


def test_get_info_file(sbx: Sandbox, workdir: str):
    path = f"{workdir}/info.txt"
    sbx.files.write(path, "12345")
    info = sbx.files.get_info(path)
    assert info.name == "info.txt"
    assert info.path == path
    assert info.type == FileType.FILE
    assert info.size == 5
    assert info.mode == 0o644
    assert info.permissions == "-rw-r--r--"
    assert info.owner == "user"
    assert info.group == "user"
    assert info.modified_time.tzinfo is not None
    assert info.symlink_target is None


def test_get_info_dir(sbx: Sandbox, workdir: str):
    sbx.files.make_dir(workdir)
    info = sbx.files.get_info(workdir)
    assert info.type == FileType.DIR
    assert info.permissions == "drwxr-xr-x"
    assert info.mode == 0o755
    assert info.owner == "user"


def test_get_info_missing(sbx: Sandbox, workdir: str):
    with pytest.raises(FileNotFoundException):
        sbx.files.get_info(f"{workdir}/missing")


def test_write_as_root(sbx: Sandbox, workdir: str):
    path = f"{workdir}/root-owned.txt"
    sbx.files.make_dir(workdir)
    sbx.files.write(path, "r", user="root")
    assert sbx.files.get_info(path).owner == "root"


def test_make_dir(sbx: Sandbox, workdir: str):
    path = f"{workdir}/x/y/z"
    assert sbx.files.make_dir(path) is True
    assert sbx.files.make_dir(path) is False
    info = sbx.files.get_info(path)
    assert info.type == FileType.DIR
    assert info.owner == "user"
    assert sbx.files.get_info(f"{workdir}/x").type == FileType.DIR


def test_rename(sbx: Sandbox, workdir: str):
    src = f"{workdir}/old.txt"
    dst = f"{workdir}/moved/new.txt"
    sbx.files.write(src, "payload")
    info = sbx.files.rename(src, dst)
    assert info.path == dst
    assert info.name == "new.txt"
    assert sbx.files.exists(src) is False
    assert sbx.files.read(dst) == "payload"


def test_rename_missing_source(sbx: Sandbox, workdir: str):
    with pytest.raises(NotFoundException):
        sbx.files.rename(f"{workdir}/nope", f"{workdir}/still-nope")


def test_remove(sbx: Sandbox, workdir: str):
    sbx.files.write(f"{workdir}/tree/leaf.txt", "x")
    sbx.files.write(f"{workdir}/single.txt", "y")
    sbx.files.remove(f"{workdir}/single.txt")
    assert sbx.files.exists(f"{workdir}/single.txt") is False
    sbx.files.remove(f"{workdir}/tree")
    assert sbx.files.exists(f"{workdir}/tree") is False
    # Removing what is not there is not an error.
    sbx.files.remove(f"{workdir}/tree")
