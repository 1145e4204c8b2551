//! The shared listener: REST API and sandbox proxy on one port.
//!
//! The SDKs may point `E2B_API_URL` and `E2B_SANDBOX_URL` at the same
//! address (spec §1.4), so each request is dispatched on its own:
//!
//! ```text
//! route(headers, domain) ── Ok(target) ───────────────▶ forward to sandbox port
//!        │ BadPort ───────────────────────────────────▶ 400
//!        │ NoSandbox
//!        ├── GET/POST /files?…&signature=… ── match ──▶ forward to that sandbox's envd
//!        │                                 └ no match ▶ 502 "was not found"
//!        └────────────────────────────────────────────▶ REST router
//! ```
//!
//! HTTP/1.1 only: the SDKs never use h2c on plaintext. Each connection task
//! also waits for a reset request (see [`super::reset`]) and then closes
//! the socket with an RST.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::Directory;
use super::forward::{self, Forwarder};
use super::reset::ClientConn;
use super::route::{self, ENVD_PORT, RouteError, Target};
use super::signed;

/// How long to back off when accepting fails for lack of resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The sandbox proxy: where routed requests go.
#[derive(Debug, Clone)]
pub struct Proxy {
    forwarder: Forwarder,
    domain: String,
}

impl Proxy {
    /// A proxy that looks sandboxes up in `directory` and routes host names
    /// of the form `{port}-{sandboxID}.{domain}`.
    pub fn new(directory: Arc<dyn Directory>, domain: String) -> Self {
        Self {
            forwarder: Forwarder::new(directory),
            domain,
        }
    }
}

/// What every connection task shares.
struct Shared {
    proxy: Proxy,
    api: axum::Router,
}

/// Serves the REST API (`api`) and the sandbox proxy on one listener until `shutdown`
/// is cancelled; then stops accepting and gives open connections up to `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    api: axum::Router,
    proxy: Proxy,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared { proxy, api });
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let result = loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = Arc::clone(&shared);
                let (shutdown, stop, conn_tasks) = (shutdown.clone(), stop.clone(), tasks.clone());
                tasks.spawn(connection(stream, peer, shared, shutdown, stop, conn_tasks));
            }
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "accept failed for one connection");
            }
            Err(e) if is_resource_shortage(&e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => break Ok(()),
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
            Err(e) => break Err(e),
        }
    };
    drop(listener);
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::info!(
            open = tasks.len(),
            "shutdown grace over; closing remaining connections"
        );
        stop.cancel();
        tasks.wait().await;
    }
    result
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted, WouldBlock};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

fn is_resource_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Serves one client connection until it closes, the server stops, or a
/// sandbox with a request in flight on it goes away (then with an RST).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    // Connect envelopes are small and must not wait for Nagle.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "TCP_NODELAY on a client connection");
    }
    let client = match ClientConn::new(&stream, stop.clone(), tasks) {
        Ok(client) => Arc::new(client),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "could not duplicate a client socket; dropping it");
            return;
        }
    };
    let service = hyper::service::service_fn({
        let client = Arc::clone(&client);
        move |req| {
            let shared = Arc::clone(&shared);
            let client = Arc::clone(&client);
            async move { Ok::<_, Infallible>(dispatch(&shared, &client, peer, req).await) }
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                break;
            }
            () = client.reset_requested().cancelled() => {
                client.socket().abort_on_close();
                break;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = stop.cancelled() => break,
        }
    }
    client.close();
}

async fn dispatch(
    shared: &Shared,
    client: &ClientConn,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let forwarder = &shared.proxy.forwarder;
    match route::route(req.headers(), &shared.proxy.domain) {
        Ok(target) => forwarder.forward(client, target, req).await,
        Err(e @ RouteError::BadPort(_)) => {
            forward::error_json(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(RouteError::NoSandbox) => match signed::Presented::of(req.uri()) {
            Some(presented) => {
                match signed::find(&presented, req.method(), forwarder.directory().as_ref()) {
                    Some(sandbox_id) => {
                        let target = Target {
                            sandbox_id,
                            port: ENVD_PORT,
                        };
                        forwarder.forward(client, target, req).await
                    }
                    None => forward::not_found(""),
                }
            }
            None => {
                req.extensions_mut().insert(ConnectInfo(peer));
                match shared.api.clone().oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
        },
    }
}
