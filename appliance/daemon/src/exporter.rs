//! The operator's Prometheus page.
//!
//! Two sources make one page: what the `metrics` macros recorded (counters
//! and histograms of creates, builds, reconcile passes, …) and the
//! per-sandbox host and guest figures, rendered from the sandbox owner at
//! scrape time so that a sandbox's series vanish with it.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::sandboxes::Sandboxes;

/// How often histograms are drained into their summaries.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder; call before anything records.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new().install_recorder()
}

#[derive(Clone)]
struct Page {
    recorded: PrometheusHandle,
    sandboxes: Sandboxes,
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    recorded: PrometheusHandle,
    sandboxes: Sandboxes,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let upkeep = recorded.clone();
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep.run_upkeep(),
                () = upkeep_stop.cancelled() => return,
            }
        }
    });
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(Page {
            recorded,
            sandboxes,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn render(State(page): State<Page>) -> impl IntoResponse {
    let mut body = page.recorded.render();
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    body.push_str(&page.sandboxes.usage_page());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
