//! `GET /files` and `POST /files` as the E2B SDKs use them: multipart and
//! octet-stream uploads, gzip both ways, signed URLs, metadata, the watcher
//! event contract, atomicity when a client aborts, and (against the real
//! binary) bounded memory for a 1 GiB upload.

// Helpers panic on any failure by design; clippy's allow-unwrap-in-tests
// only covers #[test] functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestEnvd;
use envd::http::signing::{Operation, signature};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

const MIB: usize = 1024 * 1024;

fn files_url(base: &str) -> String {
    format!("{base}/files")
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut d = flate2::write::GzDecoder::new(Vec::new());
    d.write_all(data).unwrap();
    d.finish().unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

async fn upload_raw(e: &TestEnvd, path: &str, data: Vec<u8>) -> reqwest::Response {
    e.http
        .post(files_url(&e.base))
        .query(&[("path", path)])
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .unwrap()
}

async fn download(e: &TestEnvd, path: &str) -> reqwest::Response {
    e.http
        .get(files_url(&e.base))
        .query(&[("path", path)])
        .send()
        .await
        .unwrap()
}

async fn status_and_json(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn multipart_single_file_with_path_query() {
    let e = TestEnvd::start().await;
    let dest = e.path("single.txt");
    let form = Form::new().part(
        "file",
        Part::bytes(b"hello".to_vec()).file_name(dest.clone()),
    );
    let res = e
        .http
        .post(files_url(&e.base))
        .query(&[("path", &dest)])
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!([{"name": "single.txt", "type": "file", "path": dest}])
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
}

#[tokio::test]
async fn multipart_several_files_use_their_full_filenames() {
    let e = TestEnvd::start().await;
    let one = e.path("a/one.txt");
    let two = e.path("b/c/two.txt");
    let three = e.path("three.bin");
    let big = noise(3 * MIB + 17, 1);
    let form = Form::new()
        .part(
            "file",
            Part::bytes(b"first".to_vec()).file_name(one.clone()),
        )
        .text("note", "not a file, ignored")
        .part(
            "file",
            Part::bytes(b"second".to_vec()).file_name(two.clone()),
        )
        .part("file", Part::bytes(big.clone()).file_name(three.clone()));
    let res = e
        .http
        .post(files_url(&e.base))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!([
            {"name": "one.txt", "type": "file", "path": one},
            {"name": "two.txt", "type": "file", "path": two},
            {"name": "three.bin", "type": "file", "path": three},
        ])
    );
    assert_eq!(std::fs::read(&one).unwrap(), b"first");
    assert_eq!(std::fs::read(&two).unwrap(), b"second");
    assert_eq!(std::fs::read(&three).unwrap(), big);
    let c = e.dir.path().join("b/c");
    assert_eq!(
        std::fs::metadata(&c).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(listing(e.dir.path()), vec!["a", "b", "three.bin"]);
}

#[tokio::test]
async fn multipart_same_destination_twice_is_400() {
    let e = TestEnvd::start().await;
    let dest = e.path("dup.txt");
    let form = Form::new()
        .part("file", Part::bytes(b"1".to_vec()).file_name(dest.clone()))
        .part("file", Part::bytes(b"2".to_vec()).file_name(dest.clone()));
    let res = e
        .http
        .post(files_url(&e.base))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(res).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], 400);
}

#[tokio::test]
async fn octet_stream_upload_and_missing_path() {
    let e = TestEnvd::start().await;
    let dest = e.path("deep/er/raw.bin");
    let data = noise(100_000, 2);
    let (status, body) = status_and_json(upload_raw(&e, &dest, data.clone()).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!([{"name": "raw.bin", "type": "file", "path": dest}])
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    let res = e
        .http
        .post(files_url(&e.base))
        .header("content-type", "application/octet-stream")
        .body("x")
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(res).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"code": 400, "message": "missing path query parameter"})
    );

    let res = e
        .http
        .post(files_url(&e.base))
        .query(&[("path", e.path("t.txt"))])
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert!(!e.dir.path().join("t.txt").exists());
}

#[tokio::test]
async fn gzip_uploads_octet_and_multipart() {
    let e = TestEnvd::start().await;
    let data = noise(2 * MIB + 5, 3);
    let dest = e.path("gz.bin");
    let res = e
        .http
        .post(files_url(&e.base))
        .query(&[("path", &dest)])
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip")
        .body(gzip(&data))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // Multipart with the whole body gzip'ed, as py's write_files(gzip=True) does.
    let boundary = "XyZzY";
    let mut raw = Vec::new();
    for (i, content) in ["File 1 content", "File 2 content"].iter().enumerate() {
        write!(
            raw,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n{content}\r\n",
            e.path(&format!("gzm/{i}.txt"))
        )
        .unwrap();
    }
    write!(raw, "--{boundary}--\r\n").unwrap();
    let res = e
        .http
        .post(files_url(&e.base))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header("content-encoding", "gzip")
        .body(gzip(&raw))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read_to_string(e.path("gzm/0.txt")).unwrap(),
        "File 1 content"
    );
    assert_eq!(
        std::fs::read_to_string(e.path("gzm/1.txt")).unwrap(),
        "File 2 content"
    );

    // A truncated gzip body is rejected and leaves nothing behind.
    let mut cut = gzip(&data);
    cut.truncate(cut.len() - 6);
    let res = e
        .http
        .post(files_url(&e.base))
        .query(&[("path", e.path("cut.bin"))])
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip")
        .body(cut)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert!(!e.dir.path().join("cut.bin").exists());
    assert_eq!(listing(e.dir.path()), vec!["gz.bin", "gzm"]);
}

#[tokio::test]
async fn download_returns_uploaded_bytes() {
    let e = TestEnvd::start().await;
    let data = noise(10 * MIB, 4);
    let dest = e.path("big.bin");
    let form = Form::new().part("file", Part::bytes(data.clone()).file_name(dest.clone()));
    let res = e
        .http
        .post(files_url(&e.base))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);

    let res = download(&e, &dest).await;
    assert_eq!(res.status().as_u16(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["content-disposition"], "inline; filename=\"big.bin\"");
    assert_eq!(h["content-length"], (10 * MIB).to_string().as_str());
    assert!(h.get("content-encoding").is_none());
    let body = res.bytes().await.unwrap();
    assert!(body[..] == data[..], "downloaded bytes differ");

    // Range.
    let res = e
        .http
        .get(files_url(&e.base))
        .query(&[("path", &dest)])
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 206);
    assert_eq!(
        res.headers()["content-range"],
        format!("bytes 10-19/{}", 10 * MIB).as_str()
    );
    assert_eq!(&res.bytes().await.unwrap()[..], &data[10..20]);
    let res = e
        .http
        .get(files_url(&e.base))
        .query(&[("path", &dest)])
        .header("range", format!("bytes={}-", 10 * MIB))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 416);
}

#[tokio::test]
async fn gzip_download_only_when_gzip_alone_is_asked() {
    let e = TestEnvd::start().await;
    let data = b"compress me ".repeat(10_000);
    let dest = e.path("text.txt");
    std::fs::write(&dest, &data).unwrap();
    let get = |enc: &'static str| {
        e.http
            .get(files_url(&e.base))
            .query(&[("path", &dest)])
            .header("accept-encoding", enc)
            .send()
    };
    let res = get("gzip").await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let body = res.bytes().await.unwrap();
    assert!(body.len() < data.len() / 10);
    assert_eq!(gunzip(&body), data);

    let res = get("gzip, deflate").await.unwrap();
    assert!(res.headers().get("content-encoding").is_none());
    assert_eq!(res.bytes().await.unwrap().len(), data.len());

    let res = get("br, *;q=0").await.unwrap();
    assert_eq!(res.status().as_u16(), 406);
}

#[tokio::test]
async fn empty_file_has_content_length_zero() {
    let e = TestEnvd::start().await;
    let dest = e.path("empty");
    let (status, _) = status_and_json(upload_raw(&e, &dest, Vec::new()).await).await;
    assert_eq!(status, 200);
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 0);
    let res = download(&e, &dest).await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-length"], "0");
    assert!(res.bytes().await.unwrap().is_empty());
    // Also when gzip is asked for.
    let res = e
        .http
        .get(files_url(&e.base))
        .query(&[("path", &dest)])
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-length"], "0");
}

#[tokio::test]
async fn missing_path_and_directory_errors() {
    let e = TestEnvd::start().await;
    let missing = e.path("nope.txt");
    let (status, body) = status_and_json(download(&e, &missing).await).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"code": 404, "message": format!("path '{missing}' does not exist")})
    );

    let dir = e.dir.path().display().to_string();
    let (status, body) = status_and_json(download(&e, &dir).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"code": 400, "message": format!("path '{dir}' is a directory")})
    );

    let (status, body) = status_and_json(upload_raw(&e, &dir, b"x".to_vec()).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"code": 400, "message": format!("path '{dir}' is a directory")})
    );

    let res = e
        .http
        .get(files_url(&e.base))
        .query(&[
            ("path", missing.as_str()),
            ("username", "no-such-user-here"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
}

/// Removes a file when dropped (the relative-path test writes into $HOME).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn relative_path_resolves_under_home() {
    let e = TestEnvd::start().await;
    let home = envd::users::Accounts::load()
        .unwrap()
        .user(&common::current_user())
        .unwrap()
        .home;
    let name = format!(".envd-files-test-{}-{}", std::process::id(), now());
    let expected = home.join(&name);
    let _cleanup = RemoveOnDrop(expected.clone());
    let (status, body) = status_and_json(upload_raw(&e, &name, b"rel".to_vec()).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["path"], expected.display().to_string());
    assert_eq!(std::fs::read(&expected).unwrap(), b"rel");
    let res = download(&e, &format!("~/{name}")).await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(&res.bytes().await.unwrap()[..], b"rel");
}

#[tokio::test]
async fn overwrite_replaces_content_and_keeps_mode() {
    let e = TestEnvd::start().await;
    let dest = e.path("script.sh");
    std::fs::write(&dest, "old old old").unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (status, _) = status_and_json(upload_raw(&e, &dest, b"new".to_vec()).await).await;
    assert_eq!(status, 200);
    assert_eq!(std::fs::read(&dest).unwrap(), b"new");
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(listing(e.dir.path()), vec!["script.sh"]);
}

#[tokio::test]
async fn signed_urls_and_token_header() {
    let e = TestEnvd::start().await;
    e.sandbox
        .update(|s| s.access_token = Some("secret-tok".into()));
    let dest = e.path("signed.txt");
    std::fs::write(&dest, "signed content").unwrap();
    let get =
        |query: Vec<(&'static str, String)>| e.http.get(files_url(&e.base)).query(&query).send();

    // No token, no signature.
    let (status, body) = status_and_json(get(vec![("path", dest.clone())]).await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"code": 401, "message": "missing signature query parameter"})
    );

    // Valid signature, no expiration.
    let sig = signature(&dest, Operation::Read, "", "secret-tok", None);
    let res = get(vec![("path", dest.clone()), ("signature", sig.clone())])
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.text().await.unwrap(), "signed content");

    // Wrong signature; and a read signature does not authorise a write.
    let (status, body) = status_and_json(
        get(vec![
            ("path", dest.clone()),
            ("signature", "v1_nope".into()),
        ])
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body, json!({"code": 401, "message": "invalid signature"}));
    let res = e
        .http
        .post(files_url(&e.base))
        .query(&[("path", dest.as_str()), ("signature", sig.as_str())])
        .header("content-type", "application/octet-stream")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "signed content");

    // With username and a future expiration.
    let user = common::current_user();
    let exp = now() + 60;
    let sig = signature(&dest, Operation::Read, &user, "secret-tok", Some(exp));
    let res = get(vec![
        ("path", dest.clone()),
        ("username", user.clone()),
        ("signature", sig),
        ("signature_expiration", exp.to_string()),
    ])
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 200);

    // Expired: the SDK tests compare the whole body.
    let exp = now() - 10;
    let sig = signature(&dest, Operation::Read, "", "secret-tok", Some(exp));
    let res = get(vec![
        ("path", dest.clone()),
        ("signature", sig),
        ("signature_expiration", exp.to_string()),
    ])
    .await
    .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(
        res.text().await.unwrap(),
        r#"{"code":401,"message":"signature is already expired"}"#
    );

    // Signed upload.
    let up = e.path("signed-up.txt");
    let sig = signature(&up, Operation::Write, "", "secret-tok", None);
    let res = e
        .http
        .post(files_url(&e.base))
        .query(&[("path", up.as_str()), ("signature", sig.as_str())])
        .header("content-type", "application/octet-stream")
        .body("up")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(std::fs::read_to_string(&up).unwrap(), "up");

    // Token header instead of a signature; a wrong one is refused.
    let res = e
        .http
        .get(files_url(&e.base))
        .query(&[("path", &dest)])
        .header("x-access-token", "secret-tok")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = e
        .http
        .get(files_url(&e.base))
        .query(&[("path", &dest)])
        .header("x-access-token", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
}

#[tokio::test]
async fn metadata_headers_round_trip_and_are_replaced() {
    let e = TestEnvd::start().await;
    let dest = e.path("meta.txt");
    let res = e
        .http
        .post(files_url(&e.base))
        .query(&[("path", &dest)])
        .header("content-type", "application/octet-stream")
        .header("X-Metadata-Owner", "alice")
        .header("x-metadata-purpose", "test run")
        .body("m")
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(res).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body[0]["metadata"],
        json!({"owner": "alice", "purpose": "test run"})
    );
    let got: BTreeMap<_, _> = envd::entry::read_metadata(Path::new(&dest))
        .into_iter()
        .collect();
    assert_eq!(
        got,
        BTreeMap::from([
            ("owner".to_owned(), "alice".to_owned()),
            ("purpose".to_owned(), "test run".to_owned())
        ])
    );

    // A new upload replaces the whole set.
    let res = e
        .http
        .post(files_url(&e.base))
        .query(&[("path", &dest)])
        .header("content-type", "application/octet-stream")
        .header("x-metadata-other", "1")
        .body("m2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let got: BTreeMap<_, _> = envd::entry::read_metadata(Path::new(&dest))
        .into_iter()
        .collect();
    assert_eq!(got, BTreeMap::from([("other".to_owned(), "1".to_owned())]));

    // None clears it, and the response has no metadata field.
    let (status, body) = status_and_json(upload_raw(&e, &dest, b"m3".to_vec()).await).await;
    assert_eq!(status, 200);
    assert!(body[0].get("metadata").is_none(), "{body}");
    assert!(envd::entry::read_metadata(Path::new(&dest)).is_empty());

    // Over-long key.
    let res = e
        .http
        .post(files_url(&e.base))
        .query(&[("path", &dest)])
        .header("content-type", "application/octet-stream")
        .header(format!("x-metadata-{}", "k".repeat(247)), "v")
        .body("m4")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(std::fs::read(&dest).unwrap(), b"m3");
}

/// Watch events reduced to E2B's names, in order, until a sentinel file
/// shows up (so "exactly" is exact: nothing is still in flight).
fn watch_until_sentinel(
    rx: &std::sync::mpsc::Receiver<notify::Result<notify::Event>>,
    root: &Path,
    sentinel: &str,
) -> Vec<(String, &'static str)> {
    use notify::EventKind;
    use notify::event::{ModifyKind, RenameMode};
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = rx
            .recv_timeout(left)
            .expect("watch events before the deadline")
            .unwrap();
        let kind = match ev.kind {
            EventKind::Create(_) => "CREATE",
            EventKind::Modify(ModifyKind::Metadata(_)) => "CHMOD",
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => "CREATE",
            EventKind::Modify(ModifyKind::Name(_)) => "RENAME",
            EventKind::Modify(_) => "WRITE",
            EventKind::Remove(_) => "REMOVE",
            EventKind::Access(_) | EventKind::Any | EventKind::Other => continue,
        };
        for p in ev.paths {
            let name = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            if name == sentinel {
                return out;
            }
            out.push((name, kind));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn new_file_upload_emits_create_chmod_write() {
    use notify::Watcher as _;
    let e = TestEnvd::start().await;
    let root = std::fs::canonicalize(e.dir.path()).unwrap();
    std::fs::create_dir(root.join("nested")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = tx.send(ev);
    })
    .unwrap();
    watcher
        .watch(&root, notify::RecursiveMode::Recursive)
        .unwrap();

    let top = root.join("watched.txt").display().to_string();
    let form = Form::new().part(
        "file",
        Part::bytes(b"This file will be watched.".to_vec()).file_name(top.clone()),
    );
    let res = e
        .http
        .post(files_url(&e.base))
        .query(&[("path", &top)])
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let nested = root.join("nested/inner.txt").display().to_string();
    let (status, _) = status_and_json(upload_raw(&e, &nested, b"inner".to_vec()).await).await;
    assert_eq!(status, 200);
    std::fs::write(root.join("zz-sentinel-1"), b"").unwrap();
    let events = watch_until_sentinel(&rx, &root, "zz-sentinel-1");
    assert_eq!(
        events,
        vec![
            ("watched.txt".to_owned(), "CREATE"),
            ("watched.txt".to_owned(), "CHMOD"),
            ("watched.txt".to_owned(), "WRITE"),
            ("nested/inner.txt".to_owned(), "CREATE"),
            ("nested/inner.txt".to_owned(), "CHMOD"),
            ("nested/inner.txt".to_owned(), "WRITE"),
        ]
    );

    // Overwriting still reports a WRITE for the name, and nothing for other names.
    let (status, _) = status_and_json(upload_raw(&e, &top, b"changed".to_vec()).await).await;
    assert_eq!(status, 200);
    std::fs::write(root.join("zz-sentinel-2"), b"").unwrap();
    let events = watch_until_sentinel(&rx, &root, "zz-sentinel-2");
    let events: Vec<_> = events
        .into_iter()
        .filter(|(n, _)| !n.starts_with("zz-sentinel"))
        .collect();
    assert!(events.iter().all(|(n, _)| n == "watched.txt"), "{events:?}");
    assert!(
        events.contains(&("watched.txt".to_owned(), "WRITE")),
        "{events:?}"
    );
}

// ---- Real-process tests: envd as a separate binary ----

/// A spawned envd, killed when dropped (also when the test panics).
struct Proc {
    child: std::process::Child,
    base: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    async fn spawn() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_envd"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--default-user",
                &common::current_user(),
            ])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let p = Proc {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(format!("{}/health", p.base)).send().await
                && r.status().as_u16() == 204
            {
                return p;
            }
            assert!(Instant::now() < deadline, "envd did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size, bytes.
    fn vm_hwm(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Sizes of the regular files the process holds open (its staging files).
    fn open_file_sizes(&self) -> Vec<u64> {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return Vec::new();
        };
        rd.filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .collect()
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&[u64]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(&self.open_file_sizes()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A body that sends `first` bytes, then stalls until `go` fires, then fails
/// (which makes the client drop the connection mid-body).
fn stalling_body(first: usize, go: tokio::sync::oneshot::Receiver<()>) -> reqwest::Body {
    let chunk = Bytes::from(noise(MIB, 9));
    let stream = async_stream::stream! {
        for _ in 0..first / MIB {
            yield Ok::<Bytes, std::io::Error>(chunk.clone());
        }
        let _ = go.await;
        yield Err(std::io::Error::other("client gave up"));
    };
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test(flavor = "multi_thread")]
async fn aborted_uploads_leave_no_partial_or_temp_files() {
    let envd = Proc::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("existing.txt");
    std::fs::write(&old, "old content").unwrap();
    let fresh = dir.path().join("sub/fresh.bin");
    let client = reqwest::Client::new();

    // 1. New file, octet-stream.
    let (go, stall) = tokio::sync::oneshot::channel();
    let req = client
        .post(files_url(&envd.base))
        .query(&[("path", fresh.display().to_string())])
        .header("content-type", "application/octet-stream")
        .body(stalling_body(8 * MIB, stall))
        .send();
    let task = tokio::spawn(req);
    // The server has staged several MiB, yet nothing is visible.
    envd.wait_for("staged data", |sizes| {
        sizes.iter().any(|s| *s >= 4 * MIB as u64)
    })
    .await;
    assert!(!fresh.exists());
    assert_eq!(listing(dir.path()), vec!["existing.txt"]);
    go.send(()).unwrap();
    assert!(
        task.await.unwrap().is_err(),
        "the aborted request must fail"
    );
    envd.wait_for("staging file to be released", |sizes| {
        sizes.iter().all(|s| *s < 4 * MIB as u64)
    })
    .await;
    assert!(!fresh.exists());
    assert_eq!(listing(dir.path()), vec!["existing.txt"]);

    // 2. Overwrite, multipart: the old content survives.
    let (go, stall) = tokio::sync::oneshot::channel();
    let part = Part::stream(stalling_body(8 * MIB, stall)).file_name(old.display().to_string());
    let req = client
        .post(files_url(&envd.base))
        .multipart(Form::new().part("file", part))
        .send();
    let task = tokio::spawn(req);
    envd.wait_for("staged data", |sizes| {
        sizes.iter().any(|s| *s >= 4 * MIB as u64)
    })
    .await;
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "old content");
    go.send(()).unwrap();
    assert!(task.await.unwrap().is_err());
    envd.wait_for("staging file to be released", |sizes| {
        sizes.iter().all(|s| *s < 4 * MIB as u64)
    })
    .await;
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "old content");
    assert_eq!(listing(dir.path()), vec!["existing.txt"]);

    // The daemon is still serving.
    let res = client
        .post(files_url(&envd.base))
        .query(&[("path", fresh.display().to_string())])
        .header("content-type", "application/octet-stream")
        .body("ok")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(listing(dir.path()), vec!["existing.txt", "sub"]);
    assert_eq!(listing(&dir.path().join("sub")), vec!["fresh.bin"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_gib_upload_keeps_rss_under_64_mib() {
    const GIB: u64 = 1 << 30;
    let envd = Proc::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("gib.bin");
    let chunk = Bytes::from(noise(MIB, 5));
    let chunks = GIB / chunk.len() as u64;
    let body =
        futures::stream::iter((0..chunks).map(move |_| Ok::<Bytes, std::io::Error>(chunk.clone())));
    let res = reqwest::Client::new()
        .post(files_url(&envd.base))
        .query(&[("path", dest.display().to_string())])
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let hwm = envd.vm_hwm();
    eprintln!(
        "envd VmHWM after a 1 GiB upload: {:.1} MiB",
        hwm as f64 / MIB as f64
    );
    assert!(
        hwm < 64 * MIB as u64,
        "envd peak RSS {hwm} bytes is not under 64 MiB"
    );
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), GIB);
}
