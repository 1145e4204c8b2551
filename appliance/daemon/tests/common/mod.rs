//! Real-VM test harness: images from the manifest `tests/run` built, a QEMU
//! driver on a scratch directory, and a tiny envd client that talks to the
//! guest through a socket created inside the VM's network namespace.
//!
//! VM tests are `#[ignore]`d so that plain `cargo test` stays fast; the
//! README's test command runs them with `--ignored` after building images.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use lelantos::net::VmNetwork;
use lelantos::vmm::VmBackend as _;
use lelantos::vmm::qemu::probe::{self, Accel};
use lelantos::vmm::qemu::{Qemu, QemuConfig, QemuVm};
use lelantos_core::{LifecycleId, MemoryMib, NetworkSpec, SandboxId, Vcpus, VmSpec};
use serde_json::{Value, json};

/// Guest pieces from the image manifest.
#[derive(Debug, Clone)]
pub struct Images {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    pub cmdline: String,
}

/// Reads `LELANTOS_IMAGE_MANIFEST` (set by `tests/run` after building images).
pub fn images() -> Images {
    let path = PathBuf::from(std::env::var("LELANTOS_IMAGE_MANIFEST").expect(
        "LELANTOS_IMAGE_MANIFEST must point at a built image manifest (run: bash tests/run)",
    ));
    let m = lelantos_image::manifest::Manifest::read(&path).expect("readable manifest");
    let dir = path.parent().unwrap().to_path_buf();
    Images {
        kernel: dir.join(&m.kernel.file),
        initramfs: dir.join(&m.initramfs.file),
        rootfs: dir.join(&m.rootfs.file),
        cmdline: m.kernel_cmdline.clone(),
    }
}

/// The accelerator: `LELANTOS_QEMU_ACCEL=kvm|tcg`, else a probe boot.
pub async fn accel(images: &Images) -> Accel {
    match std::env::var("LELANTOS_QEMU_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        _ => {
            let p = probe::probe(
                &Qemu::find_binary().unwrap(),
                &images.kernel,
                Duration::from_secs(8),
            )
            .await;
            eprintln!("accelerator: {:?} ({})", p.accel, p.reason);
            p.accel
        }
    }
}

/// A driver rooted in a fresh scratch directory.
pub struct Lab {
    pub driver: Qemu,
    pub images: Images,
    pub root: tempfile::TempDir,
}

impl Lab {
    pub async fn new() -> Self {
        let images = images();
        let root = tempfile::tempdir().unwrap();
        let driver = Qemu::new(QemuConfig {
            binary: Qemu::find_binary().expect("qemu-system-x86_64 installed"),
            vm_root: root.path().join("vms"),
            accel: accel(&images).await,
        })
        .unwrap();
        Self {
            driver,
            images,
            root,
        }
    }

    pub fn spec(&self) -> VmSpec {
        VmSpec {
            sandbox_id: SandboxId::generate(),
            lifecycle_id: LifecycleId::generate(),
            vcpus: Vcpus::try_from(1u32).unwrap(),
            memory: MemoryMib::try_from(256u32).unwrap(),
            kernel: self.images.kernel.clone(),
            initramfs: Some(self.images.initramfs.clone()),
            rootfs: self.images.rootfs.clone(),
            extra_cmdline: self
                .images
                .cmdline
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            network: NetworkSpec::default(),
        }
    }

    /// Creates and boots a VM and waits for envd; cleans up on failure.
    pub async fn boot(&self) -> Guarded {
        self.boot_spec(self.spec()).await
    }

    /// Boots the manifest's kernel and initramfs with another root disk
    /// (e.g. a template build's output).
    pub async fn boot_rootfs(&self, rootfs: &std::path::Path) -> Guarded {
        let mut spec = self.spec();
        spec.rootfs = rootfs.to_path_buf();
        self.boot_spec(spec).await
    }

    async fn boot_spec(&self, spec: VmSpec) -> Guarded {
        let mut vm = self.driver.create(&spec).await.expect("create VM");
        self.driver.boot(&mut vm).await.expect("boot VM");
        let g = Guarded::new(vm);
        g.wait_envd(Duration::from_secs(120)).await;
        g
    }
}

/// A VM that is torn down (process group killed, namespace deleted) even
/// when the test panics, and whose serial log is printed on failure.
pub struct Guarded {
    pub vm: Option<QemuVm>,
    pub booted_at: Instant,
}

impl Guarded {
    pub fn new(vm: QemuVm) -> Self {
        Self {
            vm: Some(vm),
            booted_at: Instant::now(),
        }
    }

    pub fn vm(&mut self) -> &mut QemuVm {
        self.vm.as_mut().unwrap()
    }

    pub fn net(&self) -> &VmNetwork {
        &self.vm.as_ref().unwrap().net
    }

    /// Polls envd's /health until 204 or the deadline.
    pub async fn wait_envd(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((204, _)) = self
                .http("GET", "/health", None, &[], Duration::from_secs(2))
                .await
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "envd did not become healthy within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One HTTP/1.1 request to envd in the guest. Returns (status, body).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), String> {
        let fut = async {
            let stream = self
                .net()
                .connect(49983, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "envd");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req
                .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
                .map_err(|e| e.to_string())?;
            let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = res.status().as_u16();
            let bytes = res
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, bytes.to_vec()))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    /// Runs `cmd` with bash in the guest; returns (exit code, stdout).
    pub async fn run(&self, cmd: &str) -> (i64, String) {
        let frames = self
            .start_stream(
                json!({"process": {"cmd": "/bin/bash", "args": ["-c", cmd]}, "stdin": false}),
            )
            .await;
        let mut out = String::new();
        let mut code = None;
        for f in &frames {
            if let Some(s) = f["event"]["data"]["stdout"].as_str() {
                out.push_str(&String::from_utf8_lossy(
                    &base64::engine::general_purpose::STANDARD.decode(s).unwrap(),
                ));
            }
            if let Some(end) = f["event"].get("end") {
                code = Some(end["exitCode"].as_i64().unwrap_or(0));
            }
        }
        (
            code.unwrap_or_else(|| panic!("no end event: {frames:?}")),
            out,
        )
    }

    async fn start_stream(&self, req: Value) -> Vec<Value> {
        let payload = req.to_string();
        let mut body = vec![0u8];
        body.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        body.extend_from_slice(payload.as_bytes());
        let (status, bytes) = self
            .http(
                "POST",
                "/process.Process/Start",
                Some(body),
                &[("content-type", "application/connect+json")],
                Duration::from_secs(60),
            )
            .await
            .expect("Start call");
        assert_eq!(status, 200);
        let mut frames = Vec::new();
        let mut rest = &bytes[..];
        while rest.len() >= 5 {
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            frames.push(serde_json::from_slice(&rest[5..5 + len]).unwrap());
            rest = &rest[5 + len..];
        }
        frames
    }

    /// Starts `cmd` in the background (detached via envd) and returns its pid.
    pub async fn spawn_background(&self, cmd: &str) -> u64 {
        let (code, out) = self
            .run(&format!("nohup bash -c '{cmd}' >/dev/null 2>&1 & echo $!"))
            .await;
        assert_eq!(code, 0);
        out.trim().parse().unwrap()
    }

    /// The envd process list (pids).
    pub async fn list(&self) -> Vec<u64> {
        let (status, body) = self
            .http(
                "POST",
                "/process.Process/List",
                Some(b"{}".to_vec()),
                &[("content-type", "application/json")],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["processes"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["pid"].as_u64()).collect())
            .unwrap_or_default()
    }

    /// Tears the VM down through the driver (the clean path).
    pub async fn shutdown(mut self, driver: &Qemu) {
        let mut vm = self.vm.take().unwrap();
        driver.shutdown(&mut vm).await.expect("shutdown");
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let Some(vm) = self.vm.take() else { return };
        if std::thread::panicking() {
            let log = std::fs::read_to_string(vm.serial_log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- serial log of VM {} (last 40 lines) ---", vm.id);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        lelantos::vmm::host::kill_group(vm.pid);
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &vm.net.netns])
            .status();
        let _ = std::fs::remove_dir_all(&vm.dir.path);
    }
}

impl Guarded {
    /// Starts `cmd` through envd's Start RPC and disconnects after the
    /// `start` event: the process keeps running in envd's table.
    pub async fn start_detached(&self, cmd: &str) -> u64 {
        let payload = json!({"process": {"cmd": "/bin/bash", "args": ["-c", cmd]}, "stdin": false})
            .to_string();
        let mut body = vec![0u8];
        body.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        body.extend_from_slice(payload.as_bytes());
        let stream = self
            .net()
            .connect(49983, Duration::from_secs(2))
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method("POST")
            .uri("/process.Process/Start")
            .header("host", "envd")
            .header("content-type", "application/connect+json")
            .body(Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        let mut body = res.into_body();
        let mut buf = Vec::new();
        while buf.len() < 5
            || buf.len() < 5 + u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize
        {
            let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
        }
        let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
        let first: Value = serde_json::from_slice(&buf[5..5 + len]).unwrap();
        conn.abort();
        first["event"]["start"]["pid"]
            .as_u64()
            .expect("start event first")
    }
}
