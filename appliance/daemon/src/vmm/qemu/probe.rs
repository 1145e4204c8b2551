//! Choosing the accelerator by booting, not by opening `/dev/kvm`.
//!
//! Some hosts expose a `/dev/kvm` that creates VMs but cannot run a real
//! guest kernel (a software nested KVM hangs in the kernel decompressor).
//! So the probe boots the guest kernel under KVM with no root filesystem
//! and waits for its banner on the serial port: seen ⇒ KVM works; error,
//! silence or timeout ⇒ TCG, with the reason kept for the logs and doctor.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncReadExt;

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// Name as QEMU spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The `-cpu` model that goes with it.
    pub fn cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

/// The probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// Chosen accelerator.
    pub accel: Accel,
    /// Why.
    pub reason: String,
}

/// The banner every Linux kernel prints first on its console.
const BANNER: &str = "Linux version";

/// Boots `kernel` under KVM and decides.
pub async fn probe(qemu: &Path, kernel: &Path, timeout: Duration) -> Probe {
    let tcg = |reason: String| Probe {
        accel: Accel::Tcg,
        reason,
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return tcg("/dev/kvm cannot be opened".to_owned());
    }
    let started = Instant::now();
    let child = tokio::process::Command::new(qemu)
        .args([
            "-M",
            "microvm,accel=kvm,x-option-roms=off",
            "-cpu",
            "host",
            "-m",
            "128",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 earlyprintk=ttyS0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return tcg(format!("could not start the KVM probe: {e}")),
    };
    let Some(mut stdout) = child.stdout.take() else {
        return tcg("KVM probe has no stdout".to_owned());
    };
    let mut seen = Vec::new();
    let verdict = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&seen).contains(BANNER) {
                        return true;
                    }
                }
            }
        }
    })
    .await;
    let _ = child.start_kill();
    let stderr = match child.wait_with_output().await {
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(_) => String::new(),
    };
    match verdict {
        Ok(true) => Probe {
            accel: Accel::Kvm,
            reason: format!(
                "KVM probe boot printed the kernel banner after {} ms",
                started.elapsed().as_millis()
            ),
        },
        Ok(false) if !stderr.is_empty() => {
            tcg(format!("KVM probe boot failed: {}", first_line(&stderr)))
        }
        Ok(false) => tcg("KVM probe boot exited without kernel output".to_owned()),
        Err(_) => tcg(format!(
            "KVM probe boot printed nothing in {} s (a software nested KVM cannot run this kernel)",
            timeout.as_secs()
        )),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
