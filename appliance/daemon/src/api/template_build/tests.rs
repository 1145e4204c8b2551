//! The build API through the router, without a VM: a real store, key and
//! catalog, a builder whose QEMU is not runnable, so every build ends in
//! `error` at the builder. What is checked is the E2B contract (statuses,
//! bodies, auth, the upload URL) and that a failure reaches `reason`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::{BuildRegistry, TemplateBuildState, routes};
use crate::sandboxes::{Sandboxes, Settings};
use crate::store::Store;
use crate::templates::{Catalog, GuestImage};
use crate::vmm::qemu::probe::Accel;
use crate::vmm::qemu::{Qemu, QemuConfig};

struct Api {
    app: Router,
    key: String,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = Store::open(&data).unwrap();
    let (key, _) = crate::keys::create(&keys, "test").unwrap();
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
    std::fs::write(templates.join("base.yaml"), "version: 1\nname: base\n").unwrap();
    let qemu = || {
        Qemu::new(QemuConfig {
            // Not QEMU (and the image files do not exist): creating a VM
            // fails, which is the point.
            binary: "/bin/false".into(),
            vm_root: data.join("vms"),
            accel: Accel::Tcg,
        })
        .unwrap()
    };
    let sandboxes = Sandboxes::new(
        qemu(),
        Store::open(&data).unwrap(),
        Catalog::load(&templates, image).unwrap(),
        Settings {
            limits: lelantos_core::config::LimitsConfig::default(),
            envd_version: "0.6.13".into(),
            boot_timeout: Duration::from_secs(1),
        },
    );
    let app = routes(TemplateBuildState {
        sandboxes,
        builder: Arc::new(crate::builder::Builder::new(qemu(), data.join("builds"), 1)),
        envd_path: dir.path().join("envd"),
        cache_dir: data.join("cache"),
        data_dir: data.clone(),
        public_url: "http://127.0.0.1:1".into(),
        keys: Arc::new(Mutex::new(keys)),
        builds: BuildRegistry::new(),
    });
    Api {
        app,
        key,
        data,
        _dir: dir,
    }
}

impl Api {
    async fn call(&self, method: &str, path: &str, key: bool, body: Body) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if key {
            req = req.header("X-API-Key", &self.key);
        }
        let res = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {bytes:?}"))
        };
        (status, value)
    }

    async fn json(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(method, path, true, Body::from(body.to_string()))
            .await
    }
}

fn assert_error(status: StatusCode, body: &Value, want: u16) {
    assert_eq!(status.as_u16(), want, "{body}");
    assert_eq!(body["code"], json!(want), "{body}");
    assert!(body["message"].is_string(), "{body}");
}

#[tokio::test]
async fn the_sdk_sequence_ends_in_error_with_a_reason() {
    let api = api();
    // py 2.45.1 sends cpuCount/memoryMB always.
    let (st, v) = api
        .json(
            "POST",
            "/v3/templates",
            json!({"name": "My-Tpl:v1", "cpuCount": 2, "memoryMB": 1024}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["templateID"], "my-tpl");
    assert_eq!(v["tags"], json!(["v1"]));
    assert_eq!(v["aliases"], json!(["my-tpl"]));
    assert_eq!(v["public"], json!(false));
    let build = v["buildID"].as_str().unwrap().to_owned();

    let (st, v) = api
        .call("GET", "/templates/aliases/my-tpl", true, Body::empty())
        .await;
    assert_eq!((st, &v["templateID"]), (StatusCode::OK, &json!("my-tpl")));
    let (st, v) = api
        .call("GET", "/templates/aliases/nope", true, Body::empty())
        .await;
    assert_error(st, &v, 404);

    // Files: not present, a URL to this server that works once, unauthenticated.
    let (st, v) = api
        .call("GET", "/templates/my-tpl/files/abc123", true, Body::empty())
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["present"], json!(false));
    let url = v["url"].as_str().unwrap();
    let path = url.strip_prefix("http://127.0.0.1:1").unwrap().to_owned();
    let (st, _) = api
        .call("PUT", &path, false, Body::from(vec![1u8; 10]))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = api
        .call("PUT", &path, false, Body::from(vec![1u8; 10]))
        .await;
    assert_error(st, &v, 403);
    assert!(api.data.join("template-files/abc123.tar.gz").is_file());
    let (_, v) = api
        .call("GET", "/templates/my-tpl/files/abc123", true, Body::empty())
        .await;
    assert_eq!(v["present"], json!(true));

    let start = format!("/v2/templates/my-tpl/builds/{build}");
    let (st, v) = api
        .json(
            "POST",
            &start,
            json!({"force": false, "steps": [{"type": "RUN", "args": ["true"], "force": false}]}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let (st, v) = api.json("POST", &start, json!({"steps": []})).await;
    assert_error(st, &v, 409);

    let status = format!("/templates/my-tpl/builds/{build}/status?logsOffset=0&limit=100");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (st, v) = api.call("GET", &status, true, Body::empty()).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        if v["status"] == "error" || v["status"] == "ready" {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "build never ended: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(v["status"], "error", "{v}");
    assert!(v["reason"]["message"].is_string(), "{v}");
    let n = v["logEntries"].as_array().unwrap().len();
    assert!(n > 0 && v["logs"].as_array().unwrap().len() == n, "{v}");
    // Offsets page through the same log.
    let (_, rest) = api
        .call(
            "GET",
            &format!("/templates/my-tpl/builds/{build}/status?logsOffset={n}"),
            true,
            Body::empty(),
        )
        .await;
    assert_eq!(rest["logEntries"], json!([]));
}

#[tokio::test]
async fn refusals_have_e2b_bodies() {
    let api = api();
    let (st, v) = api
        .call("POST", "/v3/templates", false, Body::from("{}"))
        .await;
    assert_error(st, &v, 401);
    for body in [
        json!({}),
        json!({"name": "bad name"}),
        json!({"name": "ok", "cpuCount": 99}),
        json!({"name": "ok", "tags": ["no spaces"]}),
    ] {
        let (st, v) = api.json("POST", "/v3/templates", body.clone()).await;
        assert_error(st, &v, 400);
    }
    // The builtin template belongs to templates.d.
    let (st, v) = api
        .json("POST", "/v3/templates", json!({"name": "base"}))
        .await;
    assert_error(st, &v, 409);
    let (st, v) = api
        .call("GET", "/templates/ghost/files/abc", true, Body::empty())
        .await;
    assert_error(st, &v, 404);
    let (st, v) = api
        .call(
            "GET",
            "/templates/ghost/builds/x/status",
            true,
            Body::empty(),
        )
        .await;
    assert_error(st, &v, 404);

    let (_, v) = api
        .json("POST", "/v3/templates", json!({"alias": "t"}))
        .await;
    let build = v["buildID"].as_str().unwrap().to_owned();
    let start = format!("/v2/templates/t/builds/{build}");
    for body in [
        json!({"fromImage": "a", "fromTemplate": "b"}),
        json!({"steps": [{"type": "ENV", "args": ["K"]}]}),
        json!({"steps": [{"type": "COPY", "args": ["a", "/b", "", ""]}]}),
        json!({"steps": [{"type": "ADD", "args": ["a"]}]}),
    ] {
        let (st, v) = api.json("POST", &start, body).await;
        assert_error(st, &v, 400);
    }
    let (st, v) = api
        .call("PUT", "/uploads/abc?token=nope", false, Body::from("x"))
        .await;
    assert_error(st, &v, 403);
}
