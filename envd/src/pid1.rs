//! PID-1 mode (to be written): mounts, hostname, network, reaping, power-off.

use crate::config::EnvdConfig;

/// Errors of the init-mode setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setup step failed.
    #[error("{step}")]
    Step {
        /// Which step.
        step: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Prepares the VM as its init.
pub fn setup(_config: &EnvdConfig) -> Result<(), Error> {
    Ok(())
}

/// Reaps orphaned children.
pub async fn reap_orphans() {}

/// Creates the default user when missing.
pub fn ensure_user(_name: &str) -> Result<(), Error> {
    Ok(())
}

/// Syncs and powers the VM off.
pub fn power_off() {}
