//! Assembles envd's one HTTP service: plain routes first, every other path
//! handed to the Connect runtime, the access-token check in front of all.

use std::sync::Arc;

use axum::routing::{get, post};
use connectrpc::{ConnectRpcService, Limits};
use envd_protocol::filesystem::FilesystemExt;
use envd_protocol::process::ProcessExt;

use crate::config::EnvdConfig;
use crate::filesystem::FilesystemService;
use crate::http::{self, AppState};
use crate::process::ProcessService;
use crate::sandbox::Sandbox;

/// Builds the router. `is_init` is true when envd runs as the VM's PID 1.
pub fn app(config: Arc<EnvdConfig>, is_init: bool) -> axum::Router {
    let sandbox = Sandbox::new(&config.default_user);
    app_with(config, sandbox, is_init)
}

/// Builds the router around an existing sandbox handle (tests use this to
/// inspect or preset settings).
pub fn app_with(config: Arc<EnvdConfig>, sandbox: Sandbox, is_init: bool) -> axum::Router {
    let connect = connectrpc::Router::new();
    let connect = Arc::new(ProcessService::new(sandbox.clone())).register(connect);
    let connect = Arc::new(FilesystemService::new(sandbox.clone())).register(connect);
    let limits = Limits::default()
        .with_max_message_size(config.max_message_bytes)
        .with_max_request_body_size(config.max_message_bytes + 5);
    let rpc = tower::ServiceBuilder::new()
        .map_request(crate::rpc::strip_zero_timeout::<axum::body::Body>)
        .service(ConnectRpcService::new(connect).with_limits(limits));
    let state = AppState {
        sandbox: sandbox.clone(),
        config,
        is_init,
        cpu: Arc::new(http::metrics::CpuSampler::default()),
    };
    axum::Router::new()
        .route("/health", get(http::health))
        .route("/init", post(http::init))
        .route("/envs", get(http::envs))
        .route("/metrics", get(http::metrics::get))
        .route(
            "/files",
            get(http::files::download).post(http::files::upload),
        )
        .fallback_service(rpc)
        .layer(axum::middleware::from_fn_with_state(
            sandbox,
            crate::auth::require_token,
        ))
        .layer(axum::middleware::map_response(version_header))
        .with_state(state)
}

async fn version_header(mut res: axum::response::Response) -> axum::response::Response {
    res.headers_mut().insert(
        "x-envd-version",
        ::http::HeaderValue::from_static(crate::ENVD_VERSION),
    );
    res
}

/// Serves `app` on `listener` (HTTP/1.1 and h2c) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
