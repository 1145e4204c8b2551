//! Command-line configuration of the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// How envd is started. Every option has a default that suits a sandbox VM.
#[derive(Debug, Clone, Parser)]
#[command(name = "envd", version, about = "E2B-compatible in-sandbox daemon")]
pub struct EnvdConfig {
    /// Port to listen on (all interfaces) unless `--listen` is given.
    #[arg(long, default_value_t = crate::DEFAULT_PORT)]
    pub port: u16,
    /// Full listen address; overrides `--port`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// User that requests run as when they name none (E2B templates use `user`).
    #[arg(long, default_value = "user")]
    pub default_user: String,
    /// Create the default user (uid 1000, home /home/<name>, passwordless
    /// sudo) if the rootfs lacks it. On by default in PID-1 mode.
    #[arg(long)]
    pub ensure_default_user: bool,
    /// Where the `/run/e2b` marker files go.
    #[arg(long, default_value = "/run/e2b")]
    pub run_dir: PathBuf,
    /// Largest single Connect message accepted, in bytes.
    #[arg(long, default_value_t = crate::rpc::MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

impl EnvdConfig {
    /// The socket address to bind.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.port)))
    }
}
