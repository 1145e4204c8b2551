//! Builds the guest image for real (or finds it in the cache) and checks
//! that the manifest describes exactly the files on disk.
//!
//! Needs root, the host's apt sources and a static envd: set `LELANTOS_ENVD`
//! to reuse a built one, otherwise the test builds it with cargo. The cache
//! is the default one (`LELANTOS_CACHE` etc.), so after the first run this
//! is a quick cache hit. Booting the image is the VM layer's test.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use lelantos_image::{hash, manifest};

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// A static envd: `$LELANTOS_ENVD`, or one built here the documented way.
fn static_envd() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("LELANTOS_ENVD") {
        return Ok(PathBuf::from(path));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("image/ has a parent")?
        .to_owned();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "envd", "--target", TARGET])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&workspace)
        .status()
        .context("run cargo build for envd")?;
    ensure!(status.success(), "building static envd failed: {status}");
    Ok(target_dir.join(TARGET).join("release").join("envd"))
}

fn run_build(envd: &Path) -> anyhow::Result<(Output, PathBuf)> {
    let out = Command::new(env!("CARGO_BIN_EXE_lelantos-image"))
        .arg("build")
        .arg("--envd")
        .arg(envd)
        .output()
        .context("run lelantos-image")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("lelantos-image build failed ({}):\n{stderr}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .last()
        .context("no manifest path on stdout")?;
    Ok((out.clone(), PathBuf::from(last)))
}

/// The `init` member of the gzip newc initramfs.
fn initramfs_init(path: &Path) -> anyhow::Result<String> {
    let gz = std::fs::read(path)?;
    let mut archive = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut archive)?;
    let mut rest: &[u8] = &archive;
    loop {
        let mut entry = cpio::NewcReader::new(rest)?;
        if entry.entry().is_trailer() {
            bail!("initramfs has no /init");
        }
        if entry.entry().name() == "init" {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            return Ok(text);
        }
        rest = entry.finish()?;
    }
}

#[test]
#[ignore = "builds the guest image (root, apt): run by tests/run's VM stage"]
fn build_writes_a_manifest_that_matches_the_files() -> anyhow::Result<()> {
    let envd = static_envd()?;
    let (_, manifest_path) = run_build(&envd)?;

    let m = manifest::verify_file(&manifest_path).context("manifest matches files")?;
    let dir = manifest_path.parent().context("manifest has a directory")?;

    let (envd_sha256, _) = hash::sha256_file(&envd)?;
    assert_eq!(m.inputs.rootfs.envd_sha256, envd_sha256);
    assert!(m.inputs.kernel.kernel_package.ends_with("-cloud-amd64"));
    for module in ["virtio_mmio", "virtio_blk", "virtio_net"] {
        let loaded = m.inputs.kernel.modules.iter().any(|x| x == module);
        let builtin = m.inputs.kernel.builtin_modules.iter().any(|x| x == module);
        assert!(loaded || builtin, "{module} neither loaded nor built in");
    }
    assert!(m.kernel_cmdline.contains("root=/dev/vda"));
    assert!(m.rootfs.size >= 2 << 30, "rootfs is at least 2 GiB");

    let init = initramfs_init(&dir.join(&m.initramfs.file))?;
    assert!(init.contains("exec switch_root /newroot /usr/local/bin/envd"));
    for module in &m.inputs.kernel.modules {
        assert!(
            init.contains(&format!(" {module}\n")),
            "init loads {module}"
        );
    }

    // Same inputs again: a cache hit that prints the same manifest.
    let started = Instant::now();
    let (again, again_path) = run_build(&envd)?;
    let took = started.elapsed();
    assert_eq!(again_path, manifest_path);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("kernel: cached"), "{stderr}");
    assert!(stderr.contains("rootfs: cached"), "{stderr}");
    assert!(took < Duration::from_secs(60), "cached build took {took:?}");
    assert_eq!(manifest::Manifest::read(&again_path)?, m);
    Ok(())
}
