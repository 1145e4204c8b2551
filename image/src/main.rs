//! `lelantos-image`: build the guest image into the cache, or verify one.
//!
//! Progress goes to stderr; the only thing on stdout is the manifest path
//! (last line), so scripts can capture it with `$(lelantos-image build ...)`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser as _;
use lelantos_image::{BuildOptions, cache, manifest};

#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "Builds the Lelantos guest image (kernel, initramfs, base rootfs)"
)]
enum Cli {
    /// Build (or reuse from the cache) the guest pieces and print the manifest path.
    Build {
        /// The static envd binary to install as the guest's init.
        #[arg(long)]
        envd: PathBuf,
        /// Cache directory [default: $LELANTOS_CACHE, else $XDG_CACHE_HOME/lelantos,
        /// else $HOME/.cache/lelantos].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Re-hash the files a manifest names and check them against it.
    Verify {
        /// Manifest path (as printed by `build`).
        manifest: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Build { envd, cache_dir } => {
            let cache_dir = match cache_dir {
                Some(d) => d,
                None => cache::default_dir(|k| std::env::var_os(k))?,
            };
            let started = Instant::now();
            let progress = |msg: &str| {
                eprintln!("[{:6.1}s] {msg}", started.elapsed().as_secs_f64());
            };
            progress(&format!("cache: {}", cache_dir.display()));
            let outcome = lelantos_image::build(&BuildOptions { envd, cache_dir }, &progress)
                .context("build guest image")?;
            progress(&format!(
                "done: kernel {}, rootfs {}",
                if outcome.kernel_built {
                    "built"
                } else {
                    "cached"
                },
                if outcome.rootfs_built {
                    "built"
                } else {
                    "cached"
                },
            ));
            println!("{}", outcome.manifest_path.display());
        }
        Cli::Verify { manifest } => {
            let m = manifest::verify_file(&manifest)
                .with_context(|| format!("verify {}", manifest.display()))?;
            for (role, file) in m.files() {
                eprintln!("ok {role}: {} {}", file.sha256, file.file);
            }
        }
    }
    Ok(())
}
