//! `WatchDir`: a server stream of filesystem events.
//!
//! The stream sends `start{}` first (the js SDK waits for it), then one
//! `filesystem` message per event and a `keepalive` after every
//! `Keepalive-Ping-Interval` of silence. It ends when the client goes away
//! (the stream, and with it the inotify watcher, is dropped), when the
//! watcher fails (`internal`), or at the `Connect-Timeout-Ms` deadline
//! (`deadline_exceeded`, as E2B's envd returns its context error).

use connectrpc::{ConnectError, RequestContext, ServiceStream};
use envd_protocol::filesystem::{WatchDirRequest, WatchDirResponse, watch_dir_response};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::events::{self, Batch, WatchSpec};
use super::{Error, FilesystemService, blocking};

/// Batches that may wait between the watcher thread and a slow client.
/// When full, the watcher thread blocks, the kernel queue fills and
/// overflows, and the stream ends with an error instead of envd buffering
/// without bound.
const PENDING_BATCHES: usize = 1024;

pub(super) async fn handle(
    svc: &FilesystemService,
    ctx: &RequestContext,
    req: WatchDirRequest,
) -> Result<ServiceStream<WatchDirResponse>, Error> {
    let user = svc.caller(ctx)?;
    let spec = WatchSpec {
        root: svc.resolve(&user, &req.path)?,
        recursive: req.recursive,
        include_entry: req.include_entry,
    };
    let keepalive = crate::rpc::keepalive_interval(ctx);
    let deadline = ctx.deadline();
    let (tx, mut rx) = mpsc::channel::<Batch>(PENDING_BATCHES);
    let allow_network_mounts = req.allow_network_mounts;
    let watcher = blocking(move || {
        events::validate(&spec.root, allow_network_mounts)?;
        // Runs on notify's own thread, never a runtime thread, so blocking
        // is allowed; an error just means the stream is gone.
        events::start(spec, move |batch| {
            let _ = tx.blocking_send(batch);
        })
    })
    .await?;

    let stream = async_stream::stream! {
        // Owned by the stream: when the client disconnects the stream is
        // dropped, and so is the watcher (closing its inotify instance).
        let _watcher = watcher;
        yield Ok(message(watch_dir_response::StartEvent::default()));
        let expiry = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let mut next_ping = Instant::now() + keepalive;
        loop {
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(Ok(batch)) => {
                        for event in batch {
                            yield Ok(message(event));
                        }
                        next_ping = Instant::now() + keepalive;
                    }
                    Some(Err(err)) => {
                        yield Err(ConnectError::from(err));
                        break;
                    }
                    None => {
                        yield Err(ConnectError::internal("watcher stopped"));
                        break;
                    }
                },
                () = tokio::time::sleep_until(next_ping) => {
                    yield Ok(message(watch_dir_response::KeepAlive::default()));
                    next_ping = Instant::now() + keepalive;
                }
                () = &mut expiry => {
                    yield Err(ConnectError::deadline_exceeded("watch deadline reached"));
                    break;
                }
            }
        }
    };
    Ok(Box::pin(stream))
}

/// Wraps one oneof member (start, filesystem event or keepalive).
fn message<E>(event: E) -> WatchDirResponse
where
    E: Into<Option<envd_protocol::filesystem::__buffa::oneof::watch_dir_response::Event>>,
{
    WatchDirResponse {
        event: event.into(),
        ..WatchDirResponse::default()
    }
}
