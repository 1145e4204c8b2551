//! One started process: its output fan-out, its input, and its lifecycle.
//!
//! ```text
//!   spawn ──▶ Running ──(exit + output drained)──▶ Exited(end) ──30 s──▶ forgotten
//! ```
//!
//! Output is pushed to every subscriber (the `Start` stream, any `Connect`
//! streams) with back-pressure: a slow client slows the reader rather than
//! losing output. A subscriber whose client went away is dropped; the
//! process itself never depends on any client.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envd_protocol::process::ProcessConfig;
use envd_protocol::process::process_event::EndEvent;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

use super::pty::PtyMaster;
use super::spawn::Spawned;

/// Bytes per stdout/stderr read (E2B's envd uses the same sizes).
const PIPE_CHUNK: usize = 32 * 1024;
/// Bytes per PTY read.
const PTY_CHUNK: usize = 16 * 1024;
/// How long output may still drain after the process exited: a backgrounded
/// grandchild holding the pipe open must not hold the result back forever.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// How long a finished process stays reachable by `Connect`.
pub const KEEP_EXITED: Duration = Duration::from_secs(30);

/// A chunk of output.
#[derive(Debug, Clone)]
pub enum Output {
    /// From stdout.
    Stdout(Vec<u8>),
    /// From stderr.
    Stderr(Vec<u8>),
    /// From the terminal.
    Pty(Vec<u8>),
}

/// What subscribers receive.
#[derive(Debug, Clone)]
pub enum Event {
    /// Output.
    Data(Output),
    /// The process ended; nothing follows.
    End(EndEvent),
}

/// Lifecycle of a process as envd sees it.
#[derive(Debug, Clone)]
enum Phase {
    Running,
    Exited(EndEvent),
}

/// What a new subscriber gets.
#[derive(Debug)]
pub enum Subscription {
    /// Events from now on.
    Live(mpsc::Receiver<Event>),
    /// The process already ended with this.
    Ended(EndEvent),
}

/// Where input goes.
#[derive(Debug)]
enum Input {
    Pipe(ChildStdin),
    Closed,
    NoPipe,
}

/// Errors of input and signal operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input sent to the wrong kind of process, or after stdin closed.
    #[error("{0}")]
    WrongInput(&'static str),
    /// Writing input failed.
    #[error("write input")]
    Write(#[source] std::io::Error),
    /// The process is not a PTY.
    #[error("process is not a pty")]
    NotPty,
    /// Resizing failed.
    #[error("resize pty")]
    Resize(#[source] std::io::Error),
    /// Signalling failed.
    #[error("send signal")]
    Signal(#[source] nix::Error),
}

#[derive(Debug)]
struct Shared {
    phase: Phase,
    subscribers: Vec<mpsc::Sender<Event>>,
}

/// A process started by envd.
#[derive(Debug)]
pub struct ProcessHandle {
    /// Its pid (also its process-group and session id).
    pub pid: u32,
    /// Optional tag from the `Start` request.
    pub tag: Option<String>,
    /// The request's config, for `List`.
    pub config: ProcessConfig,
    shared: Mutex<Shared>,
    input: tokio::sync::Mutex<Input>,
    pty: Option<Arc<PtyMaster>>,
}

impl ProcessHandle {
    /// Takes ownership of a spawned child, starts its output readers and
    /// waiter, and returns the handle plus the first subscription (taken
    /// before any output is read, so the `Start` stream misses nothing).
    /// `on_exit` runs once the end event was delivered.
    pub fn launch(
        spawned: Spawned,
        config: ProcessConfig,
        tag: Option<String>,
        kill_at: Option<Instant>,
        on_exit: impl FnOnce(Arc<ProcessHandle>) + Send + 'static,
    ) -> std::io::Result<(Arc<Self>, mpsc::Receiver<Event>)> {
        let Spawned {
            mut child,
            pty_master,
        } = spawned;
        let pid = child.id().unwrap_or_default();
        let pty = pty_master.map(PtyMaster::new).transpose()?.map(Arc::new);
        let input = match child.stdin.take() {
            Some(stdin) => Input::Pipe(stdin),
            None => Input::NoPipe,
        };
        let (tx, rx) = mpsc::channel(64);
        let handle = Arc::new(Self {
            pid,
            tag,
            config,
            shared: Mutex::new(Shared {
                phase: Phase::Running,
                subscribers: vec![tx],
            }),
            input: tokio::sync::Mutex::new(input),
            pty,
        });

        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(pump(handle.clone(), out, Output::Stdout)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(pump(handle.clone(), err, Output::Stderr)));
        }
        if let Some(pty) = handle.pty.clone() {
            readers.push(tokio::spawn(pump_pty(handle.clone(), pty)));
        }
        if let Some(deadline) = kill_at {
            let h = Arc::downgrade(&handle);
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline.into()).await;
                if let Some(h) = h.upgrade()
                    && h.is_running()
                {
                    tracing::info!(pid = h.pid, "process reached its deadline; killing it");
                    let _ = h.signal(nix::sys::signal::Signal::SIGKILL);
                }
            });
        }
        let waiter = handle.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let drained = futures::future::join_all(readers.iter_mut());
            if tokio::time::timeout(DRAIN_GRACE, drained).await.is_err() {
                for r in &readers {
                    r.abort();
                }
            }
            let end = match status {
                Ok(status) => super::status::end_event(status),
                Err(e) => EndEvent {
                    exit_code: -1,
                    status: format!("wait failed: {e}"),
                    error: Some(format!("wait failed: {e}")),
                    ..EndEvent::default()
                },
            };
            waiter.finish(end).await;
            on_exit(waiter);
        });
        Ok((handle, rx))
    }

    /// Whether the process still runs.
    pub fn is_running(&self) -> bool {
        matches!(self.lock().phase, Phase::Running)
    }

    /// Whether it runs under a PTY.
    pub fn is_pty(&self) -> bool {
        self.pty.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        match self.shared.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Subscribes to events from now on, or gets the end if already exited.
    pub fn subscribe(&self) -> Subscription {
        let mut shared = self.lock();
        match &shared.phase {
            Phase::Exited(end) => Subscription::Ended(end.clone()),
            Phase::Running => {
                let (tx, rx) = mpsc::channel(64);
                shared.subscribers.push(tx);
                Subscription::Live(rx)
            }
        }
    }

    async fn publish(&self, event: Event) {
        let subscribers = self.lock().subscribers.clone();
        let mut gone = false;
        for s in &subscribers {
            gone |= s.send(event.clone()).await.is_err();
        }
        if gone {
            self.lock().subscribers.retain(|s| !s.is_closed());
        }
    }

    async fn finish(&self, end: EndEvent) {
        let subscribers = {
            let mut shared = self.lock();
            shared.phase = Phase::Exited(end.clone());
            std::mem::take(&mut shared.subscribers)
        };
        for s in subscribers {
            let _ = s.send(Event::End(end.clone())).await;
        }
    }

    /// Writes to stdin (pipe) — refused for PTY processes and closed stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), Error> {
        if self.is_pty() {
            return Err(Error::WrongInput(
                "process is a pty; send pty input instead of stdin",
            ));
        }
        let mut input = self.input.lock().await;
        match &mut *input {
            Input::Pipe(stdin) => {
                stdin.write_all(data).await.map_err(Error::Write)?;
                stdin.flush().await.map_err(Error::Write)
            }
            Input::Closed => Err(Error::WrongInput("stdin of the process is closed")),
            Input::NoPipe => Err(Error::WrongInput("process was started without stdin")),
        }
    }

    /// Writes terminal input — refused for non-PTY processes.
    pub async fn write_pty(&self, data: &[u8]) -> Result<(), Error> {
        let pty = self.pty.as_ref().ok_or(Error::NotPty)?;
        pty.write_all(data).await.map_err(Error::Write)
    }

    /// Closes stdin (idempotent); refused for PTY processes.
    pub async fn close_stdin(&self) -> Result<(), Error> {
        if self.is_pty() {
            return Err(Error::WrongInput("cannot close stdin of a pty process"));
        }
        let mut input = self.input.lock().await;
        if let Input::Pipe(stdin) = &mut *input {
            let _ = stdin.shutdown().await;
        }
        *input = Input::Closed;
        Ok(())
    }

    /// Resizes the terminal.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), Error> {
        let pty = self.pty.as_ref().ok_or(Error::NotPty)?;
        pty.resize(cols, rows).map_err(Error::Resize)
    }

    /// Signals the whole process group (the child leads its own session).
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<(), Error> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX));
        match nix::sys::signal::killpg(pid, sig) {
            Ok(()) => Ok(()),
            // The group may already be gone while the leader is a zombie.
            Err(nix::errno::Errno::ESRCH) => match nix::sys::signal::kill(pid, sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                Err(e) => Err(Error::Signal(e)),
            },
            Err(e) => Err(Error::Signal(e)),
        }
    }
}

async fn pump<R: AsyncRead + Unpin>(
    handle: Arc<ProcessHandle>,
    mut src: R,
    wrap: fn(Vec<u8>) -> Output,
) {
    let mut buf = vec![0u8; PIPE_CHUNK];
    loop {
        match src.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => handle.publish(Event::Data(wrap(buf[..n].to_vec()))).await,
        }
    }
}

async fn pump_pty(handle: Arc<ProcessHandle>, pty: Arc<PtyMaster>) {
    let mut buf = vec![0u8; PTY_CHUNK];
    loop {
        match pty.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                handle
                    .publish(Event::Data(Output::Pty(buf[..n].to_vec())))
                    .await
            }
        }
    }
}
