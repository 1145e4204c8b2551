//! Polling watchers: `CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`
//! (the Python SDK's `watch_dir` uses these instead of a stream).
//!
//! A watcher belongs to the registry, not to the request that created it,
//! and lives until `RemoveWatcher`. Events collect in a buffer that each
//! `GetWatcherEvents` empties. Once a watcher has failed, every read
//! returns that failure (until it is removed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use connectrpc::RequestContext;
use envd_protocol::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, FilesystemEvent, GetWatcherEventsResponse,
};
use notify::RecommendedWatcher;
use rand::Rng as _;

use super::events::{self, WatchSpec};
use super::{Error, FilesystemService, blocking};
use crate::error_chain;

/// Events kept for a watcher nobody polls. Past this the watcher fails as
/// if the kernel queue had overflowed, instead of growing without bound.
const MAX_BUFFERED_EVENTS: usize = 65_536;

/// The live polling watchers, by id.
#[derive(Debug, Clone, Default)]
pub(super) struct Registry {
    watchers: Arc<Mutex<HashMap<String, Polling>>>,
}

#[derive(Debug)]
struct Polling {
    /// Kept only so dropping the entry closes the inotify instance.
    _watcher: RecommendedWatcher,
    buffer: Arc<Mutex<Buffer>>,
}

#[derive(Debug, Default)]
struct Buffer {
    events: Vec<FilesystemEvent>,
    /// Set once; the watcher is dead from then on.
    failure: Option<String>,
}

/// Locks `m`, carrying on after a panic elsewhere: the guarded data are
/// plain values that stay consistent between statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `"w"` + random, like E2B's ids; opaque to clients.
fn new_id() -> String {
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    format!("w{suffix}")
}

pub(super) async fn create(
    svc: &FilesystemService,
    ctx: &RequestContext,
    req: CreateWatcherRequest,
) -> Result<CreateWatcherResponse, Error> {
    let user = svc.caller(ctx)?;
    let spec = WatchSpec {
        root: svc.resolve(&user, &req.path)?,
        recursive: req.recursive,
        include_entry: req.include_entry,
    };
    let allow_network_mounts = req.allow_network_mounts;
    let buffer = Arc::new(Mutex::new(Buffer::default()));
    let sink = Arc::clone(&buffer);
    let watcher = blocking(move || {
        events::validate(&spec.root, allow_network_mounts)?;
        events::start(spec, move |batch| {
            let mut buf = lock(&sink);
            if buf.failure.is_some() {
                return;
            }
            match batch {
                Ok(events) if buf.events.len() + events.len() <= MAX_BUFFERED_EVENTS => {
                    buf.events.extend(events);
                }
                Ok(_) => buf.failure = Some("event buffer overflowed".to_owned()),
                Err(err) => buf.failure = Some(error_chain(&err)),
            }
        })
    })
    .await?;
    let id = new_id();
    lock(&svc.watchers.watchers).insert(
        id.clone(),
        Polling {
            _watcher: watcher,
            buffer,
        },
    );
    Ok(CreateWatcherResponse {
        watcher_id: id,
        ..CreateWatcherResponse::default()
    })
}

impl Registry {
    /// Returns and clears the buffered events of watcher `id`.
    pub(super) fn take_events(&self, id: &str) -> Result<GetWatcherEventsResponse, Error> {
        let buffer = lock(&self.watchers)
            .get(id)
            .map(|w| Arc::clone(&w.buffer))
            .ok_or_else(|| Error::UnknownWatcher(id.to_owned()))?;
        let mut buf = lock(&buffer);
        if let Some(reason) = &buf.failure {
            return Err(Error::WatcherFailed {
                id: id.to_owned(),
                reason: reason.clone(),
            });
        }
        Ok(GetWatcherEventsResponse {
            events: std::mem::take(&mut buf.events),
            ..GetWatcherEventsResponse::default()
        })
    }

    /// Stops watcher `id` and forgets it.
    pub(super) fn remove(&self, id: &str) -> Result<(), Error> {
        let removed = lock(&self.watchers).remove(id);
        // Dropped here, outside the registry lock: closing inotify is cheap,
        // but there is no reason to hold up other watchers' requests.
        match removed {
            Some(_) => Ok(()),
            None => Err(Error::UnknownWatcher(id.to_owned())),
        }
    }

    /// How many watchers are live (for tests and diagnostics).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.watchers).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_unique() {
        let a = new_id();
        assert!(a.starts_with('w') && a.len() == 21);
        assert_ne!(a, new_id());
        let r = Registry::default();
        assert!(matches!(
            r.take_events("wnope"),
            Err(Error::UnknownWatcher(_))
        ));
        assert!(matches!(r.remove("wnope"), Err(Error::UnknownWatcher(_))));
        assert_eq!(r.len(), 0);
    }
}
