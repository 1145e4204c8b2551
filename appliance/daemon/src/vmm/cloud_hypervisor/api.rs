//! Calls to one VMM's REST API over its unix socket, through the
//! `cloud-hypervisor-client` crate, each with a deadline and its failure
//! mapped to [`Error::Control`] naming the endpoint.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use cloud_hypervisor_client::apis::{DefaultApi as _, Error as ClientError};
use cloud_hypervisor_client::{SocketBasedApiClient, models, socket_based_api_client};

use super::super::Error;
use super::launcher::VmmProcess;

/// Deadlines per request. Quick state changes get seconds; the ones that
/// move guest memory (8 GiB at the upper end) get minutes.
pub mod timeouts {
    use std::time::Duration;

    /// Single `vmm.ping` attempt.
    pub const PING: Duration = Duration::from_secs(2);
    /// From spawn until `vmm.ping` answers.
    pub const START: Duration = Duration::from_secs(15);
    /// `vm.create`, `vm.boot`, `vm.pause`, `vm.resume`, `vm.info`, ...
    pub const CONTROL: Duration = Duration::from_secs(30);
    /// `vm.snapshot` and `vm.restore` (copy mode reads all of memory).
    pub const MEMORY: Duration = Duration::from_secs(600);
    /// `vm.shutdown` / `vmm.shutdown`, before falling back to SIGKILL.
    pub const SHUTDOWN: Duration = Duration::from_secs(5);
}

/// One VMM's API.
pub struct Api {
    client: SocketBasedApiClient,
    vm: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

/// The whole error chain in one line (the client's `Display` stops at the
/// outermost layer, e.g. "client error (Connect)").
fn describe(e: &ClientError) -> String {
    if let ClientError::Api(api) = e {
        let body = api.body.trim();
        return if body.is_empty() {
            format!("HTTP {}", api.code)
        } else {
            format!("HTTP {}: {body}", api.code)
        };
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

impl Api {
    /// A client for the socket at `socket` (connects lazily).
    pub fn new(socket: &Path, vm: &str) -> Self {
        Self {
            client: socket_based_api_client(socket),
            vm: vm.to_owned(),
        }
    }

    fn control(&self, request: &str, message: String) -> Error {
        Error::Control {
            vm: self.vm.clone(),
            request: request.to_owned(),
            message,
        }
    }

    async fn call<T>(
        &self,
        request: &'static str,
        limit: Duration,
        fut: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.control(request, describe(&e))),
            Err(_) => Err(self.control(request, format!("no reply within {}s", limit.as_secs()))),
        }
    }

    /// Polls `vmm.ping` until it answers, the process dies, or `limit`
    /// passes. The socket appears some milliseconds after spawn; polling
    /// (backing off from 5 ms to 100 ms) beats guessing a sleep.
    pub async fn wait_ready(
        &self,
        process: &mut VmmProcess,
        log: &Path,
        limit: Duration,
    ) -> Result<models::VmmPingResponse, Error> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pause = Duration::from_millis(5);
        loop {
            let last = match tokio::time::timeout(timeouts::PING, self.client.vmm_ping_get()).await
            {
                Ok(Ok(pong)) => return Ok(pong),
                Ok(Err(e)) => describe(&e),
                Err(_) => "no reply".to_owned(),
            };
            if let Some(status) = exit_status(process) {
                return Err(Error::Exited {
                    vm: self.vm.clone(),
                    status: format!("{status}; {}", log_tail(log)),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.control(
                    "vmm.ping",
                    format!(
                        "API not up within {}s ({last}); {}",
                        limit.as_secs(),
                        log_tail(log)
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// `PUT /vm.create`.
    pub async fn create(&self, config: models::VmConfig) -> Result<(), Error> {
        self.call(
            "vm.create",
            timeouts::CONTROL,
            self.client.create_vm(config),
        )
        .await
    }

    /// `PUT /vm.boot`.
    pub async fn boot(&self) -> Result<(), Error> {
        self.call("vm.boot", timeouts::CONTROL, self.client.boot_vm())
            .await
    }

    /// `PUT /vm.pause`.
    pub async fn pause(&self) -> Result<(), Error> {
        self.call("vm.pause", timeouts::CONTROL, self.client.pause_vm())
            .await
    }

    /// `PUT /vm.resume`.
    pub async fn resume(&self) -> Result<(), Error> {
        self.call("vm.resume", timeouts::CONTROL, self.client.resume_vm())
            .await
    }

    /// `PUT /vm.snapshot`.
    pub async fn snapshot(&self, config: models::VmSnapshotConfig) -> Result<(), Error> {
        self.call(
            "vm.snapshot",
            timeouts::MEMORY,
            self.client.vm_snapshot_put(config),
        )
        .await
    }

    /// `PUT /vm.restore`.
    pub async fn restore(&self, config: models::RestoreConfig) -> Result<(), Error> {
        self.call(
            "vm.restore",
            timeouts::MEMORY,
            self.client.vm_restore_put(config),
        )
        .await
    }

    /// `PUT /vm.shutdown`.
    pub async fn shutdown_vm(&self) -> Result<(), Error> {
        self.call("vm.shutdown", timeouts::SHUTDOWN, self.client.shutdown_vm())
            .await
    }

    /// `PUT /vmm.shutdown` (the process exits after replying).
    pub async fn shutdown_vmm(&self) -> Result<(), Error> {
        self.call(
            "vmm.shutdown",
            timeouts::SHUTDOWN,
            self.client.shutdown_vmm(),
        )
        .await
    }

    /// `GET /vm.info`.
    pub async fn info(&self) -> Result<models::VmInfo, Error> {
        self.call("vm.info", timeouts::CONTROL, self.client.vm_info_get())
            .await
    }

    /// `GET /vm.counters`: device id → counter name → value.
    pub async fn counters(
        &self,
    ) -> Result<std::collections::HashMap<String, std::collections::HashMap<String, i64>>, Error>
    {
        self.call(
            "vm.counters",
            timeouts::CONTROL,
            self.client.vm_counters_get(),
        )
        .await
    }
}

/// The exit status, if the process has exited (never blocks).
pub fn exit_status(process: &mut VmmProcess) -> Option<std::process::ExitStatus> {
    process
        .child
        .as_mut()
        .and_then(|c| c.try_wait().ok().flatten())
}

/// The last lines of the VMM's log, for error messages.
pub fn log_tail(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(s) if !s.trim().is_empty() => {
            let lines: Vec<&str> = s.lines().collect();
            let start = lines.len().saturating_sub(5);
            format!("vmm.log: {}", lines[start..].join(" | "))
        }
        Ok(_) => "vmm.log empty".to_owned(),
        Err(e) => format!("vmm.log unreadable: {e}"),
    }
}
