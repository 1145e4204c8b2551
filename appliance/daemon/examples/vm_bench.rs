//! VM layer benchmark: cold boot to envd ready vs restore-from-snapshot to
//! envd ready, and the VMM's host memory beyond guest RAM for an idle VM.
//!
//! `cargo run --release -p lelantos --example vm_bench -- <manifest.json> [runs]`
//! (the README's bench command builds images and passes the manifest).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench: a panic is a failed run

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lelantos::net::VmNetwork;
use lelantos::vmm::VmBackend as _;
use lelantos::vmm::qemu::{Qemu, QemuConfig, probe};
use lelantos_core::{LifecycleId, MemoryMib, NetworkSpec, SandboxId, Vcpus, VmSpec};

async fn envd_ready(net: &VmNetwork, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = net.connect(49983, Duration::from_millis(500)).await {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            if s.write_all(b"GET /health HTTP/1.1\r\nhost: envd\r\nconnection: close\r\n\r\n")
                .await
                .is_ok()
            {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await
                    && buf[..n].starts_with(b"HTTP/1.1 204")
                {
                    return start.elapsed();
                }
            }
        }
        assert!(start.elapsed() < within, "envd not ready within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Resident memory of the VMM outside the guest-RAM mapping, from smaps.
fn overhead_beyond_guest_ram(pid: u32, guest_mib: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut ram) = (0u64, 0u64);
    let mut size_kb = 0u64;
    for line in smaps.lines() {
        let field = |p: &str| {
            line.strip_prefix(p)
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        if let Some(s) = field("Size:") {
            size_kb = s;
        } else if let Some(r) = field("Rss:") {
            total += r;
            if size_kb == guest_mib * 1024 {
                ram += r;
            }
        }
    }
    (total * 1024, (total - ram) * 1024)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let manifest = PathBuf::from(args.get(1).expect("usage: vm_bench <manifest.json> [runs]"));
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
    let m = lelantos_image::manifest::Manifest::read(&manifest).unwrap();
    let dir = manifest.parent().unwrap();
    let qemu = Qemu::find_binary().expect("qemu-system-x86_64");
    let p = probe::probe(&qemu, &dir.join(&m.kernel.file), Duration::from_secs(8)).await;
    let root = tempfile::tempdir().unwrap();
    let driver = Qemu::new(QemuConfig {
        binary: qemu,
        vm_root: root.path().join("vms"),
        accel: p.accel,
    })
    .unwrap();
    let memory = 256u32;
    let spec = || VmSpec {
        sandbox_id: SandboxId::generate(),
        lifecycle_id: LifecycleId::generate(),
        vcpus: Vcpus::try_from(1u32).unwrap(),
        memory: MemoryMib::try_from(memory).unwrap(),
        kernel: dir.join(&m.kernel.file),
        initramfs: Some(dir.join(&m.initramfs.file)),
        rootfs: dir.join(&m.rootfs.file),
        extra_cmdline: m
            .kernel_cmdline
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        network: NetworkSpec::default(),
    };

    let (mut cold, mut restore, mut rss, mut overhead) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let t = Instant::now();
        let mut vm = driver.create(&spec()).await.unwrap();
        driver.boot(&mut vm).await.unwrap();
        envd_ready(&vm.net, Duration::from_secs(180)).await;
        cold.push(t.elapsed().as_secs_f64() * 1000.0);
        // Idle a moment so boot-time allocations settle, then measure.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (total, beyond) = overhead_beyond_guest_ram(vm.pid, u64::from(memory));
        #[allow(clippy::cast_precision_loss)]
        {
            rss.push(total as f64 / 1048576.0);
            overhead.push(beyond as f64 / 1048576.0);
        }
        driver.pause(&mut vm).await.unwrap();
        let snap = root.path().join(format!("snap-{i}"));
        driver.snapshot(&mut vm, &snap).await.unwrap();
        driver.shutdown(&mut vm).await.unwrap();
        let t = Instant::now();
        let mut restored = driver.restore(&spec(), &snap).await.unwrap();
        envd_ready(&restored.net, Duration::from_secs(60)).await;
        restore.push(t.elapsed().as_secs_f64() * 1000.0);
        driver.shutdown(&mut restored).await.unwrap();
        eprintln!(
            "run {}/{runs}: cold {:.0} ms, restore {:.0} ms",
            i + 1,
            cold[i],
            restore[i]
        );
    }
    let (c50, r50) = (pct(&mut cold.clone(), 0.5), pct(&mut restore.clone(), 0.5));
    println!(
        "VM layer benchmark (QEMU microvm, accel={}, 1 vCPU, {memory} MiB, {runs} runs)",
        p.accel.as_str()
    );
    println!("| metric | p50 | p99 / max |");
    println!("|---|---|---|");
    println!(
        "| cold boot → envd ready (ms) | {c50:.0} | {:.0} |",
        pct(&mut cold, 0.99)
    );
    println!(
        "| restore from snapshot → envd ready (ms) | {r50:.0} | {:.0} |",
        pct(&mut restore, 0.99)
    );
    println!("| cold / restore ratio | {:.1}x | |", c50 / r50);
    println!(
        "| VMM RSS, idle VM (MiB) | {:.1} | {:.1} |",
        pct(&mut rss.clone(), 0.5),
        pct(&mut rss, 0.99)
    );
    println!(
        "| VMM RSS beyond guest RAM (MiB) | {:.1} | {:.1} |",
        pct(&mut overhead.clone(), 0.5),
        pct(&mut overhead, 0.99)
    );
    println!("accelerator choice: {}", p.reason);
}
