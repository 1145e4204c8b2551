//! The owner of sandbox state (STYLE.md §2).
//!
//! [`Sandboxes`] is the only writer of the `sandboxes` table and the only
//! holder of VM handles. Each sandbox is one actor task ([`actor`]) that owns
//! its VM and walks the core [`SandboxState`] machine; everything else — the
//! REST handlers, the proxy, the expiry timer — sends it commands. A
//! transition is written to the store *before* its side effect, so after a
//! crash the row says what was in progress and [`recover`] can finish or
//! fail it; nothing disappears silently.

pub mod actor;
pub mod envd;
mod recover;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lelantos_core::config::LimitsConfig;
use lelantos_core::{LifecycleId, MemoryMib, SandboxId, SandboxState, Vcpus};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::proxy::{Directory, Upstream};
use crate::store::{
    self, Store, events::EventRow, sandboxes::SandboxFilter, sandboxes::SandboxPage,
    sandboxes::SandboxRow,
};
use crate::templates::Catalog;
use crate::vmm::qemu::Qemu;

pub use actor::Sample;

/// Why a sandbox operation was refused or failed. The REST layer maps each
/// variant to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such sandbox (or it is gone).
    #[error("sandbox \"{0}\" doesn't exist or you don't have access to it")]
    NotFound(String),
    /// No such template.
    #[error("template '{0}' not found")]
    TemplateNotFound(String),
    /// The request is invalid (resources, timeout, …).
    #[error("{0}")]
    Invalid(String),
    /// Not possible in the sandbox's current state.
    #[error("{0}")]
    Conflict(String),
    /// The appliance is at its sandbox limit.
    #[error("the appliance is at its limit of {0} sandboxes; kill some before creating more")]
    AtCapacity(u32),
    /// The daemon is shutting down.
    #[error("the appliance is shutting down")]
    ShuttingDown,
    /// The state database failed.
    #[error("state database: {0}")]
    Store(#[from] store::Error),
    /// The VM layer failed.
    #[error("VM: {0}")]
    Vm(#[from] crate::vmm::Error),
    /// The sandbox did not become ready.
    #[error("sandbox {id} failed to start: {reason}")]
    Boot {
        /// The sandbox.
        id: String,
        /// Why.
        reason: String,
    },
    /// The actor ended without answering (it failed meanwhile).
    #[error("sandbox {0} stopped while the request was handled")]
    ActorGone(String),
}

/// A create request, validated at the API edge for shape only.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Template id or alias.
    pub template: String,
    /// Seconds until expiry.
    pub timeout_s: u64,
    /// Issue an envd access token.
    pub secure: bool,
    /// Guest may reach the internet.
    pub allow_internet_access: bool,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Sandbox-wide env vars.
    pub env_vars: BTreeMap<String, String>,
    /// Pause instead of kill at expiry.
    pub auto_pause: bool,
    /// Per-create vCPU override.
    pub vcpus: Option<u32>,
    /// Per-create memory override (MiB).
    pub memory_mib: Option<u32>,
}

/// Result of `connect`.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The sandbox after the call.
    pub row: SandboxRow,
    /// Whether it was paused and has been resumed.
    pub resumed: bool,
}

/// Settings the owner needs from the daemon config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Limits on count, timeouts and resources.
    pub limits: LimitsConfig,
    /// The envd version the guest image carries (reported to the SDK).
    pub envd_version: String,
    /// How long a fresh VM may take to answer `/health`.
    pub boot_timeout: Duration,
}

/// Commands an actor understands; each carries its reply channel.
#[derive(Debug)]
pub(crate) enum Command {
    Kill(oneshot::Sender<Result<(), Error>>),
    Pause(oneshot::Sender<Result<(), Error>>),
    Connect {
        timeout_s: u64,
        /// `false`: a paused sandbox is an error (the deprecated `/resume` on a running one is 409).
        running_ok: bool,
        reply: oneshot::Sender<Result<Connected, Error>>,
    },
    SetTimeout {
        timeout_s: u64,
        /// `true`: only ever extend (refreshes).
        extend_only: bool,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Metrics(oneshot::Sender<Vec<Sample>>),
}

/// What the proxy may know of a running sandbox.
#[derive(Clone)]
pub(crate) struct Live {
    upstream: Upstream,
    token: Option<String>,
}

pub(crate) struct Inner {
    qemu: Qemu,
    store: Mutex<Store>,
    catalog: RwLock<Arc<Catalog>>,
    settings: Settings,
    actors: Mutex<HashMap<String, mpsc::Sender<Command>>>,
    live: RwLock<HashMap<String, Live>>,
    usage: Mutex<BTreeMap<String, usage::Usage>>,
    shutdown: CancellationToken,
}

/// The sandbox owner. Cheap to clone.
#[derive(Clone)]
pub struct Sandboxes {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sandboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandboxes").finish_non_exhaustive()
    }
}

impl Sandboxes {
    /// Takes over the store and the driver. Call [`Sandboxes::recover`]
    /// before serving requests.
    pub fn new(qemu: Qemu, store: Store, catalog: Catalog, settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                qemu,
                store: Mutex::new(store),
                catalog: RwLock::new(Arc::new(catalog)),
                settings,
                actors: Mutex::new(HashMap::new()),
                live: RwLock::new(HashMap::new()),
                usage: Mutex::new(BTreeMap::new()),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Re-adopts sandboxes whose VMs survived a daemon restart and settles
    /// the rest (see [`recover`]). Returns a one-line summary for the log.
    pub async fn recover(&self) -> Result<String, Error> {
        recover::run(self).await
    }

    /// The template catalog as it is now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner
            .catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the catalog (the reconciler, after a build or a removal).
    /// Running sandboxes keep the image they booted.
    pub fn set_catalog(&self, catalog: Catalog) {
        *self
            .inner
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(catalog);
    }

    /// Adds `template` to the catalog, replacing the one of the same name
    /// (a new build). Sandboxes already running keep their image.
    pub fn publish_template(
        &self,
        template: crate::templates::Template,
    ) -> Result<(), crate::templates::Error> {
        let record = (template.file == std::path::Path::new(crate::templates::API_TEMPLATE_FILE))
            .then(|| crate::templates::PublishedRecord::of(&template));
        let name = template.spec.name.clone();
        self.put_template(template)?;
        // Only API-built templates are persisted: the reconciler derives the
        // others from their source again at every pass.
        if let Some(record) = record {
            let saved = serde_json::to_string(&record)
                .map_err(|e| e.to_string())
                .and_then(|json| {
                    self.with_store(|s| {
                        store::published_templates::upsert(s.conn(), &name, &json, store::now_ms())
                    })
                    .map_err(|e| e.to_string())
                });
            if let Err(e) = saved {
                tracing::warn!(template = %name, error = %e, "could not persist an API-built template; it will not survive a restart");
            }
        }
        Ok(())
    }

    fn put_template(
        &self,
        template: crate::templates::Template,
    ) -> Result<(), crate::templates::Error> {
        let mut guard = self
            .inner
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list: Vec<_> = guard
            .iter()
            .filter(|t| t.spec.name != template.spec.name)
            .cloned()
            .collect();
        list.push(template);
        *guard = Arc::new(Catalog::new(list)?);
        Ok(())
    }

    /// Serves the API-built templates of an earlier run again, if their
    /// built disks still exist. Returns how many.
    pub fn restore_published(&self) -> Result<usize, Error> {
        let rows = self.with_store(|s| store::published_templates::list(s.conn()))?;
        let mut restored = 0;
        for (name, json) in rows {
            let record: Option<crate::templates::PublishedRecord> =
                serde_json::from_str(&json).ok();
            match record.filter(|r| r.image.rootfs.exists()) {
                Some(r) => {
                    let t = r.into_template(crate::templates::API_TEMPLATE_FILE.into());
                    match self.put_template(t) {
                        Ok(()) => restored += 1,
                        Err(e) => tracing::warn!(template = %name, error = %e, "not restored"),
                    }
                }
                None => {
                    tracing::warn!(template = %name, "API-built template's disk is gone; forgetting it");
                    self.with_store(|s| store::published_templates::delete(s.conn(), &name))?;
                }
            }
        }
        Ok(restored)
    }

    /// Removes a template from the catalog: no new sandboxes start from it;
    /// running ones are untouched. False if it was not there.
    pub fn withdraw_template(&self, name: &str) -> bool {
        let mut guard = self
            .inner
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let list: Vec<_> = guard
            .iter()
            .filter(|t| t.spec.name != name)
            .cloned()
            .collect();
        let removed = list.len() != guard.iter().count();
        // Removing a template cannot create a name clash.
        if let Ok(c) = Catalog::new(list) {
            *guard = Arc::new(c);
        }
        drop(guard);
        if let Err(e) = self.with_store(|s| store::published_templates::delete(s.conn(), name)) {
            tracing::warn!(template = name, error = %e, "could not forget a published template");
        }
        removed
    }

    /// The envd version sandboxes run.
    pub fn envd_version(&self) -> &str {
        &self.inner.settings.envd_version
    }

    /// Runs `f` on the store. SQLite calls here are short; holding a std
    /// mutex across them is cheaper than a blocking-pool round trip.
    pub(crate) fn with_store<T>(
        &self,
        f: impl FnOnce(&Store) -> store::Result<T>,
    ) -> Result<T, Error> {
        let guard = self
            .inner
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(f(&guard)?)
    }

    /// Creates a sandbox and waits until its envd is ready.
    pub async fn create(&self, req: CreateRequest) -> Result<SandboxRow, Error> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let limits = &self.inner.settings.limits;
        let catalog = self.catalog();
        let template = catalog
            .resolve(&req.template)
            .ok_or_else(|| Error::TemplateNotFound(req.template.clone()))?;
        let timeout_s = check_timeout(req.timeout_s, limits)?;
        let vcpus = pick(
            "cpuCount",
            req.vcpus.or(template.spec.resources.vcpus.map(Vcpus::get)),
            limits.default_vcpus.get(),
            limits.min_vcpus.get(),
            limits.max_vcpus.get(),
        )?;
        let memory = pick(
            "memoryMB",
            req.memory_mib
                .or(template.spec.resources.memory_mib.map(MemoryMib::get)),
            limits.default_memory_mib.get(),
            limits.min_memory_mib.get(),
            limits.max_memory_mib.get(),
        )?;
        let vcpus = Vcpus::try_from(vcpus).map_err(|e| Error::Invalid(e.to_string()))?;
        let memory = MemoryMib::try_from(memory).map_err(|e| Error::Invalid(e.to_string()))?;

        let id = SandboxId::generate();
        let lifecycle = LifecycleId::generate();
        let now = store::now_ms();
        let row = SandboxRow {
            sandbox_id: id.to_string(),
            lifecycle_id: lifecycle.to_string(),
            template_id: template.spec.name.clone(),
            alias: (req.template != template.spec.name).then(|| req.template.clone()),
            state: state_name(SandboxState::Provisioning).to_owned(),
            state_reason: None,
            cpu_count: vcpus.get(),
            memory_mb: memory.get(),
            disk_size_mb: template.image.disk_size_mb(),
            metadata: req.metadata,
            // The template's env (from its `env` steps) under the request's.
            env_vars: template
                .config
                .env
                .clone()
                .into_iter()
                .chain(req.env_vars)
                .collect(),
            envd_access_token: req.secure.then(actor::new_access_token),
            allow_internet_access: req.allow_internet_access,
            auto_pause: req.auto_pause,
            started_at_ms: now,
            end_at_ms: now.saturating_add(secs_ms(timeout_s)),
            vm_driver: Some(self.inner.qemu_name().to_owned()),
            vm_dir: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        // The admission check and the registration happen under one lock, so
        // parallel creates cannot overshoot the limit.
        let (tx, rx) = mpsc::channel(16);
        {
            let mut actors = self.actors();
            if actors.len() >= limits.max_sandboxes as usize {
                return Err(Error::AtCapacity(limits.max_sandboxes));
            }
            self.with_store(|s| store::sandboxes::insert(s.conn(), &row))?;
            actors.insert(row.sandbox_id.clone(), tx);
        }
        let spec =
            template
                .image
                .vm_spec(&id, &lifecycle, vcpus, memory, req.allow_internet_access);
        let (ready_tx, ready_rx) = oneshot::channel();
        actor::spawn_create(
            self.clone(),
            row,
            spec,
            template.config.clone(),
            rx,
            ready_tx,
        );
        ready_rx
            .await
            .map_err(|_| Error::ActorGone(id.to_string()))?
    }

    /// One sandbox, if it exists and is running or paused.
    pub fn get(&self, id: &str) -> Result<SandboxRow, Error> {
        let row = self
            .with_store(|s| store::sandboxes::get(s.conn(), id))?
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        if visible(&row) {
            Ok(row)
        } else {
            Err(Error::NotFound(id.to_owned()))
        }
    }

    /// A page of sandboxes.
    pub fn list(&self, filter: &SandboxFilter) -> Result<SandboxPage, Error> {
        self.with_store(|s| store::sandboxes::list(s.conn(), filter))
    }

    /// Lifecycle events and console output of a sandbox, oldest first.
    pub fn logs(
        &self,
        id: &str,
        from_ms: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<EventRow>, Error> {
        // Logs stay readable after a kill, as long as the row exists.
        if self
            .with_store(|s| store::sandboxes::get(s.conn(), id))?
            .is_none()
        {
            return Err(Error::NotFound(id.to_owned()));
        }
        self.with_store(|s| store::events::list(s.conn(), id, from_ms, None, limit))
    }

    async fn ask<T>(
        &self,
        id: &str,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let tx = self
            .actors()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply))
            .await
            .map_err(|_| Error::NotFound(id.to_owned()))?;
        rx.await.map_err(|_| Error::ActorGone(id.to_owned()))
    }

    /// Kills a sandbox (running or paused).
    pub async fn kill(&self, id: &str) -> Result<(), Error> {
        self.ask(id, Command::Kill).await?
    }

    /// Freezes a running sandbox in RAM.
    pub async fn pause(&self, id: &str) -> Result<(), Error> {
        self.ask(id, Command::Pause).await?
    }

    /// Extends a running sandbox, or resumes a paused one.
    pub async fn connect(&self, id: &str, timeout_s: u64) -> Result<Connected, Error> {
        self.wake(id, timeout_s, true).await
    }

    /// Resumes a paused sandbox (the deprecated `/resume`: 409 when running).
    pub async fn resume(&self, id: &str, timeout_s: u64) -> Result<SandboxRow, Error> {
        self.wake(id, timeout_s, false).await.map(|c| c.row)
    }

    async fn wake(&self, id: &str, timeout_s: u64, running_ok: bool) -> Result<Connected, Error> {
        let timeout_s = check_timeout(timeout_s, &self.inner.settings.limits)?;
        self.ask(id, |reply| Command::Connect {
            timeout_s,
            running_ok,
            reply,
        })
        .await?
    }

    /// Sets the expiry to `timeout_s` from now (may shorten).
    pub async fn set_timeout(&self, id: &str, timeout_s: u64) -> Result<(), Error> {
        let timeout_s = check_timeout(timeout_s, &self.inner.settings.limits)?;
        self.ask(id, |reply| Command::SetTimeout {
            timeout_s,
            extend_only: false,
            reply,
        })
        .await?
    }

    /// Extends the expiry to at least `duration_s` from now.
    pub async fn refresh(&self, id: &str, duration_s: u64) -> Result<(), Error> {
        self.ask(id, |reply| Command::SetTimeout {
            timeout_s: duration_s,
            extend_only: true,
            reply,
        })
        .await?
    }

    /// Metric samples of a sandbox.
    pub async fn metrics(&self, id: &str) -> Result<Vec<Sample>, Error> {
        self.ask(id, Command::Metrics).await
    }

    /// Stops taking new work: creates are refused from now on. Running
    /// sandboxes are left running for the next daemon to adopt.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Sandboxes (not stopped or failed) started from template `name`.
    pub fn count_using_template(&self, name: &str) -> Result<u64, Error> {
        let active: Vec<String> = SandboxState::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| s.as_str().to_owned())
            .collect();
        let page = self.list(&SandboxFilter {
            states: active,
            template: Some(name.to_owned()),
            ..SandboxFilter::default()
        })?;
        Ok(page.rows.len() as u64)
    }

    /// Counts of known sandboxes by state, for metrics and status.
    pub fn count_by_state(&self) -> Result<BTreeMap<String, u64>, Error> {
        self.with_store(|s| store::sandboxes::count_by_state(s.conn()))
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    fn actors(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Command>>> {
        self.inner
            .actors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn register(&self, id: &str, tx: mpsc::Sender<Command>) {
        self.actors().insert(id.to_owned(), tx);
    }

    pub(crate) fn unregister(&self, id: &str) {
        self.actors().remove(id);
        self.set_live(id, None);
        self.usage_table().remove(id);
    }

    pub(crate) fn set_usage(&self, id: &str, usage: usage::Usage) {
        self.usage_table().insert(id.to_owned(), usage);
    }

    /// Per-sandbox host and guest figures in Prometheus' text format, for the
    /// metrics page; only sandboxes whose actor runs appear.
    pub fn usage_page(&self) -> String {
        usage::render(&self.usage_table())
    }

    fn usage_table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usage::Usage>> {
        self.inner
            .usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_live(&self, id: &str, live: Option<Live>) {
        let mut map = self
            .inner
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match live {
            Some(l) => map.insert(id.to_owned(), l),
            None => map.remove(id),
        };
    }
}

impl Inner {
    fn qemu_name(&self) -> &'static str {
        crate::vmm::qemu::NAME
    }

    pub(crate) fn qemu(&self) -> &Qemu {
        &self.qemu
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }
}

impl Directory for Sandboxes {
    fn upstream(&self, sandbox_id: &str) -> Option<Upstream> {
        let map = self
            .inner
            .live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(sandbox_id).map(|l| l.upstream.clone())
    }

    fn signing_keys(&self) -> Vec<(String, String)> {
        let map = self
            .inner
            .live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .filter_map(|(id, l)| l.token.clone().map(|t| (id.clone(), t)))
            .collect()
    }
}

/// The stored name of a state.
pub fn state_name(state: SandboxState) -> &'static str {
    state.as_str()
}

/// Parses a stored state name.
pub fn parse_state(name: &str) -> Option<SandboxState> {
    SandboxState::parse(name)
}

/// The stored states that show as `api` (`running` / `paused`) in the API.
pub fn states_shown_as(api: &str) -> Vec<String> {
    SandboxState::ALL
        .iter()
        .filter(|s| s.api_state() == Some(api))
        .map(|s| s.as_str().to_owned())
        .collect()
}

fn visible(row: &SandboxRow) -> bool {
    parse_state(&row.state)
        .and_then(SandboxState::api_state)
        .is_some()
}

fn check_timeout(timeout_s: u64, limits: &LimitsConfig) -> Result<u64, Error> {
    if timeout_s == 0 || timeout_s > limits.max_timeout_s {
        return Err(Error::Invalid(format!(
            "timeout must be between 1 and {} seconds, got {timeout_s}",
            limits.max_timeout_s
        )));
    }
    Ok(timeout_s)
}

fn pick(field: &str, asked: Option<u32>, default: u32, min: u32, max: u32) -> Result<u32, Error> {
    let v = asked.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(Error::Invalid(format!(
            "{field} must be between {min} and {max}, got {v}"
        )))
    }
}

pub(crate) fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000)
}

/// Where VM directories live under the data dir.
pub fn vm_root(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("vms")
}
