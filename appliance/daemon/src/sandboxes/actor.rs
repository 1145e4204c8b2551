//! One task per sandbox: it owns the VM handle and is the only code that
//! changes the sandbox's state.
//!
//! Every transition goes through [`Actor::transition`], which checks it
//! against the core table and writes state + event to the store before the
//! caller performs the side effect. While the sandbox runs, the actor also
//! keeps its expiry timer, samples envd's metrics every few seconds and
//! copies new guest console lines into the event log (the `logs` endpoints
//! merge both).

use std::collections::VecDeque;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lelantos_core::{SandboxEvent, SandboxState, VmSpec};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::envd::{Envd, EnvdMetrics, InitRequest};
use super::usage::{Usage, VmmUsage};
use super::{Command, Connected, Error, Live, Sandboxes, secs_ms, state_name};
use crate::net::VmNetwork;
use crate::proxy::{DialFuture, Dialer, Upstream};
use crate::report::chain;
use crate::store::{self, events::NewEvent, sandboxes::SandboxRow};
use crate::templates::GuestConfig;
use crate::vmm::VmBackend as _;
use crate::vmm::qemu::QemuVm;

/// How often a running sandbox's metrics are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept per sandbox (one hour at [`SAMPLE_EVERY`]).
const SAMPLES_KEPT: usize = 720;
/// How often new console output is copied into the event log.
const CONSOLE_EVERY: Duration = Duration::from_secs(1);
/// Most console bytes copied per pass, so a chatty guest cannot flood the store.
const CONSOLE_CHUNK: u64 = 64 * 1024;
/// Event kind of guest console lines in the event log.
pub const CONSOLE_KIND: &str = "console";
/// Failed metric samples in a row after which the VM itself is checked.
const FAILED_SAMPLES_BEFORE_CHECK: u32 = 3;

/// Serving periods are numbered across all sandboxes; the proxy keys its
/// connection pool by this number.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// One metrics sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When the daemon took it (unix ms).
    pub ts_ms: i64,
    /// What envd reported.
    pub metrics: EnvdMetrics,
}

/// A fresh envd access token (40 hex digits).
pub(crate) fn new_access_token() -> String {
    use rand::Rng as _;
    let bytes: [u8; 20] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reaches ports inside one VM's network namespace (sandboxes and build VMs).
pub(crate) struct NetnsDialer {
    net: VmNetwork,
}

impl NetnsDialer {
    pub(crate) fn new(net: VmNetwork) -> Self {
        Self { net }
    }
}

impl Dialer for NetnsDialer {
    fn dial(&self, port: u16) -> DialFuture {
        let net = self.net.clone();
        Box::pin(async move {
            net.connect(port, Duration::from_secs(3))
                .await
                .map_err(std::io::Error::other)
        })
    }
}

/// Copies new lines of the guest's serial console into the event log.
struct ConsoleTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl ConsoleTail {
    fn new(path: PathBuf, from_end: bool) -> Self {
        let offset = if from_end {
            std::fs::metadata(&path).map_or(0, |m| m.len())
        } else {
            0
        };
        Self {
            path,
            offset,
            partial: Vec::new(),
        }
    }

    /// New complete lines since the last call.
    fn read_lines(&mut self) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut buf = Vec::new();
        let read = file
            .seek(SeekFrom::Start(self.offset))
            .and_then(|_| file.take(CONSOLE_CHUNK).read_to_end(&mut buf));
        let Ok(n) = read else { return Vec::new() };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_nl) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(last_nl + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        String::from_utf8_lossy(&complete)
            .lines()
            .map(|l| l.trim_end_matches('\r').to_owned())
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// What the main loop does after a command.
enum Flow {
    Continue,
    Exit,
}

pub(crate) struct Actor {
    owner: Sandboxes,
    row: SandboxRow,
    state: SandboxState,
    vm: Option<QemuVm>,
    dialer: Arc<NetnsDialer>,
    gone: CancellationToken,
    samples: VecDeque<Sample>,
    failed_samples: u32,
    console: ConsoleTail,
}

/// Starts the actor of a new sandbox: it creates and boots the VM, answers
/// `ready` once envd is initialised (or with the failure), then serves commands.
pub(crate) fn spawn_create(
    owner: Sandboxes,
    row: SandboxRow,
    spec: VmSpec,
    config: GuestConfig,
    rx: mpsc::Receiver<Command>,
    ready: oneshot::Sender<Result<SandboxRow, Error>>,
) {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let id = row.sandbox_id.clone();
        match provision(&owner, row, &spec, &config).await {
            Ok(mut actor) => {
                metrics::counter!("lelantos_sandbox_creates_total", "outcome" => "ok").increment(1);
                metrics::histogram!("lelantos_sandbox_create_seconds")
                    .record(started.elapsed().as_secs_f64());
                actor.go_live();
                let _ = ready.send(Ok(actor.row.clone()));
                actor.run(rx).await;
            }
            Err(e) => {
                metrics::counter!("lelantos_sandbox_creates_total", "outcome" => "error")
                    .increment(1);
                tracing::warn!(sandbox = %id, error = %e, "create failed");
                owner.unregister(&id);
                let _ = ready.send(Err(e));
            }
        }
    });
}

/// Starts the actor of a sandbox whose VM survived a daemon restart.
pub(crate) fn spawn_adopted(
    owner: Sandboxes,
    row: SandboxRow,
    state: SandboxState,
    vm: QemuVm,
    rx: mpsc::Receiver<Command>,
) {
    let mut actor = Actor::new(owner, row, state, vm, true);
    tokio::spawn(async move {
        if actor.state == SandboxState::Running {
            actor.go_live();
        }
        actor.run(rx).await;
    });
}

async fn provision(
    owner: &Sandboxes,
    row: SandboxRow,
    spec: &VmSpec,
    config: &GuestConfig,
) -> Result<Actor, Error> {
    let qemu = owner.inner().qemu();
    // Provisioning → Failed, written directly: no actor exists yet.
    let fail = |row: &SandboxRow, reason: String| {
        let _ = owner.with_store(|s| {
            store::sandboxes::update_state(
                s.conn(),
                &row.sandbox_id,
                state_name(SandboxState::Failed),
                Some(&reason),
                store::now_ms(),
            )?;
            append_event(s, row, "failed", &reason)
        });
        Error::Boot {
            id: row.sandbox_id.clone(),
            reason,
        }
    };
    let _ = owner.with_store(|s| append_event(s, &row, "provisioning", "creating the VM"));
    let mut vm = match qemu.create(spec).await {
        Ok(vm) => vm,
        Err(e) => return Err(fail(&row, format!("create VM: {}", chain(&e)))),
    };
    let vm_dir = vm.dir.path.display().to_string();
    owner.with_store(|s| {
        store::sandboxes::update_lifecycle(
            s.conn(),
            &row.sandbox_id,
            &row.lifecycle_id,
            row.vm_driver.as_deref(),
            Some(&vm_dir),
            store::now_ms(),
        )
    })?;
    let mut row = row;
    row.vm_dir = Some(vm_dir);
    let booted = async {
        qemu.boot(&mut vm)
            .await
            .map_err(|e| format!("boot: {}", chain(&e)))?;
        let dialer = NetnsDialer {
            net: vm.net.clone(),
        };
        // Before /init envd has no token; /init itself sets it.
        let envd = Envd::new(&dialer, None);
        envd.wait_healthy(owner.inner().settings().boot_timeout)
            .await
            .map_err(|e| format!("envd did not become healthy: {e}"))?;
        envd.init(&InitRequest {
            env_vars: &row.env_vars,
            access_token: row.envd_access_token.as_deref(),
            timestamp: jiff::Timestamp::now().to_string(),
            default_user: config.user.as_deref(),
            default_workdir: config.workdir.as_deref(),
        })
        .await
        .map_err(|e| format!("envd /init: {e}"))?;
        let envd = Envd::new(&dialer, row.envd_access_token.as_deref());
        start_template_commands(&envd, config, &row.env_vars).await
    };
    if let Err(reason) = booted.await {
        let log = vm.serial_log();
        let _ = qemu.shutdown(&mut vm).await;
        return Err(fail(
            &row,
            format!("{reason} (serial console: {})", log.display()),
        ));
    }
    let mut actor = Actor::new(owner.clone(), row, SandboxState::Provisioning, vm, false);
    actor.transition(SandboxEvent::Ready, None)?;
    actor.sample().await;
    Ok(actor)
}

/// Clock (and env, token) again after a resume: the guest's clock stood still.
async fn init_envd(envd: &Envd<'_>, row: &SandboxRow) -> Result<(), super::envd::EnvdError> {
    envd.init(&InitRequest {
        env_vars: &row.env_vars,
        access_token: row.envd_access_token.as_deref(),
        timestamp: jiff::Timestamp::now().to_string(),
        default_user: None,
        default_workdir: None,
    })
    .await
}

/// How long a template's `ready_cmd` may take to succeed in a new sandbox.
const READY_CMD_DEADLINE: Duration = Duration::from_secs(120);

/// Starts the template's `start_cmd` and waits for its `ready_cmd`, as the
/// template's user in its workdir.
async fn start_template_commands(
    envd: &Envd<'_>,
    config: &GuestConfig,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    let (user, cwd) = (config.user.as_deref(), config.workdir.as_deref());
    if let Some(cmd) = &config.start_cmd {
        envd.start_background(cmd, user, cwd, env)
            .await
            .map_err(|e| format!("start_cmd `{cmd}`: {e}"))?;
    }
    let Some(cmd) = &config.ready_cmd else {
        return Ok(());
    };
    let deadline = Instant::now() + READY_CMD_DEADLINE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match envd
            .run(cmd, user, cwd, env, Duration::from_secs(10), &|_, _| {})
            .await
        {
            Ok(0) => return Ok(()),
            Ok(code) => last = format!("exit code {code}"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "ready_cmd `{cmd}` did not succeed within {READY_CMD_DEADLINE:?} (last: {last})"
    ))
}

fn append_event(
    s: &store::Store,
    row: &SandboxRow,
    kind: &str,
    message: &str,
) -> store::Result<i64> {
    store::events::append(
        s.conn(),
        &NewEvent {
            sandbox_id: &row.sandbox_id,
            lifecycle_id: &row.lifecycle_id,
            ts_ms: store::now_ms(),
            kind,
            message,
        },
    )
}

fn event_message(event: SandboxEvent) -> &'static str {
    match event {
        SandboxEvent::ReadyForPool => "ready in the warm pool",
        SandboxEvent::Ready => "sandbox is running",
        SandboxEvent::Claim => "claimed from the warm pool",
        SandboxEvent::Pause => "pausing",
        SandboxEvent::Paused => "sandbox is paused",
        SandboxEvent::Resume => "resuming",
        SandboxEvent::Resumed => "sandbox is running again",
        SandboxEvent::Stop => "stopping",
        SandboxEvent::Stopped => "sandbox stopped",
        SandboxEvent::Fail => "sandbox failed",
    }
}

impl Actor {
    fn new(
        owner: Sandboxes,
        row: SandboxRow,
        state: SandboxState,
        vm: QemuVm,
        adopted: bool,
    ) -> Self {
        let dialer = Arc::new(NetnsDialer {
            net: vm.net.clone(),
        });
        let console = ConsoleTail::new(vm.serial_log(), adopted);
        Self {
            owner,
            row,
            state,
            vm: Some(vm),
            dialer,
            gone: CancellationToken::new(),
            samples: VecDeque::new(),
            failed_samples: 0,
            console,
        }
    }

    /// Checks `event` against the state table, then records the new state
    /// and an event. The side effect comes after, so the store always shows
    /// what is (or was, after a crash) in progress.
    pub(crate) fn transition(
        &mut self,
        event: SandboxEvent,
        reason: Option<&str>,
    ) -> Result<(), Error> {
        let next = self.state.on(event).ok_or_else(|| {
            Error::Conflict(format!(
                "sandbox {} is {}; cannot {event:?}",
                self.row.sandbox_id,
                state_name(self.state)
            ))
        })?;
        let message = match reason {
            Some(r) => format!("{}: {r}", event_message(event)),
            None => event_message(event).to_owned(),
        };
        self.owner.with_store(|s| {
            store::sandboxes::update_state(
                s.conn(),
                &self.row.sandbox_id,
                state_name(next),
                reason,
                store::now_ms(),
            )?;
            append_event(s, &self.row, state_name(next), &message)
        })?;
        tracing::info!(sandbox = %self.row.sandbox_id, from = state_name(self.state), to = state_name(next), reason, "transition");
        self.state = next;
        self.row.state = state_name(next).to_owned();
        self.row.state_reason = reason.map(str::to_owned);
        Ok(())
    }

    /// Publishes the sandbox to the proxy for a new serving period.
    fn go_live(&mut self) {
        self.gone = CancellationToken::new();
        self.owner.set_live(
            &self.row.sandbox_id,
            Some(Live {
                upstream: Upstream {
                    sandbox_id: self.row.sandbox_id.clone(),
                    epoch: EPOCH.fetch_add(1, Ordering::Relaxed),
                    dialer: self.dialer.clone(),
                    gone: self.gone.clone(),
                },
                token: self.row.envd_access_token.clone(),
            }),
        );
    }

    /// Ends the serving period: the proxy forgets the sandbox and resets the
    /// connections with requests in flight to it.
    fn go_dark(&mut self) {
        self.owner.set_live(&self.row.sandbox_id, None);
        self.gone.cancel();
    }

    fn deadline(&self) -> Option<Instant> {
        (self.state == SandboxState::Running).then(|| {
            let left = self.row.end_at_ms.saturating_sub(store::now_ms()).max(0);
            Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0))
        })
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        sample.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut console = tokio::time::interval(CONSOLE_EVERY);
        console.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shutdown = self.owner.inner().shutdown.clone();
        loop {
            let deadline = self.deadline();
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Flow::Exit = self.handle(cmd).await {
                        break;
                    }
                }
                () = sleep_until(deadline) => {
                    if let Flow::Exit = self.expire().await {
                        break;
                    }
                }
                _ = sample.tick() => {
                    if self.state == SandboxState::Running
                        && let Flow::Exit = self.sample_or_check().await
                    {
                        break;
                    }
                }
                _ = console.tick() => self.copy_console(),
                () = shutdown.cancelled() => {
                    // The VM keeps running; the next daemon adopts it.
                    self.copy_console();
                    tracing::debug!(sandbox = %self.row.sandbox_id, "left running for the next daemon");
                    return;
                }
            }
        }
    }

    async fn handle(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Kill(reply) => {
                let flow = self.stop("killed").await;
                let _ = reply.send(Ok(()));
                flow
            }
            Command::Pause(reply) => {
                let result = self.pause().await;
                let flow = self.after_failure(&result).await;
                let _ = reply.send(result);
                flow
            }
            Command::Connect {
                timeout_s,
                running_ok,
                reply,
            } => {
                let result = self.connect(timeout_s, running_ok).await;
                let flow = self.after_failure(&result).await;
                let _ = reply.send(result);
                flow
            }
            Command::SetTimeout {
                timeout_s,
                extend_only,
                reply,
            } => {
                let _ = reply.send(self.set_end_at(timeout_s, extend_only));
                Flow::Continue
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.samples.iter().copied().collect());
                Flow::Continue
            }
        }
    }

    /// A VM-level failure during pause/resume leaves the sandbox failed:
    /// release its VM and end the actor.
    async fn after_failure<T>(&mut self, result: &Result<T, Error>) -> Flow {
        match result {
            Err(Error::Vm(e)) => {
                self.fail(&e.to_string()).await;
                Flow::Exit
            }
            Err(Error::Boot { reason, .. }) => {
                self.fail(reason).await;
                Flow::Exit
            }
            _ => Flow::Continue,
        }
    }

    async fn expire(&mut self) -> Flow {
        if self.row.auto_pause {
            match self.pause().await {
                Ok(()) => return Flow::Continue,
                Err(e) => {
                    tracing::warn!(sandbox = %self.row.sandbox_id, error = %e, "pause at timeout failed; killing")
                }
            }
        }
        self.stop("timeout").await
    }

    fn set_end_at(&mut self, timeout_s: u64, extend_only: bool) -> Result<(), Error> {
        let now = store::now_ms();
        let mut end = now.saturating_add(secs_ms(timeout_s));
        if extend_only {
            end = end.max(self.row.end_at_ms);
        }
        self.owner.with_store(|s| {
            store::sandboxes::update_end_at(s.conn(), &self.row.sandbox_id, end, now)
        })?;
        self.row.end_at_ms = end;
        Ok(())
    }

    async fn pause(&mut self) -> Result<(), Error> {
        if self.state == SandboxState::Paused {
            return Err(Error::Conflict(format!(
                "sandbox {} is already paused",
                self.row.sandbox_id
            )));
        }
        self.transition(SandboxEvent::Pause, None)?;
        self.go_dark();
        let owner = self.owner.clone();
        owner.inner().qemu().pause(self.vm_mut()?).await?;
        self.transition(SandboxEvent::Paused, None)
    }

    async fn connect(&mut self, timeout_s: u64, running_ok: bool) -> Result<Connected, Error> {
        match self.state {
            SandboxState::Running if running_ok => {
                self.set_end_at(timeout_s, true)?;
                Ok(Connected {
                    row: self.row.clone(),
                    resumed: false,
                })
            }
            SandboxState::Paused => {
                self.transition(SandboxEvent::Resume, None)?;
                let owner = self.owner.clone();
                owner.inner().qemu().resume(self.vm_mut()?).await?;
                // The guest clock stood still while paused; envd sets it.
                init_envd(
                    &Envd::new(self.dialer.as_ref(), self.row.envd_access_token.as_deref()),
                    &self.row,
                )
                .await
                .map_err(|e| Error::Boot {
                    id: self.row.sandbox_id.clone(),
                    reason: format!("envd after resume: {e}"),
                })?;
                self.transition(SandboxEvent::Resumed, None)?;
                self.set_end_at(timeout_s, false)?;
                self.go_live();
                Ok(Connected {
                    row: self.row.clone(),
                    resumed: true,
                })
            }
            other => Err(Error::Conflict(format!(
                "sandbox {} is {}",
                self.row.sandbox_id,
                other.api_state().unwrap_or(state_name(other))
            ))),
        }
    }

    fn vm_mut(&mut self) -> Result<&mut QemuVm, Error> {
        self.vm
            .as_mut()
            .ok_or_else(|| Error::ActorGone(self.row.sandbox_id.clone()))
    }

    /// Kill, timeout: tear the VM down and end the actor.
    async fn stop(&mut self, reason: &str) -> Flow {
        if let Err(e) = self.transition(SandboxEvent::Stop, Some(reason)) {
            tracing::warn!(sandbox = %self.row.sandbox_id, error = %e, "stop refused");
        }
        self.go_dark();
        self.copy_console();
        let shut = match self.vm.as_mut() {
            Some(vm) => self.owner.inner().qemu().shutdown(vm).await,
            None => Ok(()),
        };
        match shut {
            Ok(()) => {
                if let Err(e) = self.transition(SandboxEvent::Stopped, Some(reason)) {
                    tracing::warn!(sandbox = %self.row.sandbox_id, error = %e, "record stop");
                }
            }
            Err(e) => {
                let _ = self.transition(
                    SandboxEvent::Fail,
                    Some(&format!("shutdown: {}", chain(&e))),
                );
            }
        }
        self.owner.unregister(&self.row.sandbox_id);
        Flow::Exit
    }

    async fn fail(&mut self, reason: &str) {
        let _ = self.transition(SandboxEvent::Fail, Some(reason));
        self.go_dark();
        if let Some(vm) = self.vm.as_mut()
            && let Err(e) = self.owner.inner().qemu().shutdown(vm).await
        {
            tracing::warn!(sandbox = %self.row.sandbox_id, error = %chain(&e), "release VM of failed sandbox");
        }
        self.owner.unregister(&self.row.sandbox_id);
    }

    /// Asks envd for the guest's view; keeps it for the metrics API.
    async fn sample(&mut self) -> Option<EnvdMetrics> {
        let envd = Envd::new(self.dialer.as_ref(), self.row.envd_access_token.as_deref());
        match envd.metrics().await {
            Ok(metrics) => {
                if self.samples.len() == SAMPLES_KEPT {
                    self.samples.pop_front();
                }
                self.samples.push_back(Sample {
                    ts_ms: store::now_ms(),
                    metrics,
                });
                self.failed_samples = 0;
                Some(metrics)
            }
            Err(e) => {
                tracing::debug!(sandbox = %self.row.sandbox_id, error = %e, "metrics sample failed");
                self.failed_samples += 1;
                None
            }
        }
    }

    /// Samples the guest (envd) and the host side (the VMM) and publishes
    /// both for the operator; after repeated envd failures with no VMM
    /// answer either, fails the sandbox (QEMU died, guest powered off).
    async fn sample_or_check(&mut self) -> Flow {
        let guest = self.sample().await;
        let vmm = match self.vm.as_ref() {
            Some(vm) => self.owner.inner().qemu().info(vm).await.ok(),
            None => None,
        };
        self.owner.set_usage(
            &self.row.sandbox_id,
            Usage {
                template: self.row.template_id.clone(),
                accelerator: vmm
                    .as_ref()
                    .map(|i| i.accelerator.clone())
                    .unwrap_or_default(),
                vmm: vmm.as_ref().map(VmmUsage::from),
                guest,
            },
        );
        if guest.is_some() || self.failed_samples < FAILED_SAMPLES_BEFORE_CHECK || vmm.is_some() {
            return Flow::Continue;
        }
        self.fail("the VM is gone (VMM exited or the guest powered off)")
            .await;
        Flow::Exit
    }

    fn copy_console(&mut self) {
        let lines = self.console.read_lines();
        if lines.is_empty() {
            return;
        }
        let row = &self.row;
        let now = store::now_ms();
        let events: Vec<NewEvent<'_>> = lines
            .iter()
            .map(|line| NewEvent {
                sandbox_id: &row.sandbox_id,
                lifecycle_id: &row.lifecycle_id,
                ts_ms: now,
                kind: CONSOLE_KIND,
                message: line,
            })
            .collect();
        let result = self
            .owner
            .with_store(|s| store::events::append_many(s.conn(), &events));
        if let Err(e) = result {
            tracing::warn!(sandbox = %row.sandbox_id, error = %e, "store console lines");
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
