//! `filesystem.Filesystem` over real loopback HTTP, as the SDKs call it:
//! Connect JSON bodies in, JSON (or enveloped stream frames) out.
// clippy's allow-unwrap-in-tests covers #[test] bodies only, not the
// helpers below; in a test, panicking is how a failure is reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Frame, Stream, TestEnvd};
use serde_json::{Value, json};

const FS: &str = "filesystem.Filesystem";

fn method(name: &str) -> String {
    format!("{FS}/{name}")
}

/// `Authorization` header value for `user`, as the SDKs build it.
fn basic(user: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
    )
}

/// What the upload path does for a new file: create, fchown (to the same
/// owner), write, close. Watchers must see exactly CREATE, CHMOD, WRITE.
fn upload_like(path: &Path, content: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let meta = f.metadata().unwrap();
    std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid())).unwrap();
    f.write_all(content).unwrap();
}

/// Whether any inotify instance in this process (envd runs in-process)
/// watches the inode of `dir`, per `/proc/self/fdinfo`.
fn inotify_watches(dir: &Path) -> bool {
    let needle = format!("ino:{:x} ", std::fs::metadata(dir).unwrap().ino());
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    fds.flatten().any(|fd| {
        let is_inotify = std::fs::read_link(fd.path())
            .is_ok_and(|t| t.to_string_lossy() == "anon_inode:inotify");
        is_inotify
            && std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .is_ok_and(|info| info.contains(&needle))
    })
}

/// Polls `cond` until it holds or `limit` passes.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

fn is_keepalive(frame: &Frame) -> bool {
    matches!(frame, Frame::Msg(v) if v == &json!({"keepalive": {}}))
}

/// Reads frames until the first keepalive that follows at least one event
/// (a keepalive means a full interval of silence) and returns the events.
async fn events_until_quiet(stream: &mut Stream) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let frame = stream.next().await.expect("stream still open");
        if is_keepalive(&frame) {
            if !events.is_empty() {
                return events;
            }
            continue;
        }
        match frame {
            Frame::Msg(v) => events.push(v["filesystem"].clone()),
            Frame::End(v) => panic!("stream ended early: {v}"),
        }
    }
}

async fn open_watch(e: &TestEnvd, body: Value, headers: &[(&str, &str)]) -> Stream {
    let mut stream = e.stream(&method("WatchDir"), body, headers).await;
    let first = stream.next().await;
    assert_eq!(
        first,
        Some(Frame::Msg(json!({"start": {}}))),
        "start comes first"
    );
    stream
}

// ---------------------------------------------------------------- Stat

#[tokio::test]
async fn stat_file_has_sdk_json_shape() {
    let e = TestEnvd::start().await;
    let file = e.dir.path().join("hello.txt");
    std::fs::write(&file, "hello").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let (status, body) = e
        .unary(&method("Stat"), json!({"path": e.path("hello.txt")}))
        .await;
    assert_eq!(status, 200, "{body}");
    let entry = &body["entry"];
    assert_eq!(entry["name"], "hello.txt");
    assert_eq!(entry["type"], "FILE_TYPE_FILE");
    assert_eq!(entry["path"], e.path("hello.txt"));
    assert_eq!(entry["size"], "5", "int64 is a JSON string");
    assert_eq!(entry["mode"], 0o644);
    assert_eq!(entry["permissions"], "-rw-r--r--");
    assert_eq!(entry["owner"], common::current_user());
    assert!(entry["group"].as_str().is_some_and(|g| !g.is_empty()));
    assert!(
        entry.get("symlinkTarget").is_none(),
        "only symlinks carry a target: {entry}"
    );

    let modified = entry["modifiedTime"]
        .as_str()
        .expect("modifiedTime is a string");
    assert!(modified.ends_with('Z'), "UTC with Z: {modified}");
    let parsed =
        time::OffsetDateTime::parse(modified, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(parsed.unix_timestamp(), meta.mtime());
    assert_eq!(i64::from(parsed.nanosecond()), meta.mtime_nsec());
}

#[tokio::test]
async fn stat_directory_and_symlink() {
    let e = TestEnvd::start().await;
    let dir = e.dir.path().join("real");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("real", e.dir.path().join("link")).unwrap();

    let (status, body) = e
        .unary(&method("Stat"), json!({"path": e.path("real")}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entry"]["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(body["entry"]["permissions"], "drwxr-xr-x");
    assert_eq!(body["entry"]["mode"], 0o755);

    let (status, body) = e
        .unary(&method("Stat"), json!({"path": e.path("link")}))
        .await;
    assert_eq!(status, 200, "{body}");
    let entry = &body["entry"];
    assert_eq!(entry["name"], "link");
    assert_eq!(
        entry["type"], "FILE_TYPE_DIRECTORY",
        "a link reports its target's type"
    );
    assert_eq!(entry["permissions"], "Lrwxrwxrwx");
    let target = std::fs::canonicalize(&dir).unwrap();
    assert_eq!(entry["symlinkTarget"], target.display().to_string());
}

#[tokio::test]
async fn stat_missing_is_not_found() {
    let e = TestEnvd::start().await;
    let (status, body) = e
        .unary(&method("Stat"), json!({"path": e.path("nope")}))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with("file not found: "), "{msg}");
}

#[tokio::test]
async fn unknown_basic_auth_user_is_unauthenticated() {
    let e = TestEnvd::start().await;
    let auth = basic("no-such-user-xyz");
    let (status, body) = e
        .unary_with(
            &method("Stat"),
            json!({"path": e.path("")}),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthenticated");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no-such-user-xyz")
    );
}

#[tokio::test]
async fn empty_path_resolves_to_default_workdir() {
    let e = TestEnvd::start().await;
    let workdir = e.dir.path().to_path_buf();
    e.sandbox
        .update(|s| s.default_workdir = Some(workdir.clone()));
    let (status, body) = e.unary(&method("Stat"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entry"]["path"], workdir.display().to_string());
    // `~other` is refused before touching the filesystem.
    let (status, body) = e.unary(&method("Stat"), json!({"path": "~root2/x"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_argument");
}

#[tokio::test]
async fn permission_errors_map_to_permission_denied() {
    let e = TestEnvd::start().await;
    // As root, DAC checks are bypassed, so find a path the kernel refuses
    // even to root; as a normal user a mode-000 directory does it.
    let denied = if nix::unistd::geteuid().is_root() {
        let probe = Path::new("/sys/kernel/lelantos-fs-test");
        match std::fs::create_dir(probe) {
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => probe.to_path_buf(),
            other => {
                let _ = std::fs::remove_dir(probe);
                eprintln!("skipped: no root-proof path here ({other:?})");
                return;
            }
        }
    } else {
        let locked = e.dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        locked.join("inner")
    };
    let (status, body) = e
        .unary(
            &method("MakeDir"),
            json!({"path": denied.display().to_string()}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "permission_denied");
}

// ---------------------------------------------------------------- MakeDir

#[tokio::test]
async fn make_dir_creates_parents_and_reports_existing() {
    let e = TestEnvd::start().await;
    let (status, body) = e
        .unary(&method("MakeDir"), json!({"path": e.path("a/b/c")}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entry"]["name"], "c");
    assert_eq!(body["entry"]["path"], e.path("a/b/c"));
    assert_eq!(body["entry"]["type"], "FILE_TYPE_DIRECTORY");
    for p in ["a", "a/b", "a/b/c"] {
        assert!(e.dir.path().join(p).is_dir(), "{p} created");
    }

    let (status, body) = e
        .unary(&method("MakeDir"), json!({"path": e.path("a/b/c")}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "already_exists");

    std::fs::write(e.dir.path().join("file"), "x").unwrap();
    let (status, body) = e
        .unary(&method("MakeDir"), json!({"path": e.path("file")}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_argument");

    // A file in the middle of the path is no directory either.
    let (status, body) = e
        .unary(&method("MakeDir"), json!({"path": e.path("file/sub")}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_argument");
}

#[tokio::test]
async fn make_dir_as_root_chowns_new_dirs_to_the_caller() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: envd must run as root to chown");
        return;
    }
    let accounts = envd::users::Accounts::load().unwrap();
    let Ok(nobody) = accounts.user("nobody") else {
        eprintln!("skipped: no 'nobody' account");
        return;
    };
    let e = TestEnvd::start().await;
    let auth = basic("nobody");
    let (status, body) = e
        .unary_with(
            &method("MakeDir"),
            json!({"path": e.path("own/x/y")}),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entry"]["owner"], "nobody");
    for p in ["own", "own/x", "own/x/y"] {
        let meta = std::fs::metadata(e.dir.path().join(p)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (nobody.uid, nobody.gid), "{p}");
    }
    // The pre-existing parent keeps its owner.
    assert_eq!(std::fs::metadata(e.dir.path()).unwrap().uid(), 0);
}

// ---------------------------------------------------------------- Move

#[tokio::test]
async fn move_creates_destination_parents() {
    let e = TestEnvd::start().await;
    std::fs::write(e.dir.path().join("src.txt"), "data").unwrap();
    let (status, body) = e
        .unary(
            &method("Move"),
            json!({"source": e.path("src.txt"), "destination": e.path("new/deeper/dst.txt")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entry"]["name"], "dst.txt");
    assert_eq!(body["entry"]["path"], e.path("new/deeper/dst.txt"));
    assert_eq!(body["entry"]["size"], "4");
    assert!(!e.dir.path().join("src.txt").exists());
    assert_eq!(
        std::fs::read_to_string(e.dir.path().join("new/deeper/dst.txt")).unwrap(),
        "data"
    );
}

#[tokio::test]
async fn move_missing_source_is_not_found() {
    let e = TestEnvd::start().await;
    let (status, body) = e
        .unary(
            &method("Move"),
            json!({"source": e.path("ghost"), "destination": e.path("out/ghost")}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");
    assert!(
        !e.dir.path().join("out").exists(),
        "no destination dirs for a failed move"
    );
}

// ---------------------------------------------------------------- ListDir

fn listed(body: &Value, root: &str) -> Vec<String> {
    body.get("entries")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .map(|en| {
                    let path = en["path"].as_str().unwrap();
                    path.strip_prefix(&format!("{root}/"))
                        .unwrap_or(path)
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn list_dir_depth_order_and_symlinks() {
    let e = TestEnvd::start().await;
    let root = e.dir.path().join("tree");
    for d in ["b/y", "a/x/deep", "target/inner"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in [
        "c.txt",
        "a/z.txt",
        "a/x/deep/leaf.txt",
        "target/inner/t.txt",
    ] {
        std::fs::write(root.join(f), "").unwrap();
    }
    std::os::unix::fs::symlink(root.join("target"), root.join("link")).unwrap();
    let tree = e.path("tree");

    // Depth omitted (0) means 1.
    let (status, body) = e.unary(&method("ListDir"), json!({"path": tree})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(listed(&body, &tree), ["a", "b", "c.txt", "link", "target"]);

    let (_, body) = e
        .unary(&method("ListDir"), json!({"path": tree, "depth": 2}))
        .await;
    assert_eq!(
        listed(&body, &tree),
        [
            "a",
            "a/x",
            "a/z.txt",
            "b",
            "b/y",
            "c.txt",
            "link",
            "target",
            "target/inner"
        ]
    );

    // Deep enough for everything: pre-order, and the link is a leaf.
    let (_, body) = e
        .unary(&method("ListDir"), json!({"path": tree, "depth": 10}))
        .await;
    assert_eq!(
        listed(&body, &tree),
        [
            "a",
            "a/x",
            "a/x/deep",
            "a/x/deep/leaf.txt",
            "a/z.txt",
            "b",
            "b/y",
            "c.txt",
            "link",
            "target",
            "target/inner",
            "target/inner/t.txt"
        ]
    );
    let entries = body["entries"].as_array().unwrap();
    let link = entries.iter().find(|en| en["name"] == "link").unwrap();
    assert_eq!(link["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(
        link["symlinkTarget"],
        std::fs::canonicalize(root.join("target"))
            .unwrap()
            .display()
            .to_string()
    );
    let leaf = entries.iter().find(|en| en["name"] == "leaf.txt").unwrap();
    assert_eq!(leaf["type"], "FILE_TYPE_FILE");
    // proto3 JSON omits zero values; the SDKs read a missing size as 0.
    assert!(leaf.get("size").is_none(), "{leaf}");
}

#[tokio::test]
async fn list_dir_through_symlinked_root_keeps_requested_paths() {
    let e = TestEnvd::start().await;
    std::fs::create_dir_all(e.dir.path().join("real/sub")).unwrap();
    std::fs::write(e.dir.path().join("real/sub/f"), "").unwrap();
    std::os::unix::fs::symlink("real", e.dir.path().join("alias")).unwrap();
    let (status, body) = e
        .unary(
            &method("ListDir"),
            json!({"path": e.path("alias"), "depth": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let paths: Vec<_> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|en| en["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, [e.path("alias/sub"), e.path("alias/sub/f")]);
}

#[tokio::test]
async fn list_dir_errors_and_empty() {
    let e = TestEnvd::start().await;
    let (status, body) = e
        .unary(&method("ListDir"), json!({"path": e.path("missing")}))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");

    std::fs::write(e.dir.path().join("f"), "").unwrap();
    let (status, body) = e
        .unary(&method("ListDir"), json!({"path": e.path("f")}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_argument");

    std::fs::create_dir(e.dir.path().join("empty")).unwrap();
    let (status, body) = e
        .unary(&method("ListDir"), json!({"path": e.path("empty")}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(listed(&body, "").is_empty(), "{body}");
}

// ---------------------------------------------------------------- Remove

#[tokio::test]
async fn remove_files_trees_and_missing_paths() {
    let e = TestEnvd::start().await;
    std::fs::create_dir_all(e.dir.path().join("tree/a/b")).unwrap();
    std::fs::write(e.dir.path().join("tree/a/b/f"), "x").unwrap();
    std::fs::write(e.dir.path().join("file"), "x").unwrap();
    // A link to a directory: removing it must not empty the target.
    std::fs::create_dir(e.dir.path().join("keep")).unwrap();
    std::fs::write(e.dir.path().join("keep/k"), "x").unwrap();
    std::os::unix::fs::symlink("keep", e.dir.path().join("keeplink")).unwrap();

    for p in ["tree", "file", "keeplink", "never-existed"] {
        let (status, body) = e.unary(&method("Remove"), json!({"path": e.path(p)})).await;
        assert_eq!((status, &body), (200, &json!({})), "{p}");
        assert!(
            std::fs::symlink_metadata(e.dir.path().join(p)).is_err(),
            "{p} gone"
        );
    }
    assert!(e.dir.path().join("keep/k").exists());
}

// ---------------------------------------------------------------- WatchDir

#[tokio::test]
async fn watch_dir_upload_yields_create_chmod_write_then_keepalive() {
    let e = TestEnvd::start().await;
    let dir = e.dir.path().join("w");
    std::fs::create_dir(&dir).unwrap();
    let mut stream = open_watch(
        &e,
        json!({"path": e.path("w"), "includeEntry": true}),
        &[("keepalive-ping-interval", "1")],
    )
    .await;

    upload_like(&dir.join("new.txt"), b"hello");
    let events = events_until_quiet(&mut stream).await;
    let kinds: Vec<_> = events
        .iter()
        .map(|ev| (ev["name"].as_str().unwrap(), ev["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("new.txt", "EVENT_TYPE_CREATE"),
            ("new.txt", "EVENT_TYPE_CHMOD"),
            ("new.txt", "EVENT_TYPE_WRITE"),
        ]
    );
    // Entries are attached (the file still exists) with the usual shape.
    let write = &events[2]["entry"];
    assert_eq!(write["name"], "new.txt");
    assert_eq!(write["type"], "FILE_TYPE_FILE");
    assert_eq!(write["size"], "5");
    assert_eq!(write["path"], dir.join("new.txt").display().to_string());

    // Rename and remove, in order; no entry for them.
    std::fs::rename(dir.join("new.txt"), dir.join("renamed.txt")).unwrap();
    std::fs::remove_file(dir.join("renamed.txt")).unwrap();
    let events = events_until_quiet(&mut stream).await;
    let kinds: Vec<_> = events
        .iter()
        .map(|ev| (ev["name"].as_str().unwrap(), ev["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("new.txt", "EVENT_TYPE_RENAME"),
            ("renamed.txt", "EVENT_TYPE_CREATE"),
            ("renamed.txt", "EVENT_TYPE_REMOVE"),
        ]
    );
    assert!(events[0].get("entry").is_none());
    assert!(events[2].get("entry").is_none());
}

#[tokio::test]
async fn watch_dir_without_include_entry_sends_bare_events() {
    let e = TestEnvd::start().await;
    let mut stream = open_watch(
        &e,
        json!({"path": e.path("")}),
        &[("keepalive-ping-interval", "1")],
    )
    .await;
    upload_like(&e.dir.path().join("plain.txt"), b"x");
    let events = events_until_quiet(&mut stream).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events.iter().all(|ev| ev.get("entry").is_none()),
        "{events:?}"
    );
    assert_eq!(
        events[0],
        json!({"name": "plain.txt", "type": "EVENT_TYPE_CREATE"})
    );
}

#[tokio::test]
async fn watch_dir_recursive_names_are_relative_and_include_new_subdirs() {
    let e = TestEnvd::start().await;
    let mut stream = open_watch(
        &e,
        json!({"path": e.path(""), "recursive": true}),
        &[("keepalive-ping-interval", "1")],
    )
    .await;
    std::fs::create_dir(e.dir.path().join("sub")).unwrap();
    let events = events_until_quiet(&mut stream).await;
    assert_eq!(
        events[0],
        json!({"name": "sub", "type": "EVENT_TYPE_CREATE"})
    );

    upload_like(&e.dir.path().join("sub/file.txt"), b"abc");
    let events = events_until_quiet(&mut stream).await;
    let names: Vec<_> = events
        .iter()
        .map(|ev| ev["name"].as_str().unwrap())
        .collect();
    assert!(names.iter().all(|n| *n == "sub/file.txt"), "{events:?}");
    assert_eq!(events.len(), 3, "{events:?}");
}

#[tokio::test]
async fn watch_dir_non_recursive_ignores_subdirectories() {
    let e = TestEnvd::start().await;
    std::fs::create_dir(e.dir.path().join("sub")).unwrap();
    let mut stream = open_watch(
        &e,
        json!({"path": e.path("")}),
        &[("keepalive-ping-interval", "1")],
    )
    .await;
    std::fs::write(e.dir.path().join("sub/hidden.txt"), "x").unwrap();
    std::fs::write(e.dir.path().join("marker.txt"), "").unwrap();
    let events = events_until_quiet(&mut stream).await;
    assert_eq!(events[0]["name"], "marker.txt", "{events:?}");
    assert!(
        events.iter().all(|ev| ev["name"] == "marker.txt"),
        "{events:?}"
    );
}

#[tokio::test]
async fn watch_dir_keepalive_follows_the_header() {
    let e = TestEnvd::start().await;
    let mut stream = open_watch(
        &e,
        json!({"path": e.path("")}),
        &[("keepalive-ping-interval", "1")],
    )
    .await;
    let started = Instant::now();
    let frame = stream.next().await.unwrap();
    assert!(is_keepalive(&frame), "{frame:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(is_keepalive(&stream.next().await.unwrap()));
}

#[tokio::test]
async fn watch_dir_ends_at_the_deadline() {
    let e = TestEnvd::start().await;
    let started = Instant::now();
    let stream = open_watch(
        &e,
        json!({"path": e.path("")}),
        &[
            ("connect-timeout-ms", "1500"),
            ("keepalive-ping-interval", "1"),
        ],
    )
    .await;
    let frames = stream.collect().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    let Some(Frame::End(end)) = frames.last() else {
        panic!("no end frame: {frames:?}")
    };
    assert_eq!(end["error"]["code"], "deadline_exceeded", "{end}");
    assert!(
        frames[..frames.len() - 1].iter().all(is_keepalive),
        "{frames:?}"
    );
}

#[tokio::test]
async fn watch_dir_validation_errors_end_the_stream() {
    let e = TestEnvd::start().await;
    std::fs::write(e.dir.path().join("f"), "").unwrap();
    for (path, code) in [("missing", "not_found"), ("f", "invalid_argument")] {
        let frames = e
            .stream(&method("WatchDir"), json!({"path": e.path(path)}), &[])
            .await
            .collect()
            .await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        let Frame::End(end) = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!(end["error"]["code"], code, "{path}: {end}");
    }
}

#[tokio::test]
async fn watch_dir_frees_inotify_when_the_client_leaves() {
    let e = TestEnvd::start().await;
    let dir = e.dir.path().join("gone");
    std::fs::create_dir(&dir).unwrap();
    let stream = open_watch(
        &e,
        json!({"path": e.path("gone")}),
        &[("keepalive-ping-interval", "1")],
    )
    .await;
    assert!(inotify_watches(&dir), "watch is live while streaming");
    drop(stream);
    assert!(
        eventually(Duration::from_secs(10), || !inotify_watches(&dir)).await,
        "inotify watch released after disconnect"
    );
}

// ---------------------------------------------------------------- polling watchers

#[tokio::test]
async fn polling_watcher_round_trip() {
    let e = TestEnvd::start().await;
    let dir = e.dir.path().join("p");
    std::fs::create_dir(&dir).unwrap();
    let (status, body) = e
        .unary(
            &method("CreateWatcher"),
            json!({"path": e.path("p"), "includeEntry": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["watcherId"].as_str().expect("watcherId").to_owned();
    assert!(id.starts_with('w'), "{id}");
    assert!(inotify_watches(&dir));

    // The watcher outlives CreateWatcher's request.
    upload_like(&dir.join("f.txt"), b"hi");
    let mut events: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.len() < 3 && Instant::now() < deadline {
        let (status, body) = e
            .unary(&method("GetWatcherEvents"), json!({"watcherId": id}))
            .await;
        assert_eq!(status, 200, "{body}");
        events.extend(
            body.get("events")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kinds: Vec<_> = events
        .iter()
        .map(|ev| (ev["name"].as_str().unwrap(), ev["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("f.txt", "EVENT_TYPE_CREATE"),
            ("f.txt", "EVENT_TYPE_CHMOD"),
            ("f.txt", "EVENT_TYPE_WRITE")
        ]
    );
    assert_eq!(events[0]["entry"]["name"], "f.txt");

    // Reading cleared the buffer.
    let (status, body) = e
        .unary(&method("GetWatcherEvents"), json!({"watcherId": id}))
        .await;
    assert_eq!((status, body), (200, json!({})));

    let (status, body) = e
        .unary(&method("RemoveWatcher"), json!({"watcherId": id}))
        .await;
    assert_eq!((status, body), (200, json!({})));
    assert!(
        eventually(Duration::from_secs(10), || !inotify_watches(&dir)).await,
        "inotify watch released by RemoveWatcher"
    );
    for m in ["GetWatcherEvents", "RemoveWatcher"] {
        let (status, body) = e.unary(&method(m), json!({"watcherId": id})).await;
        assert_eq!(status, 404, "{m}: {body}");
        assert_eq!(body["code"], "not_found");
    }
}

#[tokio::test]
async fn create_watcher_validates_like_watch_dir() {
    let e = TestEnvd::start().await;
    std::fs::write(e.dir.path().join("f"), "").unwrap();
    let (status, body) = e
        .unary(&method("CreateWatcher"), json!({"path": e.path("missing")}))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");
    let (status, body) = e
        .unary(&method("CreateWatcher"), json!({"path": e.path("f")}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_argument");
    let (status, body) = e
        .unary(
            &method("GetWatcherEvents"),
            json!({"watcherId": "wdoesnotexist"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn failed_polling_watcher_reports_its_error_on_every_read() {
    let e = TestEnvd::start().await;
    let dir = e.dir.path().join("busy");
    std::fs::create_dir(&dir).unwrap();
    let (status, body) = e
        .unary(&method("CreateWatcher"), json!({"path": e.path("busy")}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["watcherId"].as_str().unwrap().to_owned();

    // Nobody polls while far more events arrive than envd buffers (64 Ki).
    // Alternating files keeps the kernel from merging repeated events. At
    // most one kernel queue (16 Ki) can still be unread when the loop ends,
    // so by then the buffer has overflowed (or the kernel queue has).
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::write(&a, "").unwrap();
    std::fs::write(&b, "").unwrap();
    tokio::task::spawn_blocking(move || {
        for i in 0..60_000u32 {
            let mode = if i % 2 == 0 { 0o644 } else { 0o600 };
            std::fs::set_permissions(&a, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::set_permissions(&b, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    })
    .await
    .unwrap();

    for attempt in 0..2 {
        let (status, body) = e
            .unary(&method("GetWatcherEvents"), json!({"watcherId": id}))
            .await;
        assert_eq!(status, 500, "read {attempt}: {body}");
        assert_eq!(body["code"], "internal", "read {attempt}: {body}");
    }
    let (status, _) = e
        .unary(&method("RemoveWatcher"), json!({"watcherId": id}))
        .await;
    assert_eq!(status, 200);
}
