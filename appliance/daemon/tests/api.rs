//! The REST surface without booting VMs: a real SQLite store in a temp dir,
//! a real key, the real router and sandbox owner (QEMU driver configured but
//! never asked to start anything). What these paths must get right is the
//! E2B contract: statuses, `{"code","message"}` bodies, auth, validation.
//! Everything that needs a running VM is covered by the SDK suite
//! (`tests/appliance`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use lelantos::api::server::{ApiState, router};
use lelantos::sandboxes::{Sandboxes, Settings};
use lelantos::store::Store;
use lelantos::templates::{Catalog, GuestImage};
use lelantos::vmm::qemu::probe::Accel;
use lelantos::vmm::qemu::{Qemu, QemuConfig};
use lelantos_core::config::LimitsConfig;
use serde_json::{Value, json};
use tower::ServiceExt as _;

struct Api {
    app: Router,
    key: String,
    _dir: tempfile::TempDir,
}

fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = Store::open(&data).unwrap();
    let (key, _) = lelantos::keys::create(&keys, "test").unwrap();
    let image = Arc::new(GuestImage {
        manifest: dir.path().join("manifest-test.json"),
        kernel: dir.path().join("vmlinuz"),
        initramfs: dir.path().join("initramfs"),
        rootfs: dir.path().join("rootfs.ext4"),
        rootfs_bytes: 2 << 30,
        cmdline: vec![],
    });
    let templates = dir.path().join("templates.d");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(
        templates.join("base.yaml"),
        "version: 1\nname: base\naliases: [default]\nresources:\n  vcpus: 2\n  memory_mib: 256\n",
    )
    .unwrap();
    let qemu = Qemu::new(QemuConfig {
        // Never executed: no test here creates a VM successfully.
        binary: std::env::current_exe().unwrap(),
        vm_root: data.join("vms"),
        accel: Accel::Tcg,
    })
    .unwrap();
    let sandboxes = Sandboxes::new(
        qemu,
        Store::open(&data).unwrap(),
        Catalog::load(&templates, image).unwrap(),
        Settings {
            limits: LimitsConfig::default(),
            envd_version: "0.6.13".into(),
            boot_timeout: std::time::Duration::from_secs(1),
        },
    );
    let app = router(
        ApiState {
            sandboxes,
            domain: "localhost".into(),
            default_timeout_s: 300,
        },
        Arc::new(Mutex::new(keys)),
    );
    Api {
        app,
        key,
        _dir: dir,
    }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            req = req.header("X-API-Key", k);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {bytes:?}"))
        };
        (status, value)
    }

    async fn authed(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        self.call(method, path, Some(&self.key.clone()), body).await
    }
}

/// Every error answer has E2B's shape with `code` equal to the status.
fn assert_error(status: StatusCode, body: &Value, want: u16) {
    assert_eq!(status.as_u16(), want, "{body}");
    assert_eq!(body["code"], json!(want), "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn keys_are_required_and_both_prefixes_work() {
    let api = api();
    let (s, b) = api.call("GET", "/v2/sandboxes", None, None).await;
    assert_error(s, &b, 401);
    let (s, b) = api
        .call(
            "GET",
            "/v2/sandboxes",
            Some("e2b_0123456789abcdef0123456789abcdef01234567"),
            None,
        )
        .await;
    assert_error(s, &b, 401);
    let (s, b) = api
        .call("DELETE", "/sandboxes/x", Some("nonsense"), None)
        .await;
    assert_error(s, &b, 401);

    let (s, b) = api.authed("GET", "/v2/sandboxes", None).await;
    assert_eq!((s, b), (StatusCode::OK, json!([])));
    let e2b_form = api.key.replacen("lel_", "e2b_", 1);
    let (s, _) = api
        .call("GET", "/v2/sandboxes", Some(&e2b_form), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Health is open (no key): it is how a supervisor sees the daemon.
    let (s, b) = api.call("GET", "/health", None, None).await;
    assert_eq!((s, b["status"].clone()), (StatusCode::OK, json!("ok")));
}

#[tokio::test]
async fn unknown_sandboxes_are_404_everywhere() {
    let api = api();
    for (method, path, body) in [
        ("GET", "/sandboxes/nope", None),
        ("DELETE", "/sandboxes/nope", None),
        ("POST", "/sandboxes/nope/timeout", Some(r#"{"timeout":30}"#)),
        ("POST", "/sandboxes/nope/refreshes", Some("{}")),
        ("POST", "/sandboxes/nope/pause", Some(r#"{"memory":true}"#)),
        (
            "POST",
            "/sandboxes/nope/connect",
            Some(r#"{"timeout":300}"#),
        ),
        ("POST", "/v2/sandboxes/nope/connect", Some("{}")),
        ("POST", "/sandboxes/nope/resume", Some("{}")),
        ("GET", "/sandboxes/nope/metrics", None),
        ("GET", "/sandboxes/nope/logs", None),
        ("GET", "/v2/sandboxes/nope/logs", None),
        ("GET", "/templates/nope", None),
        ("DELETE", "/templates/nope", None),
    ] {
        let (s, b) = api.authed(method, path, body).await;
        assert_error(s, &b, 404);
    }
    let (s, b) = api.authed("GET", "/no/such/endpoint", None).await;
    assert_error(s, &b, 404);
}

#[tokio::test]
async fn bad_requests_are_400_and_create_nothing() {
    let api = api();
    for (path, body) in [
        ("/sandboxes", "{not json"),
        ("/sandboxes", r#"{"timeout":30}"#),
        ("/sandboxes", r#"{"templateID":"base","timeout":0}"#),
        ("/sandboxes", r#"{"templateID":"base","timeout":86401}"#),
        ("/v2/sandboxes", r#"{"templateID":"base","cpuCount":9}"#),
        ("/v2/sandboxes", r#"{"templateID":"base","memoryMB":64}"#),
        (
            "/v2/sandboxes",
            r#"{"templateID":"base","metadata":{"a":1}}"#,
        ),
    ] {
        let (s, b) = api.authed("POST", path, Some(body)).await;
        assert_error(s, &b, 400);
    }
    let (s, b) = api
        .authed("POST", "/v2/sandboxes", Some(r#"{"templateID":"no-such"}"#))
        .await;
    assert_error(s, &b, 404);
    assert!(b["message"].as_str().unwrap().contains("no-such"), "{b}");
    let (s, b) = api
        .authed("GET", "/v2/sandboxes?state=sleeping", None)
        .await;
    assert_error(s, &b, 400);
    let (s, b) = api.authed("GET", "/v2/sandboxes?limit=0", None).await;
    assert_error(s, &b, 400);
    let (s, b) = api.authed("GET", "/v2/sandboxes?nextToken=%%%", None).await;
    assert_error(s, &b, 400);
    let (s, b) = api.authed("PUT", "/v2/sandboxes", Some("{}")).await;
    assert_error(s, &b, 405);
    // Nothing was created by any of it.
    let (_, list) = api.authed("GET", "/v2/sandboxes", None).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn a_failed_boot_is_a_500_with_the_reason_and_no_leftover() {
    let api = api();
    // The "QEMU" binary is the test executable and the kernel does not
    // exist: the VM layer must fail, the API must say why, and the sandbox
    // must not be listed afterwards.
    let (s, b) = api
        .authed("POST", "/v2/sandboxes", Some(r#"{"templateID":"default"}"#))
        .await;
    assert_error(s, &b, 500);
    assert!(
        b["message"].as_str().unwrap().contains("failed to start"),
        "{b}"
    );
    let (_, list) = api.authed("GET", "/v2/sandboxes", None).await;
    assert_eq!(list, json!([]));
    // The VM layer released what it had taken (directory, and with it the
    // namespace it records) before the error came back.
    let vms = api._dir.path().join("data/vms");
    let left: Vec<_> = std::fs::read_dir(&vms).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn templates_come_from_the_definitions() {
    let api = api();
    let (s, b) = api.authed("GET", "/templates", None).await;
    assert_eq!(s, StatusCode::OK);
    let t = &b[0];
    assert_eq!(t["templateID"], json!("base"));
    assert_eq!(t["aliases"], json!(["default"]));
    assert_eq!(t["names"], json!(["base", "default"]));
    assert_eq!(
        (t["cpuCount"].clone(), t["memoryMB"].clone()),
        (json!(2), json!(256))
    );
    assert_eq!(t["diskSizeMB"], json!(2048));
    assert_eq!(t["buildStatus"], json!("ready"));
    let (s, b) = api.authed("GET", "/templates/default", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["templateID"], json!("base"));
    assert_eq!(b["builds"][0]["status"], json!("ready"));
    // Definitions are files: the API refuses to delete one behind git's back.
    let (s, b) = api.authed("DELETE", "/templates/base", None).await;
    assert_error(s, &b, 409);
    assert!(b["message"].as_str().unwrap().contains("base.yaml"), "{b}");
}
