//! `shutdown`: stop the guest and the VMM, then release the namespace and
//! the directory. Every step is idempotent, so a failed shutdown can be
//! retried; the state only becomes Stopped once everything is released.

use std::time::Duration;

use super::super::host;
use super::super::{Error, VmOp, VmState, transition};
use super::api::timeouts;
use super::{ChVm, CloudHypervisor, Launcher, VmmProcess, availability};

/// Gives the VMM `grace` to exit (after `vmm.shutdown`; zero when there
/// is nothing to wait for), then kills its process group if it has not.
/// Returns once the process is gone (or cannot be waited for).
pub(super) async fn stop_process<L: Launcher>(
    launcher: &L,
    vm: &str,
    process: &mut VmmProcess,
    grace: Duration,
) {
    let Some(pid) = process.pid else { return };
    if let Some(child) = process.child.as_mut() {
        // `timeout` polls the wait once even with zero grace, so an
        // already-exited process is reaped rather than signalled.
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => {
                tracing::debug!(vm, %status, "cloud hypervisor exited");
            }
            Ok(Err(e)) => tracing::warn!(vm, error = %e, "waiting for cloud hypervisor"),
            Err(_) => {
                tracing::warn!(
                    vm,
                    pid,
                    "cloud hypervisor still running; killing its process group"
                );
                launcher.kill(pid);
                // Reap it, so no zombie is left; SIGKILL cannot be ignored.
                let _ = tokio::time::timeout(timeouts::SHUTDOWN, child.wait()).await;
            }
        }
    } else {
        // No child handle (adopted process): poll /proc, and guard the kill
        // against pid reuse by checking the command line.
        let deadline = tokio::time::Instant::now() + grace;
        while host::process_matches(pid, availability::BINARY_NAME)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if host::process_matches(pid, availability::BINARY_NAME) {
            launcher.kill(pid);
        }
    }
    // Gone (exited, or SIGKILLed, which cannot be ignored): forget the pid
    // so a retried shutdown can never signal a process that reused it.
    process.child = None;
    process.pid = None;
}

impl<L: Launcher> CloudHypervisor<L> {
    pub(super) async fn shutdown_vm(&self, vm: &mut ChVm) -> Result<(), Error> {
        let next = transition(vm.state, VmOp::Shutdown)?;
        if vm.state == VmState::Stopped {
            return Ok(());
        }
        // Orderly first. Failures are only logged: the VMM may already be
        // dead, and the kill below releases everything regardless.
        // (A created, never booted VM has no guest to stop.)
        if matches!(vm.state, VmState::Running | VmState::Paused)
            && let Err(e) = vm.api.shutdown_vm().await
        {
            tracing::debug!(vm = %vm.id, error = %e, "vm.shutdown");
        }
        if let Err(e) = vm.api.shutdown_vmm().await {
            tracing::debug!(vm = %vm.id, error = %e, "vmm.shutdown");
        }
        stop_process(&self.launcher, &vm.id, &mut vm.process, timeouts::SHUTDOWN).await;
        self.launcher.destroy_network(&vm.id, &vm.net).await?;
        vm.dir.remove().map_err(|source| Error::Prepare {
            vm: vm.id.clone(),
            what: "vm directory removal",
            source,
        })?;
        tracing::info!(vm = %vm.id, "cloud hypervisor VM stopped and released");
        vm.state = next;
        Ok(())
    }
}
