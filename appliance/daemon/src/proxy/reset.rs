//! Breaking client connections when their sandbox goes away (spec §4.7,
//! pitfall 12).
//!
//! The SDKs tell "the sandbox was killed while the request was in flight"
//! apart from a timeout only by how the stream dies: a TCP RST, not a FIN or
//! a truncated chunk. So every accepted connection keeps a duplicate of its
//! socket descriptor; resetting means setting `SO_LINGER` to zero on it and
//! dropping the connection, whose last close then sends the RST.
//!
//! ```text
//!  request to S ──track()──▶ in_flight[S] += 1 ──(response body ends)──▶ -= 1
//!                               │
//!                       one waiter per S, parked on S's `gone`
//!                               │ gone
//!                               ▼
//!             in_flight[S] > 0 ? reset the connection : forget S
//! ```
//!
//! Upgraded tunnels outlive hyper's connection task, so they watch `gone`
//! themselves and reset through [`ClientConn::socket`].

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Upstream;

/// A duplicate of an accepted socket's descriptor, kept to force an RST.
#[derive(Debug)]
pub(crate) struct Socket(OwnedFd);

impl Socket {
    /// Makes the socket's final close send an RST instead of a FIN.
    pub(crate) fn abort_on_close(&self) {
        if let Err(e) = socket2::SockRef::from(&self.0.as_fd()).set_linger(Some(Duration::ZERO)) {
            // Without the RST the client still sees the connection close,
            // only with a less precise error.
            tracing::warn!(error = %e, "could not set SO_LINGER on a client connection");
        }
    }
}

/// What one accepted client connection shares with the requests on it.
#[derive(Debug)]
pub(crate) struct ClientConn {
    socket: Arc<Socket>,
    reset: CancellationToken,
    closed: CancellationToken,
    stop: CancellationToken,
    tasks: TaskTracker,
    watches: Arc<Mutex<HashMap<String, Watch>>>,
}

/// The parked waiter for one sandbox on one connection.
#[derive(Debug, Clone)]
struct Watch {
    epoch: u64,
    in_flight: Arc<AtomicUsize>,
    retired: CancellationToken,
}

/// Counts a request (and its response body) as in flight to a sandbox.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ClientConn {
    /// Wraps an accepted stream's descriptor. `stop` ends tunnels when the
    /// server's shutdown grace has run out; `tasks` tracks the waiters and
    /// tunnels spawned for this connection.
    pub(crate) fn new(
        stream: &TcpStream,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> std::io::Result<Self> {
        let fd = stream.as_fd().try_clone_to_owned()?;
        Ok(Self {
            socket: Arc::new(Socket(fd)),
            reset: CancellationToken::new(),
            closed: CancellationToken::new(),
            stop,
            tasks,
            watches: Arc::default(),
        })
    }

    /// The descriptor, for tunnels that must be able to reset the client.
    pub(crate) fn socket(&self) -> Arc<Socket> {
        Arc::clone(&self.socket)
    }

    /// Cancelled when some sandbox with a request in flight here went away.
    pub(crate) fn reset_requested(&self) -> &CancellationToken {
        &self.reset
    }

    /// Cancelled when the server gives up waiting for connections to drain.
    pub(crate) fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Where per-connection background work is spawned.
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Ends the parked waiters; called once the connection is over.
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    /// Marks a request to `upstream` as in flight on this connection, parking
    /// a waiter on its `gone` if none is parked yet for this serving period.
    /// `None` when the sandbox is already gone.
    pub(crate) fn track(&self, upstream: &Upstream) -> Option<InFlight> {
        if upstream.gone.is_cancelled() {
            return None;
        }
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        let in_flight = match watches.get(&upstream.sandbox_id) {
            Some(w) if w.epoch == upstream.epoch => Arc::clone(&w.in_flight),
            _ => {
                let watch = Watch {
                    epoch: upstream.epoch,
                    in_flight: Arc::default(),
                    retired: CancellationToken::new(),
                };
                if let Some(old) = watches.insert(upstream.sandbox_id.clone(), watch.clone()) {
                    old.retired.cancel();
                }
                self.park(upstream, watch.clone());
                watch.in_flight
            }
        };
        in_flight.fetch_add(1, Ordering::SeqCst);
        drop(watches);
        let guard = InFlight(in_flight);
        // The waiter may have seen `gone` while the count was still zero and
        // left; then this request must not start (it would never be reset).
        if upstream.gone.is_cancelled() {
            return None;
        }
        Some(guard)
    }

    fn park(&self, upstream: &Upstream, watch: Watch) {
        let gone = upstream.gone.clone();
        let id = upstream.sandbox_id.clone();
        let reset = self.reset.clone();
        let closed = self.closed.clone();
        let watches = Arc::clone(&self.watches);
        self.tasks.spawn(async move {
            tokio::select! {
                () = gone.cancelled() => {
                    if watch.in_flight.load(Ordering::SeqCst) > 0 {
                        tracing::debug!(sandbox_id = %id, "sandbox gone with a request in flight; resetting the client connection");
                        reset.cancel();
                    }
                }
                () = watch.retired.cancelled() => return,
                () = closed.cancelled() => return,
            }
            let mut watches = watches.lock().unwrap_or_else(PoisonError::into_inner);
            if watches
                .get(&id)
                .is_some_and(|w| Arc::ptr_eq(&w.in_flight, &watch.in_flight))
            {
                watches.remove(&id);
            }
        });
    }
}
