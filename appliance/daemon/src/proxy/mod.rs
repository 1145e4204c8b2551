//! The sandbox proxy: one listener, every sandbox behind it.
//!
//! Requests are routed to a sandbox port by [`route::route`]; the proxy
//! never changes lifecycle state, it only asks a [`Directory`] (implemented
//! by the sandbox owner) where a running sandbox lives and learns through
//! [`Upstream::gone`] when it stops serving.

mod forward;
mod listener;
mod reset;
pub mod route;
mod signed;

pub use listener::{Proxy, serve};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A boxed dial future.
pub type DialFuture = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;

/// Opens TCP connections to ports inside one sandbox.
pub trait Dialer: Send + Sync + 'static {
    /// Connects to `port` on the guest.
    fn dial(&self, port: u16) -> DialFuture;
}

/// A running sandbox, as the proxy sees it.
#[derive(Clone)]
pub struct Upstream {
    /// Sandbox id.
    pub sandbox_id: String,
    /// Changes whenever the sandbox starts serving again (resume, restore),
    /// so connections pooled in an earlier period are never reused.
    pub epoch: u64,
    /// How to reach the guest.
    pub dialer: Arc<dyn Dialer>,
    /// Cancelled when this serving period ends (kill, pause, timeout): the
    /// proxy then resets every connection with a request in flight to it.
    pub gone: CancellationToken,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("sandbox_id", &self.sandbox_id)
            .field("epoch", &self.epoch)
            .field("gone", &self.gone.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Where running sandboxes live; implemented by the sandbox owner.
pub trait Directory: Send + Sync + 'static {
    /// The sandbox if it is running now; `None` for unknown, paused or
    /// stopped ones (the proxy answers those with E2B's 502).
    fn upstream(&self, sandbox_id: &str) -> Option<Upstream>;
    /// `(sandbox id, envd access token)` of every running secured sandbox,
    /// to route signed `/files` URLs that carry no routing header.
    fn signing_keys(&self) -> Vec<(String, String)>;
}
