//! `lelantos serve`: wires config, store, guest image, templates, VM driver,
//! sandbox owner, REST API, proxy and metrics, then runs until SIGTERM.
//!
//! Shutdown leaves sandboxes running: their VMMs are not children of the
//! daemon's process group, and the next start re-adopts them from the store
//! (see `sandboxes::recover`). That is what makes a daemon upgrade or crash
//! invisible to sandbox users.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lelantos_core::config::{Accel as AccelChoice, DaemonConfig, VmDriver};
use tokio_util::sync::CancellationToken;

use crate::api::auth::KeyStore;
use crate::api::server::{ApiState, router};
use crate::api::template_build::{BuildRegistry, TemplateBuildState};
use crate::builder::Builder;
use crate::proxy::{Proxy, serve as serve_listener};
use crate::reconcile::{Reconciler, Source};
use crate::sandboxes::{self, Sandboxes, Settings};
use crate::store::Store;
use crate::templates::{Catalog, GuestImage};
use crate::vmm::qemu::probe::{self, Accel};
use crate::vmm::qemu::{Qemu, QemuConfig};

/// The envd version inside the guest image (envd's crate version; a test
/// keeps the two equal).
pub const ENVD_VERSION: &str = "0.6.13";
/// How long open connections get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a fresh VM may take until envd answers (TCG on a busy host is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Command-line overrides of the config file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Config file (default: built-in defaults).
    pub config: Option<PathBuf>,
    /// `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `listen.api`.
    pub listen: Option<SocketAddr>,
    /// `listen.metrics`; `Some(None)` turns metrics off.
    pub metrics_listen: Option<Option<SocketAddr>>,
    /// `templates_dir`.
    pub templates_dir: Option<PathBuf>,
    /// A built guest image to use as is.
    pub image_manifest: Option<PathBuf>,
    /// A static envd to build the guest image from (when no manifest is given).
    pub envd: Option<PathBuf>,
}

/// Reads the config file (if any) and applies the overrides.
pub fn load_config(o: &Overrides) -> anyhow::Result<DaemonConfig> {
    let mut config = match &o.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read config {}", path.display()))?;
            DaemonConfig::from_yaml(path, &text)?
        }
        None => DaemonConfig::default(),
    };
    if let Some(d) = &o.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(l) = o.listen {
        config.listen.api = l;
    }
    if let Some(m) = o.metrics_listen {
        config.listen.metrics = m;
    }
    if let Some(t) = &o.templates_dir {
        config.templates_dir = t.clone();
    }
    config.validate().context("invalid configuration")?;
    Ok(config)
}

/// Finds the guest image: the given manifest, or one built (or found in the
/// cache) from the given envd.
async fn guest_image(config: &DaemonConfig, o: &Overrides) -> anyhow::Result<GuestImage> {
    if let Some(m) = &o.image_manifest {
        tracing::info!(manifest = %m.display(), "using guest image");
        return Ok(GuestImage::from_manifest(m)?);
    }
    let Some(envd) = o.envd.clone() else {
        bail!(
            "no guest image: pass --image-manifest <manifest.json> (from `lelantos-image build`) \
             or --envd <static envd binary> to build one"
        );
    };
    let cache_dir = config
        .images
        .cache_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("images"));
    tracing::info!(cache = %cache_dir.display(), envd = %envd.display(), "building guest image (cached pieces are reused)");
    let outcome = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let progress = |msg: &str| {
            tracing::info!("image [{:5.1}s] {msg}", started.elapsed().as_secs_f64());
        };
        lelantos_image::build(&lelantos_image::BuildOptions { envd, cache_dir }, &progress)
    })
    .await
    .context("image build task")?
    .context("build guest image")?;
    Ok(GuestImage::from_manifest(&outcome.manifest_path)?)
}

/// The static envd that goes into OCI-based root disks: the one given, or
/// the one inside the builtin image.
fn envd_binary(
    config: &DaemonConfig,
    o: &Overrides,
    image: &GuestImage,
) -> anyhow::Result<PathBuf> {
    if let Some(p) = &o.envd {
        return Ok(p.clone());
    }
    let out = config.data_dir.join("envd");
    std::fs::create_dir_all(&config.data_dir).context("create the data dir")?;
    crate::oci::extract_from_ext4(
        &image.rootfs,
        &format!("/{}", lelantos_image::rootfs::ENVD_PATH),
        &out,
    )
    .context("copy envd out of the builtin image")?;
    Ok(out)
}

async fn qemu_driver(config: &DaemonConfig, image: &GuestImage) -> anyhow::Result<Qemu> {
    match config.vm.driver {
        VmDriver::Auto | VmDriver::Qemu => {}
        VmDriver::CloudHypervisor => bail!(
            "vm.driver: cloud-hypervisor is not wired to the control plane yet (its driver exists \
             but has never booted a VM on a verified host); use qemu or auto"
        ),
    }
    let binary = match &config.vm.qemu_binary {
        Some(b) => b.clone(),
        None => Qemu::find_binary()
            .context("qemu-system-x86_64 not found on PATH (Debian: qemu-system-x86)")?,
    };
    let accel = match config.vm.accel {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Auto => {
            let p = probe::probe(&binary, &image.kernel, Duration::from_secs(8)).await;
            tracing::info!(accel = p.accel.as_str(), reason = %p.reason, "accelerator chosen");
            p.accel
        }
    };
    if config.vm.driver == VmDriver::Auto {
        tracing::info!(
            "vm.driver auto: QEMU microvm (the Cloud Hypervisor driver is not yet used by the control plane)"
        );
    }
    Ok(Qemu::new(QemuConfig {
        binary,
        vm_root: sandboxes::vm_root(&config.data_dir),
        accel,
    })?)
}

/// Keeps the per-state sandbox gauge current.
fn spawn_state_gauges(sandboxes: Sandboxes, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut seen = std::collections::BTreeSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            if let Ok(counts) = sandboxes.count_by_state() {
                for state in seen.iter().filter(|s| !counts.contains_key(*s)) {
                    metrics::gauge!("lelantos_sandboxes", "state" => String::clone(state)).set(0.0);
                }
                for (state, n) in &counts {
                    #[allow(clippy::cast_precision_loss)] // counts stay far below 2^52
                    metrics::gauge!("lelantos_sandboxes", "state" => state.clone()).set(*n as f64);
                }
                seen = counts.into_keys().collect();
            }
        }
    });
}

/// Tells systemd we are alive at half the watchdog interval, when it asks.
fn spawn_watchdog(stop: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => { let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]); }
                () = stop.cancelled() => return,
            }
        }
    });
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn key_hint(keys: &Store, data_dir: &Path) {
    match crate::keys::list(keys) {
        Ok(k) if k.iter().any(|k| !k.is_revoked()) => {}
        Ok(_) => tracing::warn!(
            "no API key yet: create one with `lelantos keys --data-dir {} create` and use it as E2B_API_KEY \
             (the e2b_ form of the same key works too)",
            data_dir.display()
        ),
        Err(e) => tracing::warn!(error = %e, "could not list API keys"),
    }
}

/// Runs the appliance until SIGTERM/SIGINT.
pub async fn run(o: Overrides) -> anyhow::Result<()> {
    let config = load_config(&o)?;
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "effective configuration");
    let listener = tokio::net::TcpListener::bind(config.listen.api)
        .await
        .with_context(|| format!("listen on {}", config.listen.api))?;
    let metrics_listener = match config.listen.metrics {
        Some(addr) => Some((
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen for Prometheus on {addr}"))?,
            crate::exporter::install().context("install the metrics recorder")?,
        )),
        None => None,
    };
    let store = Store::open(&config.data_dir).context("open the state database")?;
    let keys = Store::open(&config.data_dir).context("open the state database (keys)")?;
    key_hint(&keys, &config.data_dir);

    let image = Arc::new(guest_image(&config, &o).await?);
    let envd = envd_binary(&config, &o, &image)?;
    // Templates that need no build serve at once; the reconciler builds the
    // rest (and owns the catalog from its first pass on).
    let catalog = match (
        &config.templates_git,
        Catalog::load(&config.templates_dir, image.clone()),
    ) {
        (None, Ok(c)) => c,
        (None, Err(e)) => {
            tracing::warn!(error = %e, "no template ready at start; the reconciler will report why");
            Catalog::default()
        }
        (Some(_), _) => Catalog::default(),
    };
    tracing::info!(
        templates = %catalog.iter().map(|t| t.spec.name.as_str()).collect::<Vec<_>>().join(", "),
        "templates ready at start"
    );
    let qemu = qemu_driver(&config, &image).await?;
    let builder = Arc::new(Builder::new(
        qemu.clone(),
        config.data_dir.join("builds"),
        usize::try_from(config.builds.max_parallel).unwrap_or(1),
    ));
    let sandboxes = Sandboxes::new(
        qemu,
        store,
        catalog,
        Settings {
            limits: config.limits.clone(),
            envd_version: ENVD_VERSION.to_owned(),
            boot_timeout: BOOT_TIMEOUT,
        },
    );
    let restored = sandboxes
        .restore_published()
        .context("restore API-built templates")?;
    if restored > 0 {
        tracing::info!(restored, "API-built templates served again");
    }
    let summary = sandboxes.recover().await.context("recover sandboxes")?;
    tracing::info!("{summary}");

    let stop = CancellationToken::new();
    if let Some((listener, recorded)) = metrics_listener {
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, "Prometheus metrics on /metrics");
        let (sandboxes, stop) = (sandboxes.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::exporter::serve(listener, recorded, sandboxes, stop).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    spawn_state_gauges(sandboxes.clone(), stop.clone());
    spawn_watchdog(stop.clone());
    let source = match &config.templates_git {
        Some(git) => Source::git(git.clone(), &config.data_dir),
        None => Source::Dir(config.templates_dir.clone()),
    };
    tracing::info!(?source, "template source");
    let reconciler = Reconciler::new(
        sandboxes.clone(),
        builder.clone(),
        source,
        image.clone(),
        envd.clone(),
        config.data_dir.clone(),
        Store::open(&config.data_dir).context("open the state database (reconciler)")?,
    );
    tokio::spawn(reconciler.clone().run(
        Duration::from_secs(config.builds.resync_interval_s.max(1)),
        stop.clone(),
    ));
    let keys: KeyStore = Arc::new(Mutex::new(keys));
    let api = router(
        ApiState {
            sandboxes: sandboxes.clone(),
            domain: config.domain.as_str().to_owned(),
            default_timeout_s: config.limits.default_timeout_s,
        },
        keys.clone(),
    )
    .merge(crate::api::status::routes(reconciler, keys.clone()))
    .merge(crate::api::template_build::routes(TemplateBuildState {
        sandboxes: sandboxes.clone(),
        builder: builder.clone(),
        envd_path: envd.clone(),
        cache_dir: config.data_dir.clone(),
        data_dir: config.data_dir.clone(),
        public_url: format!("http://{}", config.listen.api),
        keys: keys.clone(),
        builds: BuildRegistry::new(),
    }));
    let proxy = Proxy::new(
        Arc::new(sandboxes.clone()),
        config.domain.as_str().to_owned(),
    );
    let server = tokio::spawn(serve_listener(
        listener,
        api,
        proxy,
        stop.clone(),
        SHUTDOWN_GRACE,
    ));
    let url = format!("http://{}", config.listen.api);
    tracing::info!("lelantos ready: E2B_API_URL={url} E2B_SANDBOX_URL={url}");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let signal = shutdown_signal().await?;
    tracing::info!("{signal}: shutting down; sandboxes keep running for the next start");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    sandboxes.begin_shutdown();
    stop.cancel();
    server.await.context("server task")?.context("server")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn envd_version_matches_the_envd_crate() {
        let manifest = include_str!("../../../envd/Cargo.toml");
        let version = manifest
            .lines()
            .find_map(|l| l.strip_prefix("version = \""))
            .and_then(|v| v.strip_suffix('"'))
            .unwrap();
        assert_eq!(version, super::ENVD_VERSION);
    }
}
