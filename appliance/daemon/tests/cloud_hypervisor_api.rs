//! Contract tests for the Cloud Hypervisor driver: every request it sends
//! must be one Cloud Hypervisor's published REST API accepts.
//!
//! Cloud Hypervisor cannot run where these tests run (no binary, and no KVM
//! that boots guests), so this is **a contract check of our requests, not a
//! VMM**. The schema is `shared/spec/cloud-hypervisor-openapi.yaml` (from
//! cloud-hypervisor ae44c297), loaded at test time and turned into JSON
//! Schema (draft 4, which OpenAPI 3.0's schema objects follow). Bodies are
//! checked twice: against the schema as published, and against a strict
//! form that also refuses unknown fields and out-of-range integer formats
//! (the published schema allows any extra field, which would let a
//! misspelt one through — Cloud Hypervisor itself rejects those).
//!
//! Two layers:
//! - the request builders (`vmm::cloud_hypervisor::config`) over a matrix
//!   of specs, plus negative cases showing the validator bites;
//! - the whole driver (state machine, builders, the real
//!   `cloud-hypervisor-client` HTTP client, snapshot staging) run through
//!   create/boot/pause/snapshot/resume/shutdown/restore against a small HTTP
//!   server on the VM's unix socket that records what arrives and answers
//!   with spec-shaped replies. The host side (namespace, overlay, process)
//!   is a recording [`Launcher`]; nothing here pretends to boot anything.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use lelantos::net::VmNetwork;
use lelantos::vmm::cloud_hypervisor::config::{self, MemoryRestoreMode};
use lelantos::vmm::cloud_hypervisor::launcher::{Launcher, VmmProcess};
use lelantos::vmm::cloud_hypervisor::{CloudHypervisor, snapshot};
use lelantos::vmm::host::VmDir;
use lelantos::vmm::{Error, VmBackend as _, VmState};
use lelantos_core::{LifecycleId, MemoryMib, NetworkSpec, SandboxId, Vcpus, VmSpec};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The spec, as JSON Schema.

/// Where CI puts `shared/` (beside the checkout, read-only).
fn spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/spec/cloud-hypervisor-openapi.yaml")
}

/// YAML → JSON. OpenAPI writes response codes as bare integers (`204:`),
/// which JSON object keys cannot be, so keys are stringified.
fn yaml_to_json(v: serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                json!(n.as_f64().expect("a YAML number is i64, u64 or f64"))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        Y::Number(n) => n.to_string(),
                        Y::Bool(b) => b.to_string(),
                        other => panic!("unsupported YAML key {other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}

fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = spec_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the Cloud Hypervisor API schema at {} ({e}); these tests need shared/spec/ beside the checkout",
                path.display()
            )
        });
        let yaml: serde_norway::Value = serde_norway::from_str(&text).expect("the OpenAPI document is valid YAML");
        let doc = yaml_to_json(yaml);
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.0")), "expected OpenAPI 3.0");
        doc
    })
}

/// `#/components/schemas/X` → `#/definitions/X`, everywhere.
fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                *r = format!("#/definitions/{name}");
            }
            map.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// The strict form: objects with declared properties take no others, and
/// sized integer formats get their ranges.
fn tighten(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            let range = match map.get("format").and_then(Value::as_str) {
                Some("int8") => Some((i64::from(i8::MIN), i64::from(i8::MAX))),
                Some("uint8") => Some((0, i64::from(u8::MAX))),
                Some("int16") => Some((i64::from(i16::MIN), i64::from(i16::MAX))),
                Some("uint16") => Some((0, i64::from(u16::MAX))),
                Some("int32") => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
                Some("uint32") => Some((0, i64::from(u32::MAX))),
                _ => None,
            };
            if let Some((lo, hi)) = range {
                map.entry("minimum").or_insert(json!(lo));
                map.entry("maximum").or_insert(json!(hi));
            }
            map.values_mut().for_each(tighten);
        }
        Value::Array(items) => items.iter_mut().for_each(tighten),
        _ => {}
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Published,
    Strict,
}

fn schema_for(component: &str, mode: Mode) -> Value {
    let mut defs = openapi()["components"]["schemas"].clone();
    assert!(
        defs.get(component).is_some(),
        "no schema named {component} in the spec"
    );
    rewrite_refs(&mut defs);
    if mode == Mode::Strict {
        tighten(&mut defs);
    }
    json!({ "definitions": defs, "allOf": [{ "$ref": format!("#/definitions/{component}") }] })
}

/// Every violation of `component` in `body`, as text (empty = valid).
fn violations(component: &str, body: &Value, mode: Mode) -> Vec<String> {
    let schema = schema_for(component, mode);
    let validator = jsonschema::draft4::new(&schema).expect("the converted schema compiles");
    validator
        .iter_errors(body)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect()
}

#[track_caller]
fn assert_valid(component: &str, body: &Value) {
    for mode in [Mode::Published, Mode::Strict] {
        let errs = violations(component, body, mode);
        assert!(
            errs.is_empty(),
            "{component} ({mode:?}) rejects {body:#}:\n{}",
            errs.join("\n")
        );
    }
}

/// The operation object for `method` on `path` (a path under the API base).
fn operation(method: &str, path: &str) -> Option<&'static Value> {
    openapi()["paths"]
        .get(path)?
        .get(method.to_ascii_lowercase())
}

/// `(schema name, required)` of an operation's JSON request body.
fn request_schema(op: &Value) -> Option<(String, bool)> {
    let body = op.get("requestBody")?;
    let r = body["content"]["application/json"]["schema"]["$ref"].as_str()?;
    let name = r.strip_prefix("#/components/schemas/")?.to_owned();
    Some((name, body["required"].as_bool().unwrap_or(false)))
}

// ---------------------------------------------------------------------------
// Request builders over a matrix of specs.

fn spec_with(
    root: &Path,
    lifecycle: &str,
    vcpus: u32,
    mib: u32,
    initramfs: bool,
    egress: bool,
) -> VmSpec {
    VmSpec {
        sandbox_id: SandboxId::try_from("sbx-contract".to_owned()).unwrap(),
        lifecycle_id: LifecycleId::try_from(lifecycle.to_owned()).unwrap(),
        vcpus: Vcpus::try_from(vcpus).unwrap(),
        memory: MemoryMib::try_from(mib).unwrap(),
        kernel: root.join("images/vmlinuz"),
        initramfs: initramfs.then(|| root.join("images/initrd.img")),
        rootfs: root.join("images/rootfs.ext4"),
        extra_cmdline: vec!["root=/dev/vda".to_owned()],
        network: NetworkSpec { egress },
    }
}

#[test]
fn every_create_body_validates_against_vm_config() {
    let root = Path::new("/var/lib/lelantos");
    let mut checked = 0;
    for initramfs in [false, true] {
        for vcpus in [Vcpus::MIN, Vcpus::MAX] {
            for mib in [MemoryMib::MIN, MemoryMib::MAX] {
                for egress in [false, true] {
                    let spec = spec_with(root, "life-matrix", vcpus, mib, initramfs, egress);
                    let dir = VmDir {
                        path: root.join("vms/life-matrix"),
                    };
                    let net = VmNetwork {
                        netns: VmNetwork::netns_name("life-matrix"),
                        egress,
                    };
                    let body = serde_json::to_value(config::vm_config(&spec, &dir, &net).unwrap())
                        .unwrap();
                    assert_valid("VmConfig", &body);
                    assert_eq!(body["cpus"]["boot_vcpus"], vcpus);
                    assert_eq!(body["memory"]["size"], u64::from(mib) * 1024 * 1024);
                    assert_eq!(body["payload"].get("initramfs").is_some(), initramfs);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 16);
}

#[test]
fn snapshot_and_restore_bodies_validate() {
    let body =
        serde_json::to_value(config::snapshot_config(Path::new("/snaps/one")).unwrap()).unwrap();
    assert_valid("VmSnapshotConfig", &body);
    assert_eq!(body, json!({"destination_url": "file:///snaps/one"}));
    for (mode, wire) in [
        (MemoryRestoreMode::Copy, "Copy"),
        (MemoryRestoreMode::OnDemand, "OnDemand"),
    ] {
        let body =
            serde_json::to_value(config::restore_config(Path::new("/snaps/one"), mode).unwrap())
                .unwrap();
        assert_valid("RestoreConfig", &body);
        assert_eq!(body["memory_restore_mode"], wire);
        assert_eq!(body["prefault"], false, "OnDemand refuses prefault");
        assert_eq!(body["resume"], true);
    }
}

#[test]
fn the_validator_catches_invalid_bodies() {
    let root = Path::new("/v");
    let spec = spec_with(root, "life-neg", 1, 128, false, false);
    let dir = VmDir {
        path: root.join("vms/life-neg"),
    };
    let net = VmNetwork {
        netns: "lel-life-neg".into(),
        egress: false,
    };
    let good = serde_json::to_value(config::vm_config(&spec, &dir, &net).unwrap()).unwrap();
    assert_valid("VmConfig", &good);

    // Missing the one required field.
    let mut no_payload = good.clone();
    no_payload.as_object_mut().unwrap().remove("payload");
    for mode in [Mode::Published, Mode::Strict] {
        let errs = violations("VmConfig", &no_payload, mode);
        assert!(
            errs.iter().any(|e| e.contains("payload")),
            "{mode:?}: {errs:?}"
        );
    }
    // Below a minimum.
    let mut zero_cpus = good.clone();
    zero_cpus["cpus"]["boot_vcpus"] = json!(0);
    assert!(!violations("VmConfig", &zero_cpus, Mode::Published).is_empty());
    // Not in an enum.
    let mut bad_mode = good.clone();
    bad_mode["serial"]["mode"] = json!("Logfile");
    assert!(!violations("VmConfig", &bad_mode, Mode::Published).is_empty());
    // Wrong type.
    let mut text_size = good.clone();
    text_size["memory"]["size"] = json!("512M");
    assert!(!violations("VmConfig", &text_size, Mode::Published).is_empty());
    // A misspelt field: the published schema lets it through, the strict
    // form does not (this is the field the client crate would send as
    // `generic-vhost-user`, where the spec says `generic_vhost_user`).
    let mut misspelt = good.clone();
    misspelt["generic-vhost-user"] = json!([]);
    assert!(violations("VmConfig", &misspelt, Mode::Published).is_empty());
    assert!(
        violations("VmConfig", &misspelt, Mode::Strict)
            .iter()
            .any(|e| e.contains("generic-vhost-user")),
        "strict mode must refuse unknown fields"
    );
    let mut typo = good.clone();
    typo["disks"][0]["backing_file"] = json!(true);
    assert!(!violations("VmConfig", &typo, Mode::Strict).is_empty());
    // Out of a sized integer format's range.
    let mut big_segment = good;
    big_segment["disks"][0]["pci_segment"] = json!(70000);
    assert!(!violations("VmConfig", &big_segment, Mode::Strict).is_empty());

    assert!(
        !violations(
            "RestoreConfig",
            &json!({"memory_restore_mode": "Copy"}),
            Mode::Published
        )
        .is_empty()
    );
    assert!(
        !violations(
            "RestoreConfig",
            &json!({"source_url": "file:///s", "memory_restore_mode": "Lazy"}),
            Mode::Published
        )
        .is_empty()
    );
}

// ---------------------------------------------------------------------------
// The whole driver on the wire.

/// One request as it arrived, and what the recorder answered.
#[derive(Debug, Clone)]
struct Exchange {
    socket: PathBuf,
    method: String,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
    status: u16,
    reply: Option<Value>,
}

/// What one stand-in VMM remembers (the minimum to answer like the spec).
#[derive(Debug, Default)]
struct VmmModel {
    config: Option<Value>,
    state: Option<&'static str>,
    /// `config.json` as read from a restore source (what Cloud Hypervisor
    /// would deserialise).
    restored_config: Option<Value>,
}

#[derive(Default)]
struct Recorder {
    /// Answer `vm.restore` in `OnDemand` mode with 400, as a Cloud
    /// Hypervisor that cannot set up userfaultfd would refuse it.
    refuse_on_demand: std::sync::atomic::AtomicBool,
    exchanges: Mutex<Vec<Exchange>>,
    host_calls: Mutex<Vec<String>>,
    restored_configs: Mutex<Vec<Value>>,
}

impl Recorder {
    fn note(&self, call: String) {
        self.host_calls.lock().unwrap().push(call);
    }
}

const API_BASE: &str = "/api/v1";

/// Answers one request the way Cloud Hypervisor's API describes, with just
/// enough state to refuse out-of-order calls (405/404 as the spec lists).
fn answer(
    model: &mut VmmModel,
    refuse_on_demand: bool,
    method: &str,
    path: &str,
    body: &[u8],
) -> (StatusCode, Option<Value>) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let state = model.state;
    let refuse = |s: u16| (StatusCode::from_u16(s).unwrap(), None);
    match (method, path) {
        ("GET", "/vmm.ping") => (
            StatusCode::OK,
            Some(
                json!({"version": "recorder", "build_version": "contract-test", "pid": std::process::id(), "features": []}),
            ),
        ),
        ("PUT", "/vm.create") => {
            model.config = parsed;
            model.state = Some("Created");
            (StatusCode::NO_CONTENT, None)
        }
        ("PUT", "/vm.boot") => match state {
            Some("Created") => {
                model.state = Some("Running");
                (StatusCode::NO_CONTENT, None)
            }
            _ => refuse(404),
        },
        ("PUT", "/vm.pause") => match state {
            Some("Running") => {
                model.state = Some("Paused");
                (StatusCode::NO_CONTENT, None)
            }
            None => refuse(404),
            _ => refuse(405),
        },
        ("PUT", "/vm.resume") => match state {
            Some("Paused") => {
                model.state = Some("Running");
                (StatusCode::NO_CONTENT, None)
            }
            None => refuse(404),
            _ => refuse(405),
        },
        ("PUT", "/vm.snapshot") => {
            if state != Some("Paused") {
                return refuse(405);
            }
            // Lay out the files Cloud Hypervisor documents for a snapshot.
            let url = parsed
                .as_ref()
                .and_then(|b| b["destination_url"].as_str())
                .unwrap_or_default();
            let dir = PathBuf::from(url.strip_prefix("file://").expect("file:// URL"));
            assert!(
                dir.is_dir(),
                "Cloud Hypervisor needs the destination to exist: {}",
                dir.display()
            );
            let config = model.config.clone().expect("a created VM has a config");
            std::fs::write(
                dir.join(snapshot::CONFIG_FILE),
                serde_json::to_vec_pretty(&config).unwrap(),
            )
            .unwrap();
            std::fs::write(dir.join(snapshot::STATE_FILE), b"{}").unwrap();
            std::fs::write(dir.join(snapshot::MEMORY_FILE), vec![0u8; 4096]).unwrap();
            (StatusCode::NO_CONTENT, None)
        }
        ("PUT", "/vm.restore") => {
            if state.is_some() {
                return refuse(404);
            }
            let body = parsed.unwrap_or_default();
            if refuse_on_demand && body["memory_restore_mode"] == "OnDemand" {
                return refuse(400);
            }
            let dir = PathBuf::from(
                body["source_url"]
                    .as_str()
                    .unwrap()
                    .strip_prefix("file://")
                    .unwrap(),
            );
            // Read the source as Cloud Hypervisor does: config, state and
            // memory files by name inside the directory (links followed).
            let config: Value =
                serde_json::from_slice(&std::fs::read(dir.join(snapshot::CONFIG_FILE)).unwrap())
                    .unwrap();
            std::fs::read(dir.join(snapshot::STATE_FILE))
                .expect("state.json reachable from the restore source");
            std::fs::read(dir.join(snapshot::MEMORY_FILE))
                .expect("memory-ranges reachable from the restore source");
            model.restored_config = Some(config.clone());
            model.config = Some(config);
            model.state = Some(if body["resume"] == true {
                "Running"
            } else {
                "Paused"
            });
            (StatusCode::NO_CONTENT, None)
        }
        ("PUT", "/vm.shutdown") => match state {
            Some("Running" | "Paused") => {
                model.state = Some("Shutdown");
                (StatusCode::NO_CONTENT, None)
            }
            None => refuse(404),
            _ => refuse(405),
        },
        ("PUT", "/vmm.shutdown") => (StatusCode::NO_CONTENT, None),
        ("GET", "/vm.info") => match (&model.config, state) {
            (Some(c), Some(s)) => (StatusCode::OK, Some(json!({"config": c, "state": s}))),
            _ => refuse(404),
        },
        ("GET", "/vm.counters") => (
            StatusCode::OK,
            Some(json!({
                config::DISK_ID: {"read_bytes": 4096, "write_bytes": 512, "read_ops": 1, "write_ops": 1},
                config::NET_ID: {"rx_bytes": 100, "tx_bytes": 200, "rx_frames": 1, "tx_frames": 2}
            })),
        ),
        _ => refuse(404),
    }
}

/// Serves the API on `socket` until the test ends, recording everything.
fn serve(socket: PathBuf, recorder: Arc<Recorder>) {
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind the recorder socket");
    let model = Arc::new(Mutex::new(VmmModel::default()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (recorder, model, socket) = (recorder.clone(), model.clone(), socket.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (recorder, model, socket) =
                            (recorder.clone(), model.clone(), socket.clone());
                        async move {
                            let method = req.method().to_string();
                            let full_path = req.uri().path().to_owned();
                            let content_type = req
                                .headers()
                                .get(hyper::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let body = req.into_body().collect().await?.to_bytes().to_vec();
                            let path = full_path
                                .strip_prefix(API_BASE)
                                .unwrap_or("<outside the API base>")
                                .to_owned();
                            let (status, reply) = {
                                let mut m = model.lock().unwrap();
                                let refuse = recorder
                                    .refuse_on_demand
                                    .load(std::sync::atomic::Ordering::SeqCst);
                                answer(&mut m, refuse, &method, &path, &body)
                            };
                            if let Some(c) = model.lock().unwrap().restored_config.take() {
                                recorder.restored_configs.lock().unwrap().push(c);
                            }
                            recorder.exchanges.lock().unwrap().push(Exchange {
                                socket,
                                method,
                                path,
                                content_type,
                                body,
                                status: status.as_u16(),
                                reply: reply.clone(),
                            });
                            let mut resp = Response::builder().status(status);
                            let bytes = match reply {
                                Some(v) => {
                                    resp = resp
                                        .header(hyper::header::CONTENT_TYPE, "application/json");
                                    Bytes::from(serde_json::to_vec(&v).unwrap())
                                }
                                None => Bytes::new(),
                            };
                            Ok::<_, hyper::Error>(resp.body(Full::new(bytes)).unwrap())
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
}

/// The host side of the driver, recorded. `spawn` starts the recorder on
/// the socket the driver's command line names, instead of a VMM.
struct RecordingLauncher {
    recorder: Arc<Recorder>,
}

impl Launcher for RecordingLauncher {
    async fn create_overlay(
        &self,
        base: &Path,
        base_format: &str,
        overlay: &Path,
        _vm: &str,
    ) -> Result<(), Error> {
        self.recorder.note(format!(
            "overlay {} {base_format} -> {}",
            base.display(),
            overlay.display()
        ));
        std::fs::write(
            overlay,
            format!("QFI\u{fb} overlay over {}", base.display()),
        )
        .unwrap();
        Ok(())
    }

    async fn create_network(&self, vm: &str, egress: bool) -> Result<VmNetwork, Error> {
        self.recorder.note(format!("netns create {vm}"));
        Ok(VmNetwork {
            netns: VmNetwork::netns_name(vm),
            egress,
        })
    }

    async fn destroy_network(&self, _vm: &str, net: &VmNetwork) -> Result<(), Error> {
        self.recorder.note(format!("netns destroy {}", net.netns));
        Ok(())
    }

    fn spawn(
        &self,
        program: &Path,
        args: &[String],
        net: &VmNetwork,
        _log: &Path,
        _vm: &str,
    ) -> Result<VmmProcess, Error> {
        self.recorder.note(format!(
            "spawn {} {} in {}",
            program.display(),
            args.join(" "),
            net.netns
        ));
        assert_eq!(args.len(), 2, "{args:?}");
        assert_eq!(args[0], "--api-socket");
        let socket = PathBuf::from(
            args[1]
                .strip_prefix("path=")
                .expect("--api-socket path=<socket>"),
        );
        serve(socket, self.recorder.clone());
        Ok(VmmProcess::default())
    }

    fn kill(&self, pid: u32) {
        self.recorder.note(format!("kill {pid}"));
    }
}

/// Checks one recorded exchange against the spec: the endpoint exists, the
/// body (or its absence) is what the operation declares, and our reply was
/// one the spec lists.
fn check_against_spec(x: &Exchange) {
    let op = operation(&x.method, &x.path)
        .unwrap_or_else(|| panic!("{} {} is not in Cloud Hypervisor's API", x.method, x.path));
    match request_schema(op) {
        Some((schema, required)) => {
            if x.body.is_empty() {
                assert!(!required, "{} {} needs a {schema} body", x.method, x.path);
            } else {
                assert_eq!(
                    x.content_type.as_deref(),
                    Some("application/json"),
                    "{} {}",
                    x.method,
                    x.path
                );
                let body: Value = serde_json::from_slice(&x.body).expect("body is JSON");
                assert_valid(&schema, &body);
            }
        }
        None => assert!(
            x.body.is_empty(),
            "{} {} takes no body, got {:?}",
            x.method,
            x.path,
            x.body
        ),
    }
    let listed = &op["responses"][x.status.to_string()];
    assert!(
        listed.is_object(),
        "{} {}: the spec lists no {} reply",
        x.method,
        x.path,
        x.status
    );
    if let Some(reply) = &x.reply {
        let name = listed["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
            .unwrap_or_else(|| {
                panic!(
                    "{} {}: reply with a body the spec does not describe",
                    x.method, x.path
                )
            });
        // Published form only: VmInfo's config echoes what we sent.
        let errs = violations(name, reply, Mode::Published);
        assert!(
            errs.is_empty(),
            "our stand-in's {name} reply is off-spec: {errs:?}"
        );
    }
}

fn test_spec(root: &Path, lifecycle: &str) -> VmSpec {
    spec_with(root, lifecycle, 2, 512, true, false)
}

fn driver(
    root: &Path,
    recorder: &Arc<Recorder>,
    mode: MemoryRestoreMode,
) -> CloudHypervisor<RecordingLauncher> {
    CloudHypervisor::with_launcher(
        PathBuf::from("cloud-hypervisor"),
        root.join("vms"),
        mode,
        RecordingLauncher {
            recorder: recorder.clone(),
        },
    )
}

fn calls_since(recorder: &Recorder, from: usize) -> Vec<String> {
    recorder.exchanges.lock().unwrap()[from..]
        .iter()
        .map(|x| format!("{} {}", x.method, x.path))
        .collect()
}

#[tokio::test]
async fn the_driver_sends_only_requests_the_api_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    // A short root: the control socket path must fit a sockaddr_un.
    let root = tmp.path();
    std::fs::create_dir_all(root.join("images")).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::write(root.join("images").join(f), b"artefact").unwrap();
    }
    std::fs::write(root.join("images/rootfs.ext4"), vec![0u8; 4096]).unwrap();
    let recorder = Arc::new(Recorder::default());
    let ch = driver(root, &recorder, MemoryRestoreMode::OnDemand);

    // create: up to vm.create, guest not started.
    let spec = test_spec(root, "life-orig");
    let mut vm = ch.create(&spec).await.unwrap();
    assert_eq!(vm.state, VmState::Created);
    assert_eq!(
        calls_since(&recorder, 0),
        ["GET /vmm.ping", "PUT /vm.create"]
    );
    let record = vm.dir.read_record().expect("vm.json written");
    assert_eq!(
        (record.driver.as_str(), record.netns.as_str()),
        ("cloud-hypervisor", "lel-life-orig")
    );

    // The state machine refuses before anything is sent.
    let sent = recorder.exchanges.lock().unwrap().len();
    assert!(matches!(
        ch.pause(&mut vm).await,
        Err(Error::WrongState {
            state: VmState::Created,
            ..
        })
    ));
    assert!(matches!(
        ch.snapshot(&mut vm, &root.join("never")).await,
        Err(Error::WrongState { .. })
    ));
    assert_eq!(
        recorder.exchanges.lock().unwrap().len(),
        sent,
        "a refused op must not reach the VMM"
    );
    assert!(!root.join("never").exists());

    ch.boot(&mut vm).await.unwrap();
    let info = ch.info(&vm).await.unwrap();
    assert_eq!(info.state, VmState::Running);
    assert_eq!((info.disk_read_bytes, info.disk_write_bytes), (4096, 512));
    assert_eq!(info.accelerator, "kvm");
    ch.pause(&mut vm).await.unwrap();

    // snapshot: Cloud Hypervisor's files plus our disk copy and marker.
    let snap = root.join("snap");
    ch.snapshot(&mut vm, &snap).await.unwrap();
    assert_eq!(vm.state, VmState::Paused);
    for f in [
        snapshot::CONFIG_FILE,
        snapshot::STATE_FILE,
        snapshot::MEMORY_FILE,
        snapshot::DISK_FILE,
        snapshot::MARKER_FILE,
    ] {
        assert!(snap.join(f).is_file(), "{f} missing from the snapshot");
    }
    assert_eq!(
        std::fs::read(snap.join(snapshot::DISK_FILE)).unwrap(),
        std::fs::read(vm.dir.disk()).unwrap()
    );

    ch.resume(&mut vm).await.unwrap();
    let orig_dir = vm.dir.path.clone();
    ch.shutdown(&mut vm).await.unwrap();
    assert_eq!(vm.state, VmState::Stopped);
    assert!(!orig_dir.exists(), "the VM directory is removed");
    let sent = recorder.exchanges.lock().unwrap().len();
    ch.shutdown(&mut vm).await.unwrap();
    assert_eq!(
        recorder.exchanges.lock().unwrap().len(),
        sent,
        "a second shutdown is a no-op"
    );

    // restore (OnDemand) into a new VM, and again with Copy from a driver
    // that chose the other mode.
    let restored_configs_before = recorder.restored_configs.lock().unwrap().len();
    for (lifecycle, mode) in [
        ("life-od", MemoryRestoreMode::OnDemand),
        ("life-copy", MemoryRestoreMode::Copy),
    ] {
        let ch = driver(root, &recorder, mode);
        let from = recorder.exchanges.lock().unwrap().len();
        let spec = test_spec(root, lifecycle);
        let mut vm = ch.restore(&spec, &snap).await.unwrap();
        assert_eq!(vm.state, VmState::Running);
        assert_eq!(vm.restored_from.as_deref(), Some(snap.as_path()));
        assert_eq!(
            calls_since(&recorder, from),
            ["GET /vmm.ping", "PUT /vm.restore"]
        );
        let restore_body: Value =
            serde_json::from_slice(&recorder.exchanges.lock().unwrap()[from + 1].body).unwrap();
        assert_eq!(restore_body["memory_restore_mode"], json!(mode));
        assert_eq!(ch.info(&vm).await.unwrap().state, VmState::Running);
        // The config Cloud Hypervisor restores points at the new disk and log.
        let restored = recorder
            .restored_configs
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap();
        assert_eq!(
            restored["disks"][0]["path"],
            json!(vm.dir.disk().to_str().unwrap())
        );
        assert_eq!(
            restored["serial"]["file"],
            json!(vm.serial_log().to_str().unwrap())
        );
        assert_valid("VmConfig", &restored);
        let base = snap.join(snapshot::DISK_FILE);
        assert!(
            recorder.host_calls.lock().unwrap().iter().any(|c| c
                == &format!(
                    "overlay {} qcow2 -> {}",
                    base.display(),
                    vm.dir.disk().display()
                )),
            "the new overlay is backed by the snapshot's disk copy"
        );
        ch.pause(&mut vm).await.unwrap();
        ch.shutdown(&mut vm).await.unwrap();
    }
    assert_eq!(
        recorder.restored_configs.lock().unwrap().len(),
        restored_configs_before + 2
    );
    // The snapshot itself is untouched by restores.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(snap.join(snapshot::CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(
        saved["disks"][0]["path"],
        json!(orig_dir.join("disk.qcow2").to_str().unwrap())
    );

    // Every exchange, checked against the spec.
    let exchanges = recorder.exchanges.lock().unwrap().clone();
    for x in &exchanges {
        // The wire log, for a reader of `--nocapture` output.
        eprintln!(
            "{} {} -> {} {}",
            x.method,
            x.path,
            x.status,
            String::from_utf8_lossy(&x.body)
        );
        check_against_spec(x);
        assert!(x.socket.ends_with("control.sock"));
    }
    let used: BTreeSet<String> = exchanges
        .iter()
        .map(|x| format!("{} {}", x.method, x.path))
        .collect();
    let expected: BTreeSet<String> = [
        "GET /vmm.ping",
        "PUT /vm.create",
        "PUT /vm.boot",
        "GET /vm.info",
        "GET /vm.counters",
        "PUT /vm.pause",
        "PUT /vm.snapshot",
        "PUT /vm.resume",
        "PUT /vm.shutdown",
        "PUT /vmm.shutdown",
        "PUT /vm.restore",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(
        used, expected,
        "every endpoint the driver uses was exercised and checked"
    );
    assert!(
        exchanges.iter().all(|x| x.status < 300),
        "the driver only sent requests valid in the VM's state: {exchanges:#?}"
    );

    let host = recorder.host_calls.lock().unwrap().clone();
    assert!(
        host.iter()
            .any(|c| c.starts_with("spawn cloud-hypervisor --api-socket path=")),
        "{host:?}"
    );
    assert_eq!(
        host.iter()
            .filter(|c| c.starts_with("netns destroy"))
            .count(),
        3,
        "{host:?}"
    );
}

#[tokio::test]
async fn a_failed_restore_releases_what_it_took() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let recorder = Arc::new(Recorder::default());
    let ch = driver(root, &recorder, MemoryRestoreMode::Copy);
    // Not a snapshot at all: refused before anything is created.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = ch
        .restore(&test_spec(root, "life-x"), &empty)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Snapshot { .. }), "{err}");
    assert!(recorder.host_calls.lock().unwrap().is_empty());

    // A complete snapshot of another size: the VM is set up, then released.
    let snap = root.join("snap");
    std::fs::create_dir_all(&snap).unwrap();
    let config = json!({"cpus": {"boot_vcpus": 8, "max_vcpus": 8}, "memory": {"size": 1u64 << 30},
                        "payload": {"kernel": "/k"}, "disks": [{"path": "/old/disk.qcow2", "id": "rootfs"}]});
    std::fs::write(snap.join(snapshot::CONFIG_FILE), config.to_string()).unwrap();
    for f in [
        snapshot::STATE_FILE,
        snapshot::MEMORY_FILE,
        snapshot::DISK_FILE,
    ] {
        std::fs::write(snap.join(f), b"x").unwrap();
    }
    let marker = json!({"driver": "cloud-hypervisor", "sandbox_id": "s", "lifecycle_id": "old"});
    std::fs::write(snap.join(snapshot::MARKER_FILE), marker.to_string()).unwrap();
    let err = ch
        .restore(&test_spec(root, "life-y"), &snap)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("snapshot at"), "{err}");
    assert!(
        !root.join("vms/life-y").exists(),
        "the half-built VM's directory is removed"
    );
    assert!(
        recorder.exchanges.lock().unwrap().is_empty(),
        "nothing reached a VMM"
    );
}

#[tokio::test]
async fn an_on_demand_restore_refused_is_retried_with_a_full_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("images")).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::write(root.join("images").join(f), b"artefact").unwrap();
    }
    std::fs::write(root.join("images/rootfs.ext4"), vec![0u8; 4096]).unwrap();
    let recorder = Arc::new(Recorder::default());
    let ch = driver(root, &recorder, MemoryRestoreMode::OnDemand);
    let mut vm = ch.create(&test_spec(root, "life-src")).await.unwrap();
    ch.boot(&mut vm).await.unwrap();
    ch.pause(&mut vm).await.unwrap();
    let snap = root.join("snap");
    ch.snapshot(&mut vm, &snap).await.unwrap();
    ch.shutdown(&mut vm).await.unwrap();

    recorder
        .refuse_on_demand
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let from = recorder.exchanges.lock().unwrap().len();
    let mut restored = ch
        .restore(&test_spec(root, "life-dst"), &snap)
        .await
        .unwrap();
    assert_eq!(restored.state, VmState::Running);
    let restores: Vec<(String, u16)> = recorder.exchanges.lock().unwrap()[from..]
        .iter()
        .filter(|x| x.path == "/vm.restore")
        .map(|x| {
            let body: Value = serde_json::from_slice(&x.body).unwrap();
            (
                body["memory_restore_mode"].as_str().unwrap().to_owned(),
                x.status,
            )
        })
        .collect();
    assert_eq!(
        restores,
        [("OnDemand".to_owned(), 400), ("Copy".to_owned(), 204)]
    );
    // The refused attempt's VMM was shut down and its namespace released
    // before the second attempt started.
    let host = recorder.host_calls.lock().unwrap().clone();
    assert_eq!(
        host.iter()
            .filter(|c| *c == "netns destroy lel-life-dst")
            .count(),
        1,
        "{host:?}"
    );
    ch.shutdown(&mut restored).await.unwrap();
    for x in recorder.exchanges.lock().unwrap().iter() {
        check_against_spec(x);
    }
}

// ---------------------------------------------------------------------------
// The real host side, up to where a VMM would take over.

/// The real launcher (qemu-img overlay, network namespace, spawn in the
/// namespace) with a stand-in "binary" that prints its arguments and exits
/// 3: not a VMM, just a process that dies at startup, which the driver must
/// report with its log and clean up after. What happens first depends on
/// the host, and each outcome is asserted: not root → the namespace cannot
/// be made; no qemu-img → the overlay cannot; no /dev/kvm → refused before
/// spawning; otherwise the process's exit is reported.
#[tokio::test]
async fn a_vmm_that_dies_at_startup_is_reported_and_everything_released() {
    use std::os::unix::fs::PermissionsExt as _;

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("images")).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::write(root.join("images").join(f), b"artefact").unwrap();
    }
    std::fs::write(root.join("images/rootfs.ext4"), vec![0u8; 1 << 20]).unwrap();
    let stand_in = root.join("exits-at-once");
    std::fs::write(
        &stand_in,
        "#!/bin/sh\necho \"stand-in, not a VMM: exiting ($*)\" >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();

    let ch = CloudHypervisor::new(Some(&stand_in), root.join("vms")).unwrap();
    assert_eq!(ch.binary(), stand_in);
    let lifecycle = LifecycleId::generate();
    let mut spec = test_spec(root, lifecycle.as_str());
    spec.lifecycle_id = lifecycle.clone();
    let err = ch.create(&spec).await.unwrap_err();

    let is_root = nix::unistd::geteuid().is_root();
    let has_qemu_img = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("qemu-img").is_file()));
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    eprintln!("host: root={is_root} qemu-img={has_qemu_img} kvm-opens={kvm}; error: {err}");
    match (has_qemu_img, is_root, kvm) {
        (false, _, _) => assert!(matches!(err, Error::Prepare { .. }), "{err}"),
        (true, false, _) => assert!(matches!(err, Error::Network { .. }), "{err}"),
        (true, true, false) => assert!(matches!(err, Error::Unavailable(_)), "{err}"),
        (true, true, true) => {
            let Error::Exited { status, .. } = &err else {
                panic!("expected the exit to be reported: {err}")
            };
            assert!(status.contains("exit status: 3"), "{status}");
            assert!(
                status.contains("stand-in, not a VMM: exiting (--api-socket path="),
                "log tail in: {status}"
            );
        }
    }
    assert!(
        !root.join("vms").join(lifecycle.as_str()).exists(),
        "the VM directory is removed"
    );
    assert!(
        !VmNetwork::exists(&VmNetwork::netns_name(lifecycle.as_str())),
        "the network namespace is removed"
    );
}
