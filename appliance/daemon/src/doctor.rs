//! `lelantos doctor`: which VM drivers work on this host, and why.
//!
//! Every verdict comes from a real check — a binary found on PATH, a device
//! opened, a probe boot under KVM — never from an assumption.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::vmm::cloud_hypervisor::availability::KvmStatus;
use crate::vmm::qemu::{self, probe};

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it is usable.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Driver verdicts.
    pub drivers: Vec<Check>,
    /// Host facilities.
    pub host: Vec<Check>,
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        ok,
        detail: detail.into(),
    }
}

async fn version(bin: &Path) -> String {
    match tokio::process::Command::new(bin)
        .arg("--version")
        .output()
        .await
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        Err(e) => format!("cannot run: {e}"),
    }
}

/// Runs every check. `kernel` is the guest kernel used for the KVM probe.
pub async fn run(kernel: Option<&Path>) -> Report {
    let mut drivers = Vec::new();
    match qemu::Qemu::find_binary() {
        None => drivers.push(check("qemu", false, "qemu-system-x86_64 not installed")),
        Some(bin) => {
            let v = version(&bin).await;
            match kernel {
                Some(k) if k.exists() => {
                    let p = probe::probe(&bin, k, Duration::from_secs(8)).await;
                    drivers.push(check(
                        "qemu",
                        true,
                        format!("usable with {} ({}); {v}", p.accel.as_str().to_uppercase(), p.reason),
                    ));
                }
                _ => drivers.push(check(
                    "qemu",
                    true,
                    format!("usable; accelerator not probed (no guest kernel given: build the image first); {v}"),
                )),
            }
        }
    }
    drivers.push(cloud_hypervisor_check().await);

    let mut host = Vec::new();
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    host.push(check(
        "/dev/kvm",
        kvm.is_ok(),
        match &kvm {
            Ok(_) => "opens (whether it can run a guest is what the probe boot decides)".to_owned(),
            Err(e) => e.to_string(),
        },
    ));
    let tun = Path::new("/dev/net/tun").exists();
    host.push(check(
        "/dev/net/tun",
        tun,
        if tun {
            "present"
        } else {
            "missing: no tap devices"
        },
    ));
    for tool in ["ip", "qemu-img", "nft"] {
        let found: Option<PathBuf> = qemu::which(tool);
        host.push(check(
            tool,
            found.is_some(),
            found.map_or_else(|| "not installed".to_owned(), |p| p.display().to_string()),
        ));
    }
    Report { drivers, host }
}

/// Cloud Hypervisor needs its binary and a KVM that runs guests; even then
/// the driver has only been checked against the published API schema here.
async fn cloud_hypervisor_check() -> Check {
    let a = crate::vmm::cloud_hypervisor::availability(None);
    let kvm = match &a.kvm {
        KvmStatus::Opens => "/dev/kvm opens".to_owned(),
        KvmStatus::NoAccess(why) => format!("/dev/kvm unusable: {why}"),
        KvmStatus::Missing => "no /dev/kvm".to_owned(),
    };
    let binary = match &a.binary {
        Some(bin) => format!("{} ({})", a.binary_detail, version(bin).await),
        None => format!("not installed ({})", a.binary_detail),
    };
    check(
        "cloud-hypervisor",
        a.can_run(),
        format!(
            "{binary}; {kvm}; restore mode {:?} ({}); {} — its requests are checked against Cloud Hypervisor's API schema only",
            a.restore_mode(),
            a.userfaultfd.detail,
            a.note
        ),
    )
}

/// Human-readable form.
pub fn render(report: &Report) -> String {
    let section = |title: &str, checks: &[Check]| {
        let mut out = format!("{title}:\n");
        for c in checks {
            out.push_str(&format!(
                "  {:<18} {}  {}\n",
                c.name,
                if c.ok { "yes" } else { "no " },
                c.detail
            ));
        }
        out
    };
    section("VM drivers", &report.drivers) + &section("Host", &report.host)
}
